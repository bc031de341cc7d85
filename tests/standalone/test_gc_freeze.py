"""``mailgate serve`` freezes its first configuration (gc.freeze), and a reload still frees what it replaces.

In process, with the real loader, watcher, gateway and an aiosmtpd upstream:
the frozen state is the interpreter's, which a child process would hide.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from mailgate.gateway.app import Gateway, GatewayOptions
from mailgate.gateway.auth import AllowAnyone
from mailgate.gcpause import collection_paused, freeze_after_slow_collections
from mailgate.standalone.serve import apply_first, load_first, start_watching
from mailgate.standalone.watcher import ConfigFiles
from tests.smtp_servers import Upstream
from tests.standalone.support import MESSAGE, account_yaml, write_atomically

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen: a frozen test process would hide other tests' leaks."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    assert gc.isenabled()


def test_the_outermost_pause_freezes_what_is_alive_when_it_ends() -> None:
    with collection_paused():
        with collection_paused(freeze=True):
            pass
        assert gc.get_freeze_count() == 0 and not gc.isenabled(), "nothing frozen while an outer pause builds on"
    assert gc.get_freeze_count() > 0 and gc.isenabled()


def test_a_failed_block_freezes_nothing() -> None:
    with pytest.raises(ValueError), collection_paused(freeze=True):
        raise ValueError("a refused configuration")
    assert gc.get_freeze_count() == 0 and gc.isenabled()


async def test_a_reload_after_the_freeze_frees_the_old_configuration(tmp_path: Path, upstream_factory) -> None:
    upstream: Upstream = upstream_factory(users={"billing": "old-password"})
    path = tmp_path / "accounts.yaml"
    path.write_text(account_yaml(upstream))
    files = ConfigFiles([path])
    load_first(files)
    assert files.snapshot is not None
    gateway = Gateway(AllowAnyone(), GatewayOptions(host="127.0.0.1", port=0, admin_port=None))
    await apply_first(gateway, files)
    old = files.snapshot.accounts[0]
    # A cycle through the old configuration, as a token keeper's task or a callback would make: reference
    # counting never frees it, only the cycle collector, which must see it once the reload has dropped it.
    object.__setattr__(old, "cycle", old)
    old_ref = weakref.ref(old)
    del old
    assert gc.get_freeze_count() > 0, "the first configuration is frozen"

    await gateway.start()
    watcher = start_watching(gateway, files, AllowAnyone(), 0.02)
    try:
        upstream.users["billing"] = "new-password"
        write_atomically(path, account_yaml(upstream))
        deadline = time.monotonic() + 15
        while files.snapshot.revision < 2:
            assert time.monotonic() < deadline, "the changed file was never applied"
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{gateway.port}/v1/accounts/shop/billing/messages", json=MESSAGE) as sent:
                assert sent.status == 200, await sent.text()
        assert upstream.counters.logins[-1] == ("PLAIN", "billing", "new-password")

        gc.collect()
        assert old_ref() is None, "the replaced configuration must be collectable after a reload"
        assert gc.get_freeze_count() > 0, "the new configuration is frozen again"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await gateway.stop()


async def test_a_slow_full_collection_freezes_what_survived_it() -> None:
    """A long-lived process (the operator, a gateway fed one account at a time) freezes the survivors of a full
    collection that took long, so later full collections walk only what was created since."""
    with freeze_after_slow_collections(threshold=0.0):  # every full collection counts as slow here
        gc.collect()
        assert gc.get_freeze_count() == 0, "not from inside the collector: on the loop's next turn"
        await asyncio.sleep(0)
        frozen = gc.get_freeze_count()
        assert frozen > 0
        gc.collect(1)  # a younger generation's collection freezes nothing more (frozen objects may still be freed)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() <= frozen
    gc.collect()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() <= frozen, "uninstalled: collections no longer freeze"


async def test_a_quick_full_collection_freezes_nothing() -> None:
    with freeze_after_slow_collections(threshold=3600.0):
        gc.collect()
        await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0


async def test_cycles_made_after_the_freeze_are_still_collected() -> None:
    class Node:
        pass

    with freeze_after_slow_collections(threshold=0.0):
        gc.collect()
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 0
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        gone = weakref.ref(node)
        del node
        gc.collect()
        assert gone() is None
