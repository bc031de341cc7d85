"""One push loop per gateway pod: it makes the pod serve what the plan says, and knows what it serves.

Each loop runs on its own, so a slow or unreachable pod only delays itself
(timeouts on every call, exponential backoff after failures). What a pod
serves is known from the answers to our own pushes and from its ``GET
/v1/status`` (read on first contact, after a failure and every resync
period), compared by ``config_digest``:

- a pod that has no snapshot (new or restarted: ``ready: false``) gets the
  full snapshot; so does a pod that is many accounts behind;
- otherwise single accounts are PUT or DELETEd, each with a fresh revision;
- an account the pod serves in a form the operator cannot identify (a
  previous operator's config) counts with the share the pod reports, so the
  caps in ``plan.cap`` stay safe across operator restarts.

A push whose outcome is unknown (timeout) counts as possibly applied
(``pending``) until the next status read settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Set
from typing import Protocol

from ..snapshot import AccountConfig, ConfigSnapshot, config_digest
from .admin import AdminClient, GatewayError, GatewayRejected, GatewayReport
from .metrics import OperatorMetrics
from .plan import NO_HOLD, GatewayPod, Hold, hold_of
from .revisions import Revisions

log = logging.getLogger(__name__)

# More differences than this (and nothing to leave untouched), and at least a FULL_SNAPSHOT_SHARE-th of what the
# pod is to serve: one full snapshot instead of single pushes. A full snapshot re-sends and the pod re-validates
# every account, so below that share single pushes cost less; with the threshold alone, 10,000 accounts created
# in a burst made every cycle of every pod a full snapshot of all of them (quadratic: a 220 s set-up in
# bench.propagation, and the last of those snapshots still delaying the first change after it).
FULL_SNAPSHOT_THRESHOLD = 64
FULL_SNAPSHOT_SHARE = 8
MAX_BACKOFF = 30.0

Desired = dict[str, tuple[AccountConfig, str]]
"""Account key -> (config, its digest) for one gateway."""


class SyncerHost(Protocol):
    """What a syncer needs from the engine."""

    revisions: Revisions

    @property
    def primed(self) -> bool:
        """Every existing account has been read since start-up: deletions and full snapshots are safe."""
        ...

    def desired_for(self, syncer: GatewaySyncer) -> Desired: ...

    def keeps(self) -> Set[str]:
        """Accounts to leave as they are on every gateway (no good config known to this operator)."""
        ...

    def deleting(self) -> Set[str]:
        """Accounts being deleted: removed from gateways even before ``primed``."""
        ...

    def planned(self) -> Set[str]:
        """Accounts with a plan (desired on every pod, possibly held back on one for now)."""
        ...

    def full_hold(self, key: str) -> Hold: ...

    def gateway_changed(self, syncer: GatewaySyncer, keys: Set[str], *, first_contact: bool = False) -> None: ...

    def queues_changed(self, keys: Set[str]) -> None:
        """The pod reports other queued-message counts for ``keys`` than at its previous status read."""
        ...


class GatewaySyncer:
    """Keeps one gateway pod in sync; ``held``/``serves`` answer for the engine what the pod has."""

    def __init__(
        self,
        host: SyncerHost,
        client: AdminClient,
        gateway: GatewayPod,
        *,
        resync_seconds: float,
        metrics: OperatorMetrics,
    ) -> None:
        self.host = host
        self.client = client
        self.gateway = gateway
        self.resync_seconds = resync_seconds
        self.metrics = metrics
        self.known: Desired = {}
        self.pending: dict[str, AccountConfig] = {}
        self.unknown: dict[str, tuple[Hold, str | None]] = {}
        self.report: GatewayReport | None = None
        self.revision: int | None = None
        self.capped: set[str] = set()
        self.rejected: dict[str, tuple[str, str]] = {}
        """Accounts this pod refused as invalid: key -> (digest, the pod's reason); retried once they change."""
        self.failures = 0
        self._needs_status = True
        self._needs_full = False
        self._next_resync = 0.0
        self._wake = asyncio.Event()
        self._wake.set()
        self._pod_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.gateway.name

    @property
    def contacted(self) -> bool:
        """Whether the pod's state is known (it answered at least once)."""
        return self.report is not None

    def held(self, key: str) -> Hold:
        """The most of ``key``'s limits this pod may be using right now."""
        hold = NO_HOLD
        if (known := self.known.get(key)) is not None:
            hold = hold.union(hold_of(known[0]))
        if (pending := self.pending.get(key)) is not None:
            hold = hold.union(hold_of(pending))
        if (unknown := self.unknown.get(key)) is not None:
            hold = hold.union(unknown[0])
        return hold

    def has(self, key: str) -> bool:
        """Whether the pod may serve ``key`` in any form."""
        return key in self.known or key in self.pending or key in self.unknown or not self.contacted

    def serves(self, key: str, digest: str) -> bool:
        known = self.known.get(key)
        return known is not None and known[1] == digest

    def wake(self, *, status: bool = False) -> None:
        """Look again soon; ``status`` re-reads the pod's status first and cuts a backoff short (the pod changed)."""
        self._wake.set()
        if status:
            self._needs_status = True
            self._pod_changed.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"sync {self.name}")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        while True:
            if self.failures:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._backoff()):
                        await self._pod_changed.wait()
            else:
                try:
                    async with asyncio.timeout(max(0.0, self._next_resync - time.monotonic())):
                        await self._wake.wait()
                except TimeoutError:
                    self._needs_status = True
            self._wake.clear()
            self._pod_changed.clear()
            try:
                await self.sync_once()
            except GatewayError as error:
                self._failed(error.kind)
                log.warning("gateway %s (%s): %s; attempt %d", self.name, self.gateway.ip, error, self.failures)
            except Exception:  # a bug must not end this pod's loop for good: log it, back off, start over
                self._failed("error")
                log.exception("gateway %s: sync failed; attempt %d", self.name, self.failures)
            else:
                self.failures = 0

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._needs_status = True
        self.metrics.push_failures.labels(reason=reason).inc()

    def _backoff(self) -> float:
        """Exponential, but never longer than the resync period: a restarted pod should not wait longer."""
        base = min(MAX_BACKOFF, self.resync_seconds, 0.5 * 2 ** (self.failures - 1))
        return base * random.uniform(0.8, 1.2)

    async def sync_once(self) -> None:
        if self._needs_status:
            await self._refresh()
        if self._needs_full:
            if self.host.primed:
                await self._push_full(self._acceptable(self.host.desired_for(self)))
            return
        desired = self._acceptable(self.host.desired_for(self))
        changed: list[tuple[str, AccountConfig, str]] = []
        adopted: set[str] = set()
        for key, (config, digest) in desired.items():
            if self.serves(key, digest):
                continue
            unknown = self.unknown.get(key)
            if unknown is not None and unknown[1] == digest:  # already served, e.g. pushed by the previous operator
                self.known[key] = (config, digest)
                del self.unknown[key]
                adopted.add(key)
                continue
            changed.append((key, config, digest))
        if adopted:
            self.host.gateway_changed(self, adopted)
        present = set(self.known) | set(self.unknown)
        kept = self.host.keeps()
        planned = self.host.planned()
        removable = present - planned - kept if self.host.primed else present & self.host.deleting()
        removed = sorted(removable)
        if not changed and not removed:
            return
        differences = len(changed) + len(removed)
        worth_full = differences > max(FULL_SNAPSHOT_THRESHOLD, len(desired) // FULL_SNAPSHOT_SHARE)
        if self.host.primed and worth_full and not present & kept:
            await self._push_full(desired)
            return
        for key, config, _ in changed:  # counted as possibly applied before the first request leaves
            self.pending[key] = config
        for key, config, digest in changed:
            await self._put(key, config, digest)
        for key in removed:
            await self._delete(key)

    async def _refresh(self) -> None:
        report = await self.client.status(self.gateway.ip)
        for key in (set(self.known) | set(self.pending) | set(self.unknown)) - report.accounts.keys():
            self._forget(key)
        for key, account in report.accounts.items():
            pending = self.pending.pop(key, None)  # nothing is in flight now: the report settles it
            if self.serves(key, account.digest or ""):
                self.unknown.pop(key, None)
                continue
            if pending is not None and account.digest == config_digest(pending):
                self.known[key] = (pending, account.digest)
                self.unknown.pop(key, None)
                continue
            self.known.pop(key, None)
            self.unknown[key] = (account.hold or self.host.full_hold(key), account.digest)
        first_contact = self.report is None
        changed = _report_changes(self.report, report)
        queues = _queue_changes(self.report, report)
        self.report = report
        self.revision = report.revision
        self._needs_full = not report.ready
        self._needs_status = False
        self._next_resync = time.monotonic() + self.resync_seconds
        self.host.gateway_changed(self, changed, first_contact=first_contact)
        if queues:
            self.host.queues_changed(queues)

    def _forget(self, key: str) -> None:
        self.known.pop(key, None)
        self.pending.pop(key, None)
        self.unknown.pop(key, None)

    def _next_revision(self) -> int:
        return self.host.revisions.next(at_least=(self.revision or 0) + 1)

    def _acceptable(self, desired: Desired) -> Desired:
        """``desired`` without what this pod refused, unless it changed since."""
        for key in list(self.rejected):
            if key not in desired or desired[key][1] != self.rejected[key][0]:
                del self.rejected[key]
        return {key: value for key, value in desired.items() if key not in self.rejected}

    def _reject(self, key: str, digest: str, error: GatewayRejected) -> None:
        self.rejected[key] = (digest, error.detail)
        self.pending.pop(key, None)
        self.metrics.push_failures.labels(reason="invalid").inc()
        log.warning("gateway %s refused account %s: %s", self.name, key, error.detail)
        self.host.gateway_changed(self, {key})

    async def _push_full(self, desired: Desired) -> None:
        """One snapshot; an account the pod refuses is left out (and reported), never the whole pod."""
        keys = sorted(desired)
        while True:
            revision = self._next_revision()
            for key in keys:
                self.pending[key] = desired[key][0]
            snapshot = ConfigSnapshot(revision=revision, accounts=[desired[key][0] for key in keys])
            try:
                await self._timed("full", self.client.put_config(self.gateway.ip, snapshot))
                break
            except GatewayRejected as error:
                culprits = _refused_keys(error, keys) if error.invalid else set()
                if not culprits:
                    raise
                for key in culprits:
                    self._reject(key, desired[key][1], error)
                keys = [key for key in keys if key not in culprits]
        desired = {key: desired[key] for key in keys}
        before = set(self.known) | set(self.unknown)
        self.known = dict(desired)
        self.pending.clear()
        self.unknown.clear()
        self.revision = revision
        self._needs_full = False
        log.info("gateway %s: full snapshot with %d accounts, revision %d", self.name, len(desired), revision)
        self.host.gateway_changed(self, before | desired.keys())

    async def _put(self, key: str, config: AccountConfig, digest: str) -> None:
        revision = self._next_revision()
        try:
            await self._timed("account", self.client.put_account(self.gateway.ip, config, revision))
        except GatewayRejected as error:
            if not error.invalid:
                raise
            self._reject(key, digest, error)
            return
        self.known[key] = (config, digest)
        self.pending.pop(key, None)
        self.unknown.pop(key, None)
        self.revision = revision
        self.host.gateway_changed(self, {key})

    async def _delete(self, key: str) -> None:
        revision = self._next_revision()
        await self._timed("delete", self.client.delete_account(self.gateway.ip, key, revision))
        self._forget(key)
        self.revision = revision
        self.host.gateway_changed(self, {key})

    async def _timed(self, kind: str, call: Awaitable[None]) -> None:
        started = time.perf_counter()
        try:
            await call
        except GatewayRejected as error:
            if error.status == 409:  # another writer got ahead: read its revision, then go past it
                self._needs_status = True
            raise
        self.metrics.push_seconds.labels(kind=kind).observe(time.perf_counter() - started)


def _refused_keys(error: GatewayRejected, keys: list[str]) -> set[str]:
    """Accounts a refused snapshot names: ``accounts[ns/name]``, or by index ``accounts[2]...``
    (``mailgate.validation``'s paths) or ``accounts.2...`` (a gateway of the previous release)."""
    found = set()
    for field in error.fields:
        match = re.match(r"accounts(?:\[([^\]]+)\]|\.(\d+))", field)
        if match is None:
            continue
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name.isdigit():
            if int(name) < len(keys):
                found.add(keys[int(name)])
        else:
            found.add(name)
    return found & set(keys)


def _report_changes(before: GatewayReport | None, after: GatewayReport) -> set[str]:
    """Accounts whose reported state (digest, health) differs between two status reads."""
    if before is None:
        return set(after.accounts)
    keys = before.accounts.keys() | after.accounts.keys()
    return {key for key in keys if before.accounts.get(key) != after.accounts.get(key)}


def _queue_changes(before: GatewayReport | None, after: GatewayReport) -> set[str]:
    """Accounts whose queued-message counts differ between two status reads (kept apart from ``_report_changes``:
    counts move all the time, and only ``queuestatus`` decides when they reach the status)."""
    if before is None:
        return set(after.queues)
    old, new = before.queues, after.queues
    return {key for key in old.keys() | new.keys() if key not in old or key not in new or old[key] != new[key]}
