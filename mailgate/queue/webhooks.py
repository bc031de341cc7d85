"""Per-account delivery-event webhooks, signed per Standard Webhooks 1.0 (https://www.standardwebhooks.com/).

An account may name an HTTP endpoint; ``WebhookNotifier.notify`` tells it that a message was
sent, deferred or failed. The receiver verifies each request with any Standard Webhooks library:

* body: ``{"type": "message.sent", "timestamp": "<RFC 3339 UTC>", "data": {...}}`` as minified JSON;
* ``webhook-id``: ``msg_`` + a unique id, the same on every retry of an event (the receiver's
  idempotency key);
* ``webhook-timestamp``: Unix seconds of this attempt (fresh on each retry: replay protection);
* ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the
  account's ``whsec_`` secret.

Why notifications are lossy and in memory: they must never slow delivery down. ``notify`` is
synchronous, does O(1) work and never raises or blocks; the event waits in a bounded
in-memory queue (full: the event is dropped and counted) for a few worker tasks that POST it.
What a receiver misses it can still read from the status API (``GET /v1/messages/{id}``); a
restart loses what was pending (counted as dropped by ``close``).

Delivery follows the specification's operational advice:

==============================================  ============================================================
the receiver answers                            what happens
==============================================  ============================================================
2xx                                             delivered
408, 429, 5xx, timeout, network error           retried after ``schedule[n]`` (equal jitter), or later if
                                                the answer's Retry-After says so (up to an hour); same id,
                                                newly signed with a fresh timestamp; after the last step:
                                                failed (``retries_exhausted``)
410 Gone                                        failed; the account's target is disabled until
                                                ``configure`` gives the account another URL or secret
any other status (3xx: redirects not followed)  failed, not retried (``http_<status>``)
==============================================  ============================================================

One account's slow or dead receiver must not hold up the others: at most
``per_account_concurrency`` of the ``concurrency`` requests in flight are one account's (a
hanging receiver ties up that many workers, not all), and at most ``max_pending_per_account``
of the ``max_pending`` events waiting are one account's. Waiting retries hold no worker: a
timer puts the event back when it falls due.

``configure`` replaces the account → target map at any time. An event is signed for and sent
to its account's target *at the time of each attempt*; an event waiting for a retry whose
account's target changed is tried again at once (on the new endpoint, with a fresh schedule),
and dropped when the account no longer has one.

Secrets never reach logs, reprs or exceptions; logs name the receiver by host only (a URL may
carry a token in its path or query) and never include a body.

``notify`` and ``configure`` must be called from the event loop's thread (they touch asyncio
objects); ``notify`` may be called before ``start``: the events wait for the workers.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import yarl

from mailgate.queue.ids import new_id
from mailgate.queue.webhook_signing import MIN_SECRET_BYTES, SECRET_PREFIX, parse_secret, sign

__all__ = ["MIN_SECRET_BYTES", "SECRET_PREFIX", "WebhookNotifier", "WebhookTarget", "parse_secret", "sign"]

log = logging.getLogger(__name__)

MESSAGE_SENT = "message.sent"
MESSAGE_DEFERRED = "message.deferred"
MESSAGE_FAILED = "message.failed"


# The specification's example schedule after the immediate first attempt: 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (about three days in all).
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


MAX_RETRY_AFTER = 3600.0  # a receiver's Retry-After is honoured up to an hour


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """A Retry-After header (RFC 9110 §10.2.3: delta-seconds or an HTTP-date) as seconds from ``now``.

    ``None`` when absent, unreadable or already past: the retry schedule decides
    then. Capped at ``MAX_RETRY_AFTER`` so a receiver cannot park events for days.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(seconds, MAX_RETRY_AFTER) if seconds > 0 else None


def _usable_url(url: str) -> bool:
    """What aiohttp can POST to, parsed by aiohttp's own parser: http(s), a host that IDNA-encodes, a port."""
    try:
        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host or not parsed.port:
            return False
        parsed.raw_host.encode("idna")  # an empty or overlong label fails here, not at the first POST
    except ValueError:  # UnicodeError included
        return False
    return True


@dataclass(frozen=True)
class WebhookTarget:
    """Where an account's events go and the key they are signed with (from ``parse_secret``)."""

    url: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _usable_url(self.url):  # the URL is not quoted: it may hold a token
            raise ValueError("a webhook URL must be http:// or https:// with a valid host")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a webhook secret must have at least {MIN_SECRET_BYTES} bytes")

    @property
    def host(self) -> str:
        """The URL's host: what logs and the repr show of it."""
        return yarl.URL(self.url).host or "?"

    def __repr__(self) -> str:
        return f"WebhookTarget(host={self.host!r}, url=<hidden>, secret=<hidden>)"


