"""An account costs the pool nothing until it sends (issue 13): its pool structures appear on first use.

Functional, not timing: ``materialised()`` names the accounts whose pool
structures exist, and a never-used account must still send, report, reload
and be removed exactly as an eager one did, against a real aiosmtpd upstream.
"""

from __future__ import annotations

import pytest

from mailgate.pool import SMTPPool, UnknownAccount
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, limits
from tests.smtp_servers import Upstream, settings_for

pytestmark = pytest.mark.timeout(30)

ACCOUNTS = 50


def configure_many(pool: SMTPPool, upstream: Upstream, count: int = ACCOUNTS) -> list[str]:
    names = [f"acct-{index:02d}" for index in range(count)]
    for name in names:
        pool.configure(name, settings_for(upstream, limits=limits(max_connections=3)))
    return names


async def test_configured_accounts_that_never_sent_have_no_pool_structures(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    names = configure_many(pool, upstream)

    assert pool.materialised() == []
    await pool.cleanup()  # the periodic sweep does not create any either
    assert pool.materialised() == []
    assert sorted(pool.accounts()) == names
    assert upstream.counters.sessions_total == 0


async def test_a_never_used_account_sends_on_first_use(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    configure_many(pool, upstream)

    result = await pool.send("acct-17", SENDER, [RCPT], MESSAGE)

    assert result.accepted == [RCPT] and result.connection_reused is False
    assert upstream.counters.logins == [("PLAIN", "user", "secret")]
    assert len(upstream.wait_messages(1)) == 1
    assert pool.materialised() == ["acct-17"]
    stats = account_stats(pool, "acct-17")
    assert (stats["created"], stats["messages_sent"], stats["idle"]) == (1, 1, 1)
    assert pool.health("acct-17") is not None and pool.health("acct-17").ok  # type: ignore[union-attr]
    second = await pool.send("acct-17", SENDER, [RCPT], MESSAGE)
    assert second.connection_reused is True


async def test_stats_and_health_list_every_configured_account(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    names = configure_many(pool, upstream)
    await pool.send("acct-03", SENDER, [RCPT], MESSAGE)

    stats = pool.stats()

    assert sorted(stats) == names
    assert stats["acct-04"] == {
        "upstream": f"user@127.0.0.1:{upstream.port}",
        "max_connections": 3,
        "idle": 0,
        "active": 0,
        "opening": 0,
        "closing": 0,
        "waiting": 0,
        "created": 0,
        "closed": {},
        "messages_sent": 0,
        "last_health_check": None,
        "last_error": None,
    }
    assert stats["acct-03"]["messages_sent"] == 1
    assert pool.health("acct-04") is None
    with pytest.raises(UnknownAccount):
        pool.health("never-configured")
    assert pool.materialised() == ["acct-03"], "reporting creates nothing"


async def test_changes_to_a_never_used_account_apply_on_its_first_send(pool: SMTPPool, upstream_factory) -> None:
    """Rotated credentials and new limits are what the first session uses; reconfiguring creates nothing."""
    upstream = upstream_factory(tls="starttls", users={"user": "old-password"})
    configure_many(pool, upstream, 3)
    upstream.users["user"] = "new-password"

    pool.reconfigure("acct-01", settings_for(upstream, password="new-password", limits=limits(max_connections=1)))
    assert pool.materialised() == []
    assert account_stats(pool, "acct-01")["max_connections"] == 1

    held = await pool.acquire("acct-01")
    assert upstream.counters.logins == [("PLAIN", "user", "new-password")]
    with pytest.raises(Exception, match="saturated"):
        await pool.acquire("acct-01", timeout=0)  # the new limit of one holds from the first session on
    await pool.release(held)


async def test_a_removed_never_used_account_is_gone(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    configure_many(pool, upstream, 3)

    pool.remove("acct-02")

    assert sorted(pool.stats()) == ["acct-00", "acct-01"]
    with pytest.raises(UnknownAccount):
        await pool.acquire("acct-02")
    assert pool.materialised() == []


async def test_a_health_check_on_a_never_used_account_connects(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    configure_many(pool, upstream, 3)

    health = await pool.check_health("acct-00")

    assert health.ok
    assert pool.health("acct-00") is health
    assert pool.materialised() == ["acct-00"]
    assert account_stats(pool, "acct-00")["idle"] == 1


async def test_the_pool_drains_on_close_with_lazily_created_accounts(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    configure_many(pool, upstream, 5)
    await pool.send("acct-01", SENDER, [RCPT], MESSAGE)
    held = await pool.acquire("acct-02")

    await pool.close_all(grace=0.5)

    assert held.released is False  # aborted by the grace, not released
    assert account_stats(pool, "acct-01")["closed"] == {"shutdown": 1}
    assert account_stats(pool, "acct-02")["closed"] == {"shutdown": 1}
    assert sorted(pool.materialised()) == ["acct-01", "acct-02"]
