"""``Idempotency-Key``: a retried POST returns the first answer instead of sending twice.

Clients retry after timeouts and dropped connections; without a key a retry
of a request that did reach the upstream sends the mail twice. With one, the
gateway remembers the answer per (account, key) for ``ttl`` seconds, in at
most ``max_entries`` entries (least recently used go first).

Rules:
- the same key with a different request body is a client bug: 422;
- a retry while the first request is still running waits for its answer;
- answers that say "retry" (problem+json with ``retryable: true``: 429,
  503, 504, an upstream 4xx such as greylisting) guarantee nothing was sent
  and are not remembered, so a retry with the key can send; nor are the
  401/403/404 checks before any send, whose cause can be fixed;
- everything else is: a success, a final refusal, and "delivery unknown"
  (the upstream may have the message, so a retry must not send again).
The decision reads the answer itself, so it holds for a peer's forwarded
answer exactly as for one of ours.

The guarantee is per gateway replica: replicas do not share the store. The
operator's routing of an account to its share holders narrows that, and
docs/security.md says where it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from .problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE

FIXABLE_CHECKS = frozenset({401, 403, 404})
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    """An HTTP answer as it can be replayed."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False

    @property
    def remembered(self) -> bool:
        """Whether a retry with the same key must get this answer instead of a new send."""
        if self.status in FIXABLE_CHECKS:
            return False
        if self.status < 400:
            return True
        return not _says_retry(self.content_type, self.body)


def _says_retry(content_type: str, body: bytes) -> bool:
    """A problem body with ``retryable: true``; an error without one (a proxy's HTML page) is kept, to be safe."""
    if content_type != PROBLEM_CONTENT_TYPE:
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("retryable") is True


class IdempotencyConflict(Exception):
    """The key was used before with a different request body."""


@dataclass
class _Entry:
    fingerprint: str
    expires: float
    response: StoredResponse | None = None
    pending: asyncio.Future[StoredResponse] | None = None


def fingerprint(content_type: str, body: bytes) -> str:
    return hashlib.sha256(content_type.encode() + b"\0" + body).hexdigest()


class IdempotencyStore:
    """Remembered answers by (account, key), bounded in time and size."""

    def __init__(self, *, ttl: float = 86400.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(
        self, scope: str, key: str, request_fingerprint: str, produce: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        """The remembered answer for this key, or ``produce()``'s (remembered if final)."""
        slot = (scope, key)
        now = time.monotonic()
        entry = self._entries.get(slot)
        if entry is not None and entry.expires <= now and entry.pending is None:
            del self._entries[slot]
            entry = None
        if entry is not None:
            if entry.fingerprint != request_fingerprint:
                raise IdempotencyConflict(key)
            self._entries.move_to_end(slot)
            if entry.response is not None:
                return replace(entry.response, replayed=True)
            assert entry.pending is not None
            return replace(await asyncio.shield(entry.pending), replayed=True)
        entry = _Entry(request_fingerprint, now + self.ttl, pending=asyncio.get_running_loop().create_future())
        self._entries[slot] = entry
        self._evict()
        pending = entry.pending
        assert pending is not None
        try:
            response = await produce()
        except BaseException as exc:
            self._entries.pop(slot, None)
            pending.set_exception(exc)
            pending.exception()  # retrieved here; waiters re-raise it
            raise
        entry.pending = None
        pending.set_result(response)
        if not response.remembered:
            self._entries.pop(slot, None)
        else:
            entry.response = response
            entry.expires = time.monotonic() + self.ttl
        return response

    def _evict(self) -> None:
        """Drop the least recently used answers; a request still running is never forgotten
        (its retry would send twice), and those are bounded by the gateway's concurrency."""
        while len(self._entries) > self.max_entries:
            victim = next((slot for slot, entry in self._entries.items() if entry.pending is None), None)
            if victim is None:
                return
            del self._entries[victim]