class WebhookObserver(Protocol):
    """What the gateway counts (Prometheus); methods must not raise. ``reason`` values are few and fixed.

    * ``failed`` reasons: ``http_<status>`` (not retried, 410 included), ``retries_exhausted``,
      ``internal_error``;
    * ``dropped`` reasons: ``queue_full``, ``account_queue_full``, ``no_target`` (removed by
      ``configure`` while the event waited), ``target_gone`` (its receiver answered 410),
      ``unserializable`` (``data`` is not JSON), ``shutdown``.
    """

    def delivered(self, account: str, event_type: str) -> None: ...

    def failed(self, account: str, event_type: str, reason: str) -> None: ...

    def dropped(self, account: str, reason: str) -> None: ...

    def retried(self, account: str) -> None: ...


class NullObserver:
    """Counts nothing: the default."""

    def delivered(self, account: str, event_type: str) -> None:
        pass

    def failed(self, account: str, event_type: str, reason: str) -> None:
        pass

    def dropped(self, account: str, reason: str) -> None:
        pass

    def retried(self, account: str) -> None:
        pass


@dataclass(eq=False)
class _Event:
    account: str
    event_type: str
    msg_id: str
    body: bytes
    failures: int = 0  # failed attempts on the current target


class WebhookNotifier:
    """Queues delivery events and POSTs them to the accounts' webhook targets (see the module docstring)."""

    def __init__(
        self,
        *,
        observer: WebhookObserver | None = None,
        max_pending: int = 10_000,
        max_pending_per_account: int = 1_000,
        concurrency: int = 4,
        per_account_concurrency: int = 2,
        request_timeout: float = 10.0,
        schedule: Sequence[float] = DEFAULT_SCHEDULE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(max_pending, max_pending_per_account, concurrency, per_account_concurrency) < 1 or request_timeout <= 0:
            raise ValueError("limits, concurrency and request_timeout must be positive")
        if any(step <= 0 for step in schedule):
            raise ValueError("retry delays must be positive")
        self._observer: WebhookObserver = observer or NullObserver()
        self._max_pending = max_pending
        self._max_pending_per_account = max_pending_per_account
        self._concurrency = concurrency
        self._per_account_concurrency = per_account_concurrency
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._schedule = tuple(schedule)
        self._clock = clock  # wall clock for the payload's and the header's timestamps
        self._targets: dict[str, WebhookTarget] = {}
        self._gone: dict[str, WebhookTarget] = {}  # targets that answered 410, while configured unchanged
        self._ready: asyncio.Queue[_Event | None] = asyncio.Queue()  # bounded by the admission counts below
        self._held: dict[str, collections.deque[_Event]] = {}  # waiting for a free slot of their account
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._retrying: dict[_Event, asyncio.TimerHandle] = {}
        self._pending: collections.Counter[str] = collections.Counter()  # per account, from notify to outcome
        self._pending_total = 0
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    def configure(self, targets: Mapping[str, WebhookTarget]) -> None:
        """Replace the account ("namespace/name") → target map; waiting retries follow the change at once."""
        new = dict(targets)
        changed = {account for account, target in self._targets.items() if new.get(account) != target}
        self._targets = new
        self._gone = {account: target for account, target in self._gone.items() if new.get(account) == target}
        for event in [event for event in self._retrying if event.account in changed]:
            self._retrying.pop(event).cancel()
            if event.account in new:
                event.failures = 0
                self._ready.put_nowait(event)
            else:
                self._drop(event, "no_target")

    def has_target(self, account: str) -> bool:
        """Whether ``notify`` would queue an event for ``account``: the caller need not build one otherwise
        (most accounts have no webhook; building a message's JSON for nobody was 3 % of a queue gateway's CPU)."""
        target = self._targets.get(account)
        return target is not None and self._gone.get(account) != target

    def notify(self, account: str, event_type: str, data: dict[str, Any]) -> None:
        """Queue one event for ``account``'s target; never blocks or raises. No target: ignored."""
        if not self.has_target(account):
            return
        if self._closed:
            self._observer.dropped(account, "shutdown")
            return
        if self._pending_total >= self._max_pending:
            self._observer.dropped(account, "queue_full")
            return
        if self._pending[account] >= self._max_pending_per_account:
            self._observer.dropped(account, "account_queue_full")
            return
        timestamp = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).isoformat(timespec="microseconds")
        payload = {"type": event_type, "timestamp": timestamp.replace("+00:00", "Z"), "data": data}
        try:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):
            log.error("webhook event %s for account %s dropped: its data is not JSON", event_type, account)
            self._observer.dropped(account, "unserializable")
            return
        self._pending[account] += 1
        self._pending_total += 1
        self._ready.put_nowait(_Event(account, event_type, f"msg_{new_id()}", body))

    def start(self) -> None:
        """Start the workers; call from a running event loop, once."""
        if self._session is not None or self._closed:
            raise RuntimeError("a WebhookNotifier starts once")
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._concurrency))
        self._workers = [asyncio.create_task(self._work(), name=f"webhook-worker-{n}") for n in range(self._concurrency)]

    async def close(self, deadline: float | None = None) -> None:
        """Stop: waiting events are dropped and counted; requests in flight get until ``deadline``.

        ``deadline`` is in loop time (``loop.time()``); ``None`` lets requests in flight run to
        their own ``request_timeout``. A request still running at the deadline is cancelled and
        its event counted as dropped (``shutdown``).
        """
        self._closed = True
        self._drop_waiting()
        for _ in self._workers:
            self._ready.put_nowait(None)
        if self._workers:
            timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
            _, late = await asyncio.wait(self._workers, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _drop_waiting(self) -> None:
        for event in list(self._retrying):
            self._retrying.pop(event).cancel()
            self._drop(event, "shutdown")
        for held in self._held.values():
            for event in held:
                self._drop(event, "shutdown")
        self._held.clear()
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if item is not None:
                self._drop(item, "shutdown")

    def _finish(self, event: _Event) -> None:
        self._pending_total -= 1
        self._pending[event.account] -= 1
        if not self._pending[event.account]:
            del self._pending[event.account]

    def _drop(self, event: _Event, reason: str) -> None:
        self._finish(event)
        self._observer.dropped(event.account, reason)

    def _fail(self, event: _Event, reason: str) -> None:
        self._finish(event)
        self._observer.failed(event.account, event.event_type, reason)

    async def _work(self) -> None:
        while (event := await self._ready.get()) is not None:
            account = event.account
            if self._in_flight[account] >= self._per_account_concurrency:
                self._held.setdefault(account, collections.deque()).append(event)
                continue
            self._in_flight[account] += 1
            try:
                await self._attempt(event)
            except asyncio.CancelledError:
                self._drop(event, "shutdown")
                raise
            except Exception as exc:  # a bug must not stop the worker; the message may quote the URL
                log.error("webhook %s for account %s: unexpected %s", event.msg_id, account, type(exc).__name__)
                self._fail(event, "internal_error")
            finally:
                self._release_slot(account)

    def _release_slot(self, account: str) -> None:
        self._in_flight[account] -= 1
        if not self._in_flight[account]:
            del self._in_flight[account]
        held = self._held.get(account)
        if held:
            self._ready.put_nowait(held.popleft())
            if not held:
                del self._held[account]

    async def _attempt(self, event: _Event) -> None:
        target = self._targets.get(event.account)
        if target is None:
            self._drop(event, "no_target")
            return
        if self._gone.get(event.account) == target:
            self._drop(event, "target_gone")
            return
        assert self._session is not None
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": event.msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(target.secret, event.msg_id, timestamp, event.body),
        }
        try:
            async with self._session.post(target.url, data=event.body, headers=headers, allow_redirects=False) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), now=time.time())
        except (aiohttp.ClientError, OSError) as exc:  # OSError includes TimeoutError: aiohttp's total timeout
            self._retry_later(event, target, type(exc).__name__)
            return
        if 200 <= status < 300:
            log.debug(
                "webhook %s (%s) for account %s delivered to %s", event.msg_id, event.event_type, event.account, target.host
            )
            self._finish(event)
            self._observer.delivered(event.account, event.event_type)
        elif status in (408, 429) or status >= 500:
            self._retry_later(event, target, f"HTTP {status}", not_before=retry_after)
        else:
            if status == 410:
                self._gone[event.account] = target
                log.warning(
                    "webhook receiver %s of account %s answered 410 Gone: nothing more is sent until its URL or secret changes",
                    target.host,
                    event.account,
                )
            else:
                log.warning(
                    "webhook %s (%s) for account %s refused by %s with HTTP %d, not retried",
                    event.msg_id,
                    event.event_type,
                    event.account,
                    target.host,
                    status,
                )
            self._fail(event, f"http_{status}")

    def _retry_later(self, event: _Event, target: WebhookTarget, why: str, *, not_before: float | None = None) -> None:
        event.failures += 1
        if self._closed:
            self._drop(event, "shutdown")
            return
        if event.failures > len(self._schedule):
            log.warning(
                "webhook %s (%s) for account %s to %s failed (%s), giving up after %d attempts",
                event.msg_id,
                event.event_type,
                event.account,
                target.host,
                why,
                event.failures,
            )
            self._fail(event, "retries_exhausted")
            return
        step = self._schedule[event.failures - 1]
        delay = random.uniform(step / 2, step)  # equal jitter, as for messages (retry.py)
        if not_before is not None:  # the receiver's Retry-After; the attempt still counts against the schedule
            delay = max(delay, not_before)
        log.info(
            "webhook %s for account %s to %s failed (%s), retry in %.1f s", event.msg_id, event.account, target.host, why, delay
        )
        self._retrying[event] = asyncio.get_running_loop().call_later(delay, self._due, event)
        self._observer.retried(event.account)

    def _due(self, event: _Event) -> None:
        del self._retrying[event]
        self._ready.put_nowait(event)
