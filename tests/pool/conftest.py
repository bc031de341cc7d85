"""A pool per test, always closed, with a fast background cleanup so idle timeouts show quickly."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import pytest

from mailgate.pool import SMTPPool


@pytest.fixture
async def pool(upstream_factory: object) -> AsyncIterator[SMTPPool]:
    # Depending on upstream_factory makes the pool close (QUIT) before the upstreams stop.
    smtp_pool = SMTPPool(cleanup_interval=0.05, close_grace=2.0)
    yield smtp_pool
    await smtp_pool.close_all(grace=2.0)
    # Collect now so that an unclosed socket or transport is reported against the test that leaked it.
    gc.collect()
