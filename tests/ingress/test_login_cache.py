"""The cache of verified SMTP logins: apps log in on every connection, scrypt must not run every time,
and nothing about it may make guessing cheaper or keep a rotated password working."""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mailgate.ingress.clients import LoginCache
from tests.ingress.conftest import IngressGateway, account, in_thread
from tests.smtp_servers import Upstream

OK, INVALID = 235, 535


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def login(gw: IngressGateway, user: str, password: str) -> int:
    with gw.smtp() as client:
        return client.docmd("AUTH", "PLAIN " + plain(user, password))[0]


async def concurrently(func: Callable[..., int], calls: list[tuple[Any, ...]]) -> list[int]:
    """Blocking clients, all at once, on threads of their own: the gateway's scrypt checks use the loop's
    default executor, which clients parked there would starve."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(await asyncio.gather(*(loop.run_in_executor(pool, func, *args) for args in calls)))


def full_checks(gw: IngressGateway) -> int:
    return gw.ingress.context.authenticator.full_checks


async def test_a_repeated_login_runs_the_password_hash_once(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))
    assert [await in_thread(login, gw, "app", "pw") for _ in range(3)] == [OK, OK, OK]
    assert full_checks(gw) == 1


async def test_simultaneous_logins_with_one_credential_run_the_password_hash_once(gw: IngressGateway, upstream: Upstream) -> None:
    """Apps open many connections at once (and all miss the cache together when it expires): one scrypt
    check answers every connection that presents the same credential while it runs."""
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))
    codes = await concurrently(login, [(gw, "app", "pw")] * 8)
    assert codes == [OK] * 8
    assert full_checks(gw) == 1


async def test_simultaneous_different_guesses_each_pay_for_their_check(gw: IngressGateway, upstream: Upstream) -> None:
    """Sharing a check never makes guessing cheaper: only an identical credential shares one."""
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))
    guesses = [f"guess-{n}" for n in range(4)]
    codes = await concurrently(login, [(gw, "app", guess) for guess in [*guesses, *guesses]])
    assert codes == [INVALID] * 8
    assert 4 <= full_checks(gw) <= 8  # a repeated wrong guess may share a check, but is never cached
    assert await in_thread(login, gw, "app", "guess-0") == INVALID
    assert full_checks(gw) >= 5


async def test_a_cached_login_still_refuses_a_wrong_password_after_a_full_check(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))
    assert await in_thread(login, gw, "app", "pw") == OK
    for guess in ("pw ", "PW", "p", ""):
        assert await in_thread(login, gw, "app", guess) == INVALID
    assert full_checks(gw) == 5  # every wrong guess paid for its scrypt check
    assert await in_thread(login, gw, "app", "pw") == OK
    assert full_checks(gw) == 5


async def test_failed_logins_end_the_session_even_while_the_login_is_cached(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))
    assert await in_thread(login, gw, "app", "pw") == OK

    def guess() -> list[int]:
        codes = []
        with gw.smtp() as client:
            for _ in range(6):
                codes.append(client.docmd("AUTH", "PLAIN " + plain("app", "guess"))[0])
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        return codes

    assert await in_thread(guess) == [INVALID] * 5 + [421]
    assert full_checks(gw) == 1 + 5


async def test_a_config_push_drops_every_cached_login(gw: IngressGateway, upstream: Upstream) -> None:
    shop = account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"})
    gw.configure(shop)
    assert await in_thread(login, gw, "app", "pw") == OK
    assert len(gw.ingress.context.authenticator.cache) == 1
    gw.configure(shop, account(upstream, "other", senders=["*@other.example"]))  # this login's credentials unchanged
    assert await in_thread(login, gw, "app", "pw") == OK
    assert full_checks(gw) == 2  # verified again under the new configuration, not taken from before it


async def test_a_rotated_password_is_refused_even_though_the_old_one_was_cached(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "old"}))
    assert await in_thread(login, gw, "app", "old") == OK
    assert await in_thread(login, gw, "app", "old") == OK
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "new"}))
    assert await in_thread(login, gw, "app", "old") == INVALID
    assert await in_thread(login, gw, "app", "new") == OK


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_login_expires_after_its_time_to_live() -> None:
    clock = Clock()
    cache = LoginCache(ttl=60.0, clock=clock)
    fingerprint = cache.fingerprint("app", "pw", "scrypt$hash")
    cache.put(fingerprint, "apps/shop")
    clock.now += 59.9
    assert cache.get(fingerprint) == "apps/shop"
    clock.now += 0.1
    assert cache.get(fingerprint) is None
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    cache = LoginCache(size=2)
    first, second, third = (cache.fingerprint(user, "pw", "h") for user in ("a", "b", "c"))
    for fingerprint in (first, second, third):
        cache.put(fingerprint, "apps/shop")
    assert (cache.get(first), cache.get(second), cache.get(third)) == (None, "apps/shop", "apps/shop")


def test_fingerprints_separate_every_field_and_hold_no_password() -> None:
    cache = LoginCache()
    fingerprint = cache.fingerprint("app", "secret-pw", "h")
    assert fingerprint != cache.fingerprint("ap", "psecret-pw", "h")  # framing: no shifting bytes between fields
    assert fingerprint != cache.fingerprint("app", "secret-pw", "h2")  # a new hash (rotation) never matches
    assert fingerprint != LoginCache().fingerprint("app", "secret-pw", "h")  # the key lives in this process only
    assert b"secret-pw" not in fingerprint and "secret-pw" not in repr(cache)
