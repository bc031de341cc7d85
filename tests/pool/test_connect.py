"""Connecting: TLS modes with the test CA, certificate checks, no plaintext fallback, AUTH."""

from __future__ import annotations

import logging

import aiosmtplib
import pytest
import trustme

from mailgate.pool import AccountSettings, AuthMethod, SMTPPool, TLSMode
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, limits, pool_size
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


async def test_plain_send_delivers_and_reuses_the_session(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits()))

    first = await pool.send("a", SENDER, [RCPT], MESSAGE)
    second = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert (first.code, first.accepted, first.refused, first.attempts) == (250, [RCPT], {}, 1)
    assert first.connection_reused is False and second.connection_reused is True
    received = upstream.wait_messages(2)
    assert received[0].mail_from == SENDER and received[0].rcpt_tos == [RCPT]
    assert received[0].data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert upstream.counters.sessions_total == 1
    stats = account_stats(pool, "a")
    assert (stats["created"], stats["messages_sent"], stats["idle"], stats["active"]) == (1, 2, 1, 0)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_tls_with_the_test_ca(pool: SMTPPool, upstream_factory, tls: str) -> None:
    upstream = upstream_factory(tls=tls, users={"user": "secret"})
    pool.configure("a", settings_for(upstream, limits=limits()))

    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert result.code == 250
    # The STARTTLS upstream refuses AUTH and MAIL before TLS, so delivery proves the session was encrypted.
    assert upstream.wait_messages(1)[0].login == "user"


async def test_one_ssl_context_is_shared_by_an_accounts_sessions(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="implicit")
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2)))

    first = await pool.acquire("a")
    second = await pool.acquire("a")

    assert first is not second
    assert first.smtp.tls_context is not None and first.smtp.tls_context is second.smtp.tls_context
    await pool.release(first)
    await pool.release(second)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_untrusted_certificate_is_rejected(pool: SMTPPool, upstream_factory, tls: str) -> None:
    upstream = upstream_factory(tls=tls, users={"user": "secret"})
    other_ca = trustme.CA().cert_pem.bytes().decode()
    pool.configure("a", settings_for(upstream, ca_pem=other_ca, limits=limits()))

    with pytest.raises((aiosmtplib.SMTPException, OSError)) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    assert "CERTIFICATE_VERIFY_FAILED" in account_stats(pool, "a")["last_error"]
    assert upstream.counters.logins == [] and upstream.messages == []
    assert pool_size(pool, "a") == 0


async def test_system_trust_store_is_the_default(pool: SMTPPool, upstream_factory) -> None:
    """Without ca_pem the test CA is unknown: verification is on by default."""
    upstream = upstream_factory(tls="implicit")
    pool.configure("a", settings_for(upstream, ca_pem=None, limits=limits()))

    with pytest.raises((aiosmtplib.SMTPException, OSError), match="CERTIFICATE_VERIFY_FAILED"):
        await pool.send("a", SENDER, [RCPT], MESSAGE)


async def test_verification_can_be_turned_off_explicitly(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="implicit")
    pool.configure("a", settings_for(upstream, ca_pem=None, verify_tls=False, limits=limits()))

    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).code == 250


async def test_starttls_required_never_falls_back_to_plaintext(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="none", users={"user": "secret"})
    pool.configure("a", settings_for(upstream, tls="starttls", limits=limits()))

    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS"):
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.counters.logins == [], "credentials were sent over a plaintext session"
    assert upstream.messages == []
    assert "STARTTLS" in account_stats(pool, "a")["last_error"]
    assert pool_size(pool, "a") == 0


@pytest.mark.parametrize(("exclude", "mechanism"), [([], "PLAIN"), (["PLAIN"], "LOGIN")])
async def test_auth_login_and_plain(pool: SMTPPool, upstream_factory, exclude: list[str], mechanism: str) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"}, auth_exclude=exclude)
    pool.configure("a", settings_for(upstream, limits=limits()))

    await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.counters.logins == [(mechanism, "user", "secret")]
    assert upstream.wait_messages(1)[0].login == "user"


async def test_auth_xoauth2(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="implicit", tokens={"user@tenant": "access-token"})
    pool.configure("a", settings_for(upstream, auth="xoauth2", username="user@tenant", token="access-token", limits=limits()))

    await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert upstream.counters.logins == [("XOAUTH2", "user@tenant", "access-token")]
    assert upstream.wait_messages(1)[0].login == "user@tenant"


@pytest.mark.parametrize("method", ["login", "xoauth2"])
async def test_rejected_auth_is_surfaced_without_the_secret(
    pool: SMTPPool, upstream_factory, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "right-password"}, tokens={"user": "right-token"})
    secret = "wrong-secret-7f3a"
    credentials = {"password": secret} if method == "login" else {"token": secret}
    pool.configure("a", settings_for(upstream, auth=method, username="user", limits=limits(), **credentials))

    with caplog.at_level(logging.DEBUG), pytest.raises(aiosmtplib.SMTPAuthenticationError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert failure.value.code == 535
    stats = account_stats(pool, "a")
    assert "535" in stats["last_error"] and secret not in stats["last_error"]
    assert stats["last_health_check"]["ok"] is False and secret not in str(stats)
    assert pool.health("a") is not None and pool.health("a").ok is False  # type: ignore[union-attr]
    assert secret not in caplog.text and secret not in repr(pool.settings("a"))
    assert pool_size(pool, "a") == 0, "a failed login must give its slot back"
    assert upstream.messages == []


async def test_a_good_connect_clears_the_last_error(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    pool.configure("a", settings_for(upstream, password="wrong", limits=limits()))
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await pool.send("a", SENDER, [RCPT], MESSAGE)

    pool.reconfigure("a", settings_for(upstream, limits=limits()))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    stats = account_stats(pool, "a")
    assert stats["last_error"] is None and stats["last_health_check"]["ok"] is True


async def test_zero_timeout_still_connects_when_a_slot_is_free(pool: SMTPPool, upstream_factory) -> None:
    """``timeout=0`` means "do not wait for a busy pool", not "connect in no time"."""
    upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))

    conn = await pool.acquire("a", timeout=0)

    assert conn.is_connected()
    await pool.release(conn)


async def test_settings_passed_to_acquire_register_the_account(pool: SMTPPool, upstream) -> None:
    settings = settings_for(upstream, limits=limits())

    async with pool.connection(settings) as conn:
        await conn.transaction(SENDER, [RCPT], MESSAGE)

    assert settings.display_key() in pool.accounts()
    assert len(upstream.wait_messages(1)) == 1


def test_session_key_changes_with_credentials_and_hides_them() -> None:
    base = AccountSettings(host="smtp.example.org", tls=TLSMode.STARTTLS, auth=AuthMethod.LOGIN, username="u", password="pw-one")
    rotated = AccountSettings(
        host="smtp.example.org", tls=TLSMode.STARTTLS, auth=AuthMethod.LOGIN, username="u", password="pw-two"
    )
    same = AccountSettings(host="smtp.example.org", tls=TLSMode.STARTTLS, auth=AuthMethod.LOGIN, username="u", password="pw-one")

    assert base.session_key() != rotated.session_key()
    assert base.session_key() == same.session_key()
    assert "pw-one" not in repr(base) and "pw-one" not in str(base.session_key())
    assert base.display_key() == "u@smtp.example.org:587"
