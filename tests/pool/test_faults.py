"""Upstream faults: which failures discard a session, which are retried, and which never are."""

from __future__ import annotations

import aiosmtplib
import pytest

from mailgate.pool import SMTPPool
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)

BAD = "nobody@example.org"


async def test_rejected_recipient_is_not_retried_and_the_session_is_reused(pool: SMTPPool, upstream) -> None:
    upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)  # the session is now a reused one

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as failure:
        await pool.send("a", SENDER, [BAD], MESSAGE)
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert [(r.code, r.recipient) for r in failure.value.recipients] == [(550, BAD)]
    assert after.connection_reused is True and after.attempts == 1
    assert upstream.counters.sessions_total == 1, "a 550 must neither discard the session nor be retried"
    assert len(upstream.wait_messages(2)) == 2
    stats = account_stats(pool, "a")
    assert stats["closed"] == {} and stats["last_error"] is None


async def test_partly_refused_recipients_are_reported_and_the_rest_delivered(pool: SMTPPool, upstream) -> None:
    upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    pool.configure("a", settings_for(upstream, limits=limits()))

    result = await pool.send("a", SENDER, [BAD, RCPT], MESSAGE)

    assert result.code == 250 and result.accepted == [RCPT]
    assert result.refused == {BAD: (550, "5.1.1 No such user")}
    assert upstream.wait_messages(1)[0].rcpt_tos == [RCPT]


async def test_421_mid_session_discards_the_session(pool: SMTPPool, upstream) -> None:
    """421 means "closing the channel" even if the server has not hung up yet."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.rcpt_replies[BAD] = "421 4.3.2 Service shutting down"

    with pytest.raises(aiosmtplib.SMTPResponseException) as failure:
        await pool.send("a", SENDER, [BAD], MESSAGE)

    assert failure.value.code == 421
    # The reused session was discarded and the envelope retried once on a fresh one, which got 421 too.
    assert upstream.counters.sessions_total == 2
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"error": 2} and stats["idle"] == 0
    assert "421" in stats["last_error"]
    await eventually(lambda: upstream.sessions_open == 0, what="the upstream to see both sessions closed")
    del upstream.rcpt_replies[BAD]
    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).connection_reused is False


async def test_421_after_data_is_not_retried(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.data_reply = "421 4.3.2 Shutting down"

    with pytest.raises((aiosmtplib.SMTPDataError, aiosmtplib.SMTPServerDisconnected)):
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.counters.sessions_total == 1, "nothing may be retried once DATA started"
    assert account_stats(pool, "a")["closed"] == {"error": 1}
    upstream.data_reply = None
    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).connection_reused is False


async def test_drop_at_data_is_not_retried_so_nothing_is_duplicated(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.drop_at_data = True

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.counters.sessions_total == 1
    assert len(upstream.messages) == 1
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"error": 1} and stats["messages_sent"] == 1
    assert "SMTPServerDisconnected" in stats["last_error"]
    upstream.drop_at_data = False
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert len(upstream.wait_messages(2)) == 2


async def test_timeout_after_data_discards_and_is_not_retried(pool: SMTPPool, upstream) -> None:
    """The upstream may still deliver a message whose reply timed out: a retry would duplicate it."""
    pool.configure("a", settings_for(upstream, command_timeout=0.5, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.data_delay = 1.2

    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert account_stats(pool, "a")["closed"] == {"error": 1}
    assert len(upstream.wait_messages(2)) == 2  # the slow upstream did deliver it, exactly once
    assert upstream.counters.sessions_total == 1


async def test_mail_from_rejection_keeps_the_session(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await pool.send("a", SENDER, [RCPT], MESSAGE, mail_options=["X-UNKNOWN=1"])
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert after.connection_reused is True
    assert upstream.counters.sessions_total == 1


async def test_an_exception_inside_connection_discards_it(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))

    with pytest.raises(RuntimeError):
        async with pool.connection("a"):
            raise RuntimeError("the caller failed mid-transaction")

    assert account_stats(pool, "a")["closed"] == {"error": 1}
    await eventually(lambda: upstream.sessions_open == 0, what="the discarded session to close")
