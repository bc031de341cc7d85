"""Message ids: 32 hex digits that sort by creation time, unique across replicas without coordination.

The layout is UUIDv7's (RFC 9562): 48 bits of Unix milliseconds, 12 bits of sub-millisecond
fraction, then 64 random bits (version and variant bits are not set: the id is opaque, not a UUID).
Time order makes ``after_id`` paging and the primary-key index append-mostly.
"""

from __future__ import annotations

import secrets
import time


def new_id(now_ns: int | None = None) -> str:
    ns = time.time_ns() if now_ns is None else now_ns
    ms, rest_ns = divmod(ns, 1_000_000)
    fraction = rest_ns * 4096 // 1_000_000
    return f"{ms & 0xFFFF_FFFF_FFFF:012x}{fraction:03x}{secrets.randbits(68):017x}"
