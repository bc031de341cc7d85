"""Upstream faults: which failures discard a session, which are retried, and which never are.

``send`` raises ``TransactionError`` for every upstream failure of a
transaction, carrying the phase it reached: the relay decides from the phase,
never from aiosmtplib's exception tree, whether the upstream may have the
message. Each fault below is a real server doing it, at a precise point.
"""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from mailgate.pool import Phase, SMTPPool, TransactionError
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)

BAD = "nobody@example.org"


async def test_rejected_recipient_is_not_retried_and_the_session_is_reused(pool: SMTPPool, upstream) -> None:
    upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)  # the session is now a reused one

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [BAD], MESSAGE)
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPRecipientsRefused)
    assert failure.value.phase is Phase.ENVELOPE and failure.value.delivery_unknown is False
    assert [(r.code, r.recipient) for r in cause.recipients] == [(550, BAD)]
    assert after.connection_reused is True and after.attempts == 1
    assert upstream.counters.sessions_total == 1, "a 550 must neither discard the session nor be retried"
    assert len(upstream.wait_messages(2)) == 2
    stats = account_stats(pool, "a")
    assert stats["closed"] == {} and stats["last_error"] is None


@pytest.mark.parametrize("reply", ["554 5.5.1 No valid recipients", "451 4.3.0 Try DATA later"])
async def test_a_refused_data_command_leaves_the_session_clean_for_the_next_message(
    pool: SMTPPool, upstream, reply: str
) -> None:
    """The refusal leaves the server mid-transaction: without RSET the next MAIL would be "503 nested MAIL"."""
    upstream.data_command_reply = reply
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert failure.value.phase is Phase.DATA and failure.value.delivery_unknown is False
    assert isinstance(failure.value.cause, aiosmtplib.SMTPResponseException)
    assert failure.value.cause.code == int(reply[:3])

    upstream.data_command_reply = None
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert after.code == 250 and after.connection_reused is True
    assert upstream.counters.sessions_total == 1
    assert len(upstream.wait_messages(1)) == 1


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

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [BAD], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPResponseException) and cause.code == 421
    assert failure.value.phase is Phase.ENVELOPE
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

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    # This test server hangs up instead of sending its 421: after the dot, a bare drop is "delivery unknown".
    assert failure.value.phase is Phase.CONTENT and failure.value.delivery_unknown is True
    assert isinstance(failure.value.cause, aiosmtplib.SMTPServerDisconnected)
    assert upstream.counters.sessions_total == 1, "nothing may be retried once DATA started"
    assert account_stats(pool, "a")["closed"] == {"error": 1}
    upstream.data_reply = None
    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).connection_reused is False


async def test_drop_at_the_data_command_is_retried_once_and_duplicates_nothing(pool: SMTPPool, upstream) -> None:
    """A hang-up on the DATA command, before its 354: no text went out, so one retry on a fresh session is safe."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.drop_at_data = True

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert isinstance(failure.value.cause, aiosmtplib.SMTPServerDisconnected)
    # Nothing of the text went out: the upstream cannot have it, and the caller may be told so.
    assert failure.value.phase is Phase.DATA and failure.value.delivery_unknown is False
    assert upstream.counters.sessions_total == 2, "the reused session is retried once on a fresh one, no more"
    assert len(upstream.messages) == 1
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"error": 2} and stats["messages_sent"] == 1
    assert "SMTPServerDisconnected" in stats["last_error"]
    upstream.drop_at_data = False
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert len(upstream.wait_messages(2)) == 2


async def test_drop_in_the_middle_of_the_text_is_delivery_unknown_and_never_retried(pool: SMTPPool, upstream) -> None:
    """The upstream hangs up after the 354 and part of the text: the pool cannot know how much it kept."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)  # a reused session: the case where a retry is tempting
    upstream.drop_in_content = True

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.partial == [MESSAGE.split(b"\r\n", 1)[0] + b"\r\n"], "the fault must cut the text, not the command"
    assert failure.value.phase is Phase.CONTENT and failure.value.delivery_unknown is True
    assert isinstance(failure.value.cause, aiosmtplib.SMTPServerDisconnected)
    assert upstream.counters.sessions_total == 1, "once the text went out, nothing is retried"
    assert len(upstream.messages) == 1
    stats = account_stats(pool, "a")
    assert (stats["closed"], stats["idle"], stats["active"]) == ({"error": 1}, 0, 0)
    upstream.drop_in_content = False
    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).connection_reused is False


