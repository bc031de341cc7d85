"""Writes SmtpAccount status through the status subresource: only on change, coalesced, rate-limited.

Status depends on things that change outside any handler (a gateway acked a
push, reported an upstream error), so it is not returned from handlers but
written here. Accounts are marked dirty; one pass every ``interval`` seconds
at most patches those whose status body differs from the last one written.
Never a hot loop: a patch changes only status, which the SmtpAccount handlers
ignore, and an unchanged body is not sent at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from ..spec import GROUP, PLURAL, VERSION, SmtpAccountStatus
from .conditions import StatusInputs, build_status, sender_conflict_event, status_body, status_patch, token_event
from .events import post_event
from .metrics import OperatorMetrics

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class StatusSource(Protocol):
    def status_inputs(self, key: str) -> StatusInputs | None: ...

    def previous_status(self, key: str) -> SmtpAccountStatus | None: ...

    def record_status(self, key: str, status: SmtpAccountStatus) -> None: ...

    def object_ref(self, key: str) -> dict[str, Any] | None: ...


class StatusWriter:
    """Coalesces status changes of many accounts into few patches."""

    def __init__(
        self,
        api_client: ApiClient,
        metrics: OperatorMetrics,
        *,
        interval: float = 0.5,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source: StatusSource | None = None
        self._api_client = api_client
        self._api = CustomObjectsApi(api_client)
        self._metrics = metrics
        self._interval = interval
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._dirty: set[str] = set()
        self._event = asyncio.Event()

    def mark(self, keys: Iterable[str]) -> None:
        self._dirty.update(keys)
        if self._dirty:
            self._event.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._event.wait()
            self._event.clear()
            keys, self._dirty = self._dirty, set()
            results = await asyncio.gather(*(self._write(key) for key in sorted(keys)))
            failed = [key for key, ok in zip(sorted(keys), results, strict=True) if not ok]
            failures = failures + 1 if failed else 0
            self.mark(failed)
            await asyncio.sleep(min(MAX_BACKOFF, self._interval * 2**failures))

    async def _write(self, key: str) -> bool:
        """Patch one account's status if it changed; False if it should be tried again later."""
        source = self.source
        inputs = source.status_inputs(key) if source is not None else None
        if source is None or inputs is None:
            return True
        previous = source.previous_status(key)
        now = self._clock()
        status = build_status(inputs, previous.conditions if previous is not None else [], now)
        body = status_body(status)
        if previous is not None and status_body(previous) == body:
            return True
        namespace, name = key.split("/", 1)
        async with self._limit:
            try:
                # The stub lacks _content_type; the client accepts it, and a CR takes no strategic merge patch.
                await self._api.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                    GROUP, VERSION, namespace, PLURAL, name, {"status": status_patch(status, previous)},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip
            except ApiException as error:
                if error.status == 404:  # deleted meanwhile
                    return True
                self._metrics.status_patches.labels(result="error").inc()
                log.warning("status of %s not written: HTTP %s %s", key, error.status, error.reason)
                return False
            except (aiohttp.ClientError, TimeoutError) as error:
                self._metrics.status_patches.labels(result="error").inc()
                log.warning("status of %s not written: %s", key, type(error).__name__)
                return False
        self._metrics.status_patches.labels(result="ok").inc()
        source.record_status(key, status)
        before = previous.conditions if previous is not None else []
        ref = source.object_ref(key)
        for event in (sender_conflict_event(before, status.conditions), token_event(before, status.conditions)):
            if event is not None and ref is not None:
                await post_event(self._api_client, ref, *event, now)
        return True
