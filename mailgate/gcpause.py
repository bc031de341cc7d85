"""Pausing Python's cyclic garbage collector while a large configuration is built.

Validating and applying 10,000 accounts allocates a few million objects that
all stay alive; each allocation burst triggers a collection that walks every
young object again, and those collections were two thirds of the time of a
full snapshot push (measured: 112 µs per account with collections, 36 µs
without). Nothing built there is cyclic garbage, so collecting during it is
pure cost. Reference counting still frees everything as usual; only the
cycle collector waits, and it runs once the outermost pause ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # pauses in progress (the standalone loader runs in a thread, the admin API on the loop)
_was_enabled = False


@contextmanager
def collection_paused() -> Iterator[None]:
    """Disable the cycle collector for the block; nested and concurrent pauses restore the state once."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