async def test_drop_after_the_final_dot_is_delivery_unknown_and_the_message_is_not_sent_twice(pool: SMTPPool, upstream) -> None:
    """The upstream took the message in and hung up before its 250: a retry here is the double send."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.drop_after_dot = True

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, ["second@example.org"], MESSAGE)

    assert failure.value.phase is Phase.CONTENT and failure.value.delivery_unknown is True
    assert isinstance(failure.value.cause, aiosmtplib.SMTPServerDisconnected)
    received = upstream.wait_messages(2)
    assert [m.rcpt_tos for m in received] == [[RCPT], ["second@example.org"]], "the upstream has it, exactly once"
    assert upstream.counters.sessions_total == 1
    stats = account_stats(pool, "a")
    assert (stats["closed"], stats["messages_sent"]) == ({"error": 1}, 1)


async def test_a_421_storm_from_servers_that_hang_up_opens_one_session_per_send(pool: SMTPPool, upstream) -> None:
    """Real servers hang up after 421. Each send may open one session of its own, never a retry storm."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=3, acquire_timeout=None)))
    await asyncio.gather(*(pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(3)))
    warm = upstream.counters.sessions_total
    upstream.close_after_421 = True
    upstream.rcpt_replies[RCPT] = "421 4.7.0 Try again later"
    sends = 20

    storm = await asyncio.gather(*(pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(sends)), return_exceptions=True)

    assert all(isinstance(f, TransactionError) and f.phase is Phase.ENVELOPE for f in storm), storm
    causes = [f.cause for f in storm if isinstance(f, TransactionError)]
    codes = {c.code if isinstance(c, aiosmtplib.SMTPResponseException) else None for c in causes}  # None: a cause without one
    assert codes == {421}, "the 421 itself reached us"
    opened = upstream.counters.sessions_total - warm
    # The warm sessions were reused and found dead: their sends retried once, on a fresh session of their own.
    assert opened == sends, f"{sends} sends opened {opened} sessions"
    assert upstream.counters.hangups_after_421 == warm + sends, "the server itself hung up on every session"
    assert upstream.sessions_peak <= 3
    await eventually(lambda: upstream.sessions_open == 0, what="every session to be over")
    stats = account_stats(pool, "a")
    assert (stats["idle"], stats["active"], stats["opening"], stats["waiting"]) == (0, 0, 0, 0)
    assert stats["closed"] == {"error": warm + sends}

    del upstream.rcpt_replies[RCPT]
    after = await asyncio.gather(*(pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(5)))
    assert [r.code for r in after] == [250] * 5
    assert upstream.sessions_peak <= 3


async def test_timeout_after_data_discards_and_is_not_retried(pool: SMTPPool, upstream) -> None:
    """The upstream may still deliver a message whose reply timed out: a retry would duplicate it."""
    pool.configure("a", settings_for(upstream, command_timeout=1.0, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.data_delay = 2.4

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert isinstance(failure.value.cause, aiosmtplib.SMTPTimeoutError)
    assert failure.value.phase is Phase.CONTENT and failure.value.delivery_unknown is True
    assert account_stats(pool, "a")["closed"] == {"error": 1}
    assert len(upstream.wait_messages(2)) == 2  # the slow upstream did deliver it, exactly once
    assert upstream.counters.sessions_total == 1


async def test_mail_from_rejection_keeps_the_session(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE, mail_options=["X-UNKNOWN=1"])
    assert isinstance(failure.value.cause, aiosmtplib.SMTPSenderRefused)
    assert failure.value.phase is Phase.ENVELOPE
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
