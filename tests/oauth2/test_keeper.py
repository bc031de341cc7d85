"""TokenKeeper against the real token server, with real short lifetimes: fresh tokens, one request at a time, calm backoff."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiosmtplib
import pytest

from mailgate.oauth2 import ClientSecretGrant, TokenEndpoint, TokenKeeper, TokenUnavailable
from tests.oauth2_server import TokenServer
from tests.smtp_servers import Upstream

from .conftest import CLIENT_ID, MAILBOX, SECRET, Observed

KeeperFactory = Callable[..., TokenKeeper]


@pytest.fixture
async def make_keeper(endpoint: TokenEndpoint) -> AsyncIterator[KeeperFactory]:
    """Keepers for a test, all closed at its end (before the endpoint's session)."""
    made: list[TokenKeeper] = []

    def make(grant: ClientSecretGrant, **kwargs: object) -> TokenKeeper:
        keeper = TokenKeeper("relay@example.com@smtp.test:587", grant, endpoint, **kwargs)  # type: ignore[arg-type]
        made.append(keeper)
        return keeper

    yield make
    for keeper in made:
        await keeper.close()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition with a deadline (the server runs in its own thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_token_stays_valid_across_several_lifetimes(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    token_server.lifetime = 2
    keeper = make_keeper(secret_grant)
    keeper.start()
    seen: set[str] = set()
    end = time.monotonic() + 7  # three and a half lifetimes
    while time.monotonic() < end:
        # Renewed ahead of expiry: once there is a token, there always is one (a renewal has ~0.6 s to land).
        assert keeper.current is not None or not seen
        token = await keeper.token(5)
        assert token_server.is_valid(MAILBOX, token)  # valid at the moment it is handed out, every time
        seen.add(token)
        await asyncio.sleep(0.05)
    assert len(seen) >= 3  # renewed ahead of expiry, not only once
    assert token_server.count("issued") <= 8  # and at ~2/3 of each lifetime, not continuously


async def test_concurrent_callers_share_one_request(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    keeper = make_keeper(secret_grant)
    first = await asyncio.gather(*(keeper.token(5) for _ in range(20)))
    assert len(set(first)) == 1 and token_server.count() == 1

    token_server.revoke(first[0])  # the upstream refuses it now: every sender holding it asks for a new one
    token_server.stall = True  # keep the renewal in flight until all have joined it
    renewals = [asyncio.create_task(keeper.renewed(first[0], 5)) for _ in range(20)]
    await _until(lambda: token_server.held_requests == 1)
    assert keeper.current is None  # dropped at once: no-one is handed the rejected token again
    token_server.stall = False
    renewed = await asyncio.gather(*renewals)
    assert len(set(renewed)) == 1 and renewed[0] != first[0]
    assert token_server.is_valid(MAILBOX, renewed[0])
    assert token_server.count() == 2  # exactly one renewal for twenty 535s

    assert await keeper.renewed(first[0], 5) == renewed[0]  # a stale rejection: the current token, no request
    assert await keeper.token(5) == renewed[0]
    assert token_server.count() == 2


async def test_outage_backs_off_then_recovers(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.oauth2")
    observed = Observed()
    token_server.down = True
    keeper = make_keeper(secret_grant, observer=observed, min_backoff=0.2, max_backoff=2.0)
    keeper.start()
    await asyncio.sleep(3)
    assert 2 <= token_server.count("down") <= 6  # after 0.2, 0.4, 0.8, 1.6 s (jittered down to half at most): no busy loop
    assert keeper.last_error is not None and keeper.last_error.error == "http_503" and keeper.last_error.retryable
    assert observed.failed and all(error.error == "http_503" for error, _ in observed.failed)
    with pytest.raises(TokenUnavailable) as caught:
        await keeper.token(30)  # waits for the next attempt at most, not through the outage
    assert caught.value.error is keeper.last_error and "within" not in str(caught.value)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING and record.name == "mailgate.oauth2"]
    assert len(warnings) == len(observed.failed)  # one warning per failed request

    token_server.down = False
    await _until(lambda: keeper.current is not None)  # the next attempt (at most max_backoff away) succeeds
    token = await keeper.token(1)
    assert token_server.is_valid(MAILBOX, token)
    assert keeper.last_error is None and observed.issued[-1].value == token
    recoveries = [record for record in caplog.records if record.levelno == logging.INFO and "again" in record.getMessage()]
    assert len(recoveries) == 1


async def test_refusal_is_reported_and_fails_callers_fast(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    observed = Observed()
    wrong = dataclasses.replace(secret_grant, client_secret="not-the-secret-0123456789")
    keeper = make_keeper(wrong, observer=observed, refusal_backoff=60)
    with pytest.raises(TokenUnavailable) as caught:
        await keeper.token(30)  # the retry is a minute away: waiting the full 30 s could not help
    assert "within" not in str(caught.value)
    assert caught.value.error is not None and caught.value.error.error == "invalid_client"
    assert "AADSTS7000215" in str(caught.value) and "not-the-secret" not in str(caught.value)
    assert keeper.last_error is caught.value.error
    [(error, retry_in)] = observed.failed
    assert error.error == "invalid_client" and not error.retryable and retry_in >= 60
    assert token_server.count() == 1


async def test_rotated_secret_takes_over_while_the_old_token_keeps_serving(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    observed = Observed()
    keeper = make_keeper(secret_grant, observer=observed)
    old = await keeper.token(5)
    rotated = "Rotated~secret.0123456789"
    token_server.set_client_secret(CLIENT_ID, rotated)  # the provider rotated it: the old secret stops working

    keeper.replace_grant(dataclasses.replace(secret_grant, client_secret="Mistyped-rotation-0000"))
    await _until(lambda: len(observed.failed) == 1)  # the new credential is refused ...
    assert observed.failed[0][0].error == "invalid_client" and keeper.last_error is observed.failed[0][0]
    assert await keeper.token(1) == old  # ... and the old token keeps serving meanwhile

    token_server.stall = True
    # Fetched at once, not after the mistyped secret's refusal backoff:
    keeper.replace_grant(dataclasses.replace(secret_grant, client_secret=rotated))
    await _until(lambda: token_server.held_requests == 1)
    assert await keeper.token(1) == old  # no send fails while the new token is on its way
    token_server.stall = False
    await _until(lambda: len(observed.issued) == 2)
    new = await keeper.token(1)
    assert new != old and token_server.is_valid(MAILBOX, new) and keeper.last_error is None
    assert token_server.requests[-1].outcome == "issued"
    keeper.replace_grant(dataclasses.replace(secret_grant, client_secret=rotated))  # unchanged: nothing to do
    await asyncio.sleep(0.2)
    assert token_server.count() == 3


async def test_nothing_secret_is_logged(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_server.lifetime = 2
    observed = Observed()
    keeper = make_keeper(secret_grant, observer=observed, min_backoff=0.1, refusal_backoff=0.1)
    first = await keeper.token(5)
    token_server.revoke(first)
    await keeper.renewed(first, 5)
    token_server.set_client_secret(CLIENT_ID, "Rotated~secret.0123456789")
    await _until(lambda: len(observed.failed) >= 1)  # the renewal with the old secret is refused
    keeper.replace_grant(dataclasses.replace(secret_grant, client_secret="Rotated~secret.0123456789"))
    await _until(lambda: keeper.last_error is None and len(observed.issued) >= 3)
    await keeper.close()
    forbidden = [SECRET, "Rotated~secret.0123456789", *token_server.issued()]
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(value in text for value in forbidden), text


async def test_close_releases_waiters_and_is_idempotent(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    token_server.stall = True
    keeper = make_keeper(secret_grant)
    waiter = asyncio.create_task(keeper.token(10))
    await _until(lambda: token_server.held_requests == 1)
    await keeper.close()
    with pytest.raises(TokenUnavailable, match="closed"):
        await waiter
    await keeper.close()
    with pytest.raises(TokenUnavailable, match="closed"):
        await keeper.token(1)
    token_server.stall = False


async def test_credentials_replaced_during_a_request_are_used_at_once(
    token_server: TokenServer, secret_grant: ClientSecretGrant, make_keeper: KeeperFactory
) -> None:
    observed = Observed()
    token_server.stall = True
    keeper = make_keeper(dataclasses.replace(secret_grant, client_secret="Outdated-secret-0000"), observer=observed)
    keeper.start()
    await _until(lambda: token_server.held_requests == 1)
    keeper.replace_grant(secret_grant)  # while the request with the outdated secret is out
    token_server.stall = False
    token = await keeper.token(5)  # not after the outdated secret's refusal backoff (60 s)
    assert token_server.is_valid(MAILBOX, token)
    assert [record.outcome for record in token_server.requests] == ["refused", "issued"]
    assert observed.failed == []  # a refusal of credentials no longer configured is no failure to report


async def test_tokens_authenticate_at_an_smtp_upstream_that_asks_the_token_server(
    token_server: TokenServer,
    secret_grant: ClientSecretGrant,
    make_keeper: KeeperFactory,
    upstream_factory: Callable[..., Upstream],
) -> None:
    upstream = upstream_factory(token_check=token_server.is_valid)
    keeper = make_keeper(secret_grant)
    token = await keeper.token(5)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=upstream.port, start_tls=False, timeout=5) as smtp:
        await smtp.auth_xoauth2(MAILBOX, token)
    token_server.revoke(token)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=upstream.port, start_tls=False, timeout=5) as smtp:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.auth_xoauth2(MAILBOX, token)
        assert refused.value.code == 535
        await smtp.auth_xoauth2(MAILBOX, await keeper.renewed(token, 5))
    assert [login[:2] for login in upstream.counters.logins] == [("XOAUTH2", MAILBOX)] * 3
