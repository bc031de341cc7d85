"""A gateway that freezes its configuration (``mailgate gateway``): full snapshots leave the cycle collector's reach.

Without it, the first full collection after a push of 10,000 accounts walks
all of them (~0.4 s) on whichever request allocates enough at that moment:
the first send through a new account, in ``bench.scale``. In process, against
a real admin API server: the frozen state is the interpreter's, which a child
process would hide.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mailgate.gateway.admin_api import AdminAPI, bearer_middleware
from mailgate.gateway.middleware import request_context
from mailgate.pool import SMTPPool
from mailgate.relay.accounts import AccountRegistry
from tests.gateway.conftest import ADMIN_TOKEN, account

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen: a frozen test process would hide other tests' leaks."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    assert gc.isenabled()


class Admin:
    """A real admin API server over one registry, and the calls the tests make on it."""

    def __init__(self, registry: AccountRegistry, url: str, http: aiohttp.ClientSession) -> None:
        self.registry = registry
        self.url = url
        self.http = http

    async def put(self, path: str, body: dict[str, Any]) -> int:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.http.put(self.url + path, json=body, headers=headers) as response:
            await response.read()
            return response.status

    async def push(self, revision: int, *accounts: dict[str, Any]) -> int:
        return await self.put("/v1/config", {"revision": revision, "accounts": list(accounts)})


async def serve(freeze: bool) -> AsyncIterator[Admin]:
    registry = AccountRegistry(SMTPPool())
    app = web.Application(middlewares=[request_context, bearer_middleware(ADMIN_TOKEN)])
    AdminAPI(registry, registry.pool, lambda: True, freeze=freeze).add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Admin(registry, f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()
        await registry.pool.close_all(grace=1.0)


@pytest.fixture
async def freezing() -> AsyncIterator[Admin]:
    async for admin in serve(freeze=True):
        yield admin


@pytest.fixture
async def plain() -> AsyncIterator[Admin]:
    async for admin in serve(freeze=False):
        yield admin


def collector_walks(obj: object) -> bool:
    """Whether ``obj`` is in a generation the cycle collector walks (frozen objects are in none)."""
    return any(tracked is obj for tracked in gc.get_objects())


def accounts(count: int, **spec: Any) -> list[dict[str, Any]]:
    return [account(name=f"acct-{i}", senders=[f"*@a{i}.example"], **spec) for i in range(count)]


async def test_a_full_snapshot_is_frozen_when_it_is_applied(freezing: Admin) -> None:
    assert await freezing.push(1, *accounts(3)) == 200

    held = freezing.registry.get("shop/acct-1")
    assert held is not None
    assert not collector_walks(held) and not collector_walks(held.config), "the pushed accounts are frozen"
    assert gc.isenabled()


async def test_without_freeze_nothing_is_frozen(plain: Admin) -> None:
    assert await plain.push(1, *accounts(3)) == 200

    held = plain.registry.get("shop/acct-1")
    assert collector_walks(held), "only the gateway process opts in; in-process gateways (tests) stay unfrozen"
    assert gc.get_freeze_count() == 0


async def test_the_next_full_snapshot_frees_what_the_frozen_one_left_in_a_cycle(freezing: Admin) -> None:
    assert await freezing.push(1, *accounts(3)) == 200
    old = freezing.registry.get("shop/acct-1")
    assert old is not None
    # A cycle through the replaced configuration, as a token keeper's task or a callback would make: reference
    # counting never frees it, and a frozen cycle is never collected until it is thawed.
    object.__setattr__(old.config, "cycle", old.config)
    old_ref = weakref.ref(old.config)
    del old

    assert await freezing.push(2, *accounts(3, pool={"ttlSeconds": 120})) == 200

    gc.collect()
    assert old_ref() is None, "the replaced configuration must be collectable after the next full snapshot"
    new = freezing.registry.get("shop/acct-1")
    assert new is not None and not collector_walks(new.config), "the new configuration is frozen again"


async def test_a_refused_snapshot_leaves_the_configuration_frozen(freezing: Admin) -> None:
    assert await freezing.push(1, *accounts(2)) == 200

    twice = accounts(2) + accounts(1)
    assert await freezing.push(2, *twice) == 422

    held = freezing.registry.get("shop/acct-0")
    assert held is not None and not collector_walks(held.config)
    assert gc.isenabled()


async def test_a_frozen_account_replaced_by_one_account_put_is_freed_without_the_collector(freezing: Admin) -> None:
    """One-account changes never thaw (that would walk every account again), so a replaced account must hold no cycle."""
    assert await freezing.push(1, *accounts(3)) == 200
    old = freezing.registry.get("shop/acct-1")
    assert old is not None
    old_ref = weakref.ref(old.config)
    del old

    changed = account(name="acct-1", senders=["*@a1.example"], pool={"ttlSeconds": 120})
    assert await freezing.put("/v1/config/accounts/shop/acct-1?revision=2", changed) == 200

    assert old_ref() is None, "a replaced frozen account is freed by reference counting alone"
