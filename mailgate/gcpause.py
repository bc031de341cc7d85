"""Pausing Python's cyclic garbage collector while a large configuration is built, and freezing it once built.

Validating and applying 10,000 accounts allocates a few million objects that
all stay alive; each allocation burst triggers a collection that walks every
young object again, and those collections were two thirds of the time of a
full snapshot push (measured: 112 µs per account with collections, 36 µs
without). Nothing built there is cyclic garbage, so collecting during it is
pure cost. Reference counting still frees everything as usual; only the
cycle collector waits, and it runs once the outermost pause ends.

A configuration loaded at start lives until it is replaced, so
``mailgate serve`` also freezes it (``gc.freeze``): the objects alive when
its pause ends go to the permanent generation, which no collection walks.
Without that, the first collections after the pause walk every one of them
again, while the gateway is getting ready. Frozen objects are still freed by
reference counting; only cycles among them would never be collected, so a
reload thaws everything first (``reloading``) and freezes again after one
full collection, once the old configuration is gone.

``mailgate gateway`` does the same with the admin API's full snapshots (the
operator's push to a new pod is its first load; a later full snapshot is a
reload, ``collection_paused(thaw=True)``). There, without the freeze, the
collections that follow a push of 10,000 accounts walk all of them (0.1 s,
then 0.5 s, then a full collection of 0.4 s once the long-lived objects have
grown by a quarter) on whichever requests allocate at those moments; in
``bench.scale`` the full one fell on the first send through a new account.
One-account changes never thaw: the accounts they replace hold no cycle, so
reference counting frees them while frozen.

Processes whose large state grows one object at a time (the operator as
10,000 SmtpAccounts arrive, a gateway fed one account at a time) get no such
moment, so ``freeze_after_slow_collections`` finds it: when a full collection
took long, what survived it is long-lived, and it is frozen on the loop's next
turn. Measured in the operator with 3,000 accounts before: full collections of
0.5 to 1.9 s every few seconds while accounts were created, and still every
10 to 30 s afterwards, each one a stall of every change in flight. After a
freeze a full collection walks only what was created since, so freezes stop
once the state stops growing. The price: a cycle among objects alive at a
freeze that becomes garbage later is never collected; those are the
transient objects of the moment (a request in flight), once per freeze.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

_lock = threading.Lock()
_depth = 0  # pauses in progress (the standalone loader runs in a thread, the admin API on the loop)
_was_enabled = False
_freeze = False  # a pause asked to freeze what is alive when the outermost one ends
_thawed = False  # a pause thawed the frozen generation: collect and freeze again when the outermost one ends

log = logging.getLogger(__name__)

SLOW_COLLECTION_SECONDS = 0.1  # a full collection this long walked a long-lived state worth freezing

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def collection_paused(*, freeze: bool = False, thaw: bool = False) -> Iterator[None]:
    """Disable the cycle collector for the block; nested and concurrent pauses restore the state once.

    ``freeze``: if the block succeeds, everything alive when the outermost
    pause ends is frozen before the collector runs again (for a configuration
    that will live until a reload; see the module's docstring).

    ``thaw``: the block replaces a frozen configuration and drops it before it
    ends (the synchronous form of ``reloading``): everything is thawed now, and
    when the outermost pause ends, succeeded or not, one full collection frees
    what the old configuration left in cycles and what is alive is frozen
    again (a refused configuration leaves the old one frozen, as it was).
    """
    global _depth, _was_enabled, _freeze, _thawed
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        if thaw and not _thawed:
            gc.unfreeze()
            _thawed = True
        _depth += 1
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        with _lock:
            _freeze = _freeze or (freeze and succeeded)
            _depth -= 1
            if _depth == 0:
                if _thawed:
                    gc.collect()  # still paused: no automatic collection walks the new objects before this one
                if _freeze or _thawed:
                    gc.freeze()
                _freeze = _thawed = False
                if _was_enabled:
                    gc.enable()


def refreeze() -> None:
    """Collect what replaced objects left in cycles, then freeze what is alive now (after ``gc.unfreeze``)."""
    gc.collect()
    gc.freeze()


def reloading(apply: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``apply`` for reloads of a frozen configuration: thawed before, frozen again once the old one is dropped.

    The refreeze runs on the loop's next turn, not inside ``apply``: the
    caller may still hold the old configuration when ``apply`` returns (the
    standalone watcher drops its last snapshot right after), and a cycle
    still referenced then would be frozen again, for good.
    """

    async def thawed(*args: P.args, **kwargs: P.kwargs) -> R:
        gc.unfreeze()
        try:
            return await apply(*args, **kwargs)
        finally:
            asyncio.get_running_loop().call_soon(refreeze)

    return thawed


@contextmanager
def freeze_after_slow_collections(threshold: float = SLOW_COLLECTION_SECONDS) -> Iterator[None]:
    """While the block runs (on an event loop), freeze the survivors of every full collection that took at
    least ``threshold`` seconds (see the module's docstring).

    The freeze is scheduled on the loop rather than done in the collector's
    callback, which may run in any thread, in the middle of any allocation.
    """
    loop = asyncio.get_running_loop()
    started = 0.0
    scheduled = False

    def freeze() -> None:
        nonlocal scheduled
        scheduled = False
        with _lock:
            if _depth:  # a pause is building a configuration: it decides what to freeze when it ends
                return
            gc.freeze()
        log.debug("froze %d objects that survived a slow full collection", gc.get_freeze_count())

    def watch(phase: str, info: dict[str, Any]) -> None:
        nonlocal started, scheduled
        if info["generation"] != 2:
            return
        if phase == "start":
            started = time.perf_counter()
        elif time.perf_counter() - started >= threshold and not scheduled:
            scheduled = True
            loop.call_soon_threadsafe(freeze)

    gc.callbacks.append(watch)
    try:
        yield
    finally:
        gc.callbacks.remove(watch)
