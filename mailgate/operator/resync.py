"""The periodic account resync: a safety net under kopf's handlers, for what a lost event or PATCH left behind.

kopf reacts to watch events only. When one is lost, or a PATCH of kopf's
times out (adding the finalizer, under the load of 10,000 accounts created at
once), kopf may never call a handler for that object again until someone
touches it: the account exists and no gateway serves it. So every
``interval`` the leader lists the SmtpAccounts (pages of ``PAGE_SIZE``) and
compares each with the engine, by uid and generation (what ``Engine.upsert``
last got, valid or not):

- **missing** (the engine does not know it) and **stale** (it knows an older
  generation or another object of that name) accounts are reconciled with
  ``handlers.apply_account``, the create/update handlers' own code: same
  status, Events and metrics (``trigger="resync"``). An account counts only
  when it was behind at two passes in a row with the same uid and
  generation, and is read again just before: a handler that is merely
  behind (10,000 accounts just created, a Secret listing not done) is left
  to kopf, and a repair never works from an outdated copy.
- **gone**: an account the engine has whose object no longer exists (read
  again to be sure: the listing is older than the engine) is dropped the way
  the delete handler ends, and taken off every gateway. There is no
  finalizer left to hold, so it does not wait for the gateways: once the
  engine forgets it, every push loop deletes it, also on a pod that comes
  back later. Objects with a ``deletionTimestamp`` still exist; kopf's delete
  handler owns them.
- **deleted**: an object being deleted and still held by our finalizer at
  two passes in a row: the delete handler never ran or never finished (its
  event lost, or the PATCH releasing the finalizer timed out), so the
  account stays served and the deletion hangs. The resync does what the
  handler does: off every gateway, forgotten, finalizer released
  (conditional on the version read again).
- **finalizer**: an account without our finalizer (at two passes in a row)
  gets it here. kopf adds it only when an event for the object arrives, and
  a lost event is the case at hand; without it, deleting the account would
  skip the delete handler. A merge patch of the whole list, conditional on
  the ``resourceVersion`` read: a concurrent change wins and the next pass
  looks again. The patch's watch event also makes kopf look
  at the object again.

- **secret**: the same pass compares the Secrets the accounts read with the
  ``SecretCache`` and applies a change whose watch event was lost, with the
  Secret handler's code (``secret_resync``).

When nothing was missed a pass costs the listings and one dictionary lookup
per account and per Secret: nothing is pushed, nothing is written. It runs
only once the start-up listings are done (every account existing then was
handled, and Secrets are known): before, an account may be behind for no
other reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from ..spec import GROUP, PLURAL, VERSION
from .bookkeeping import SpecDiffBase
from .engine import Engine
from .events import post_event
from .handlers import DELETE_WAIT_SECONDS, FINALIZER, apply_account, credential_event
from .metrics import OperatorMetrics
from .paging import listed
from .secret_resync import SecretResync
from .secrets import SecretCache

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0
PAGE_SIZE = 500
REQUEST_TIMEOUT = 60.0

_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError, ValueError, KeyError)


@dataclass(frozen=True)
class Listed:
    """What a pass keeps of one listed SmtpAccount (not the object: 10,000 of them would be tens of MB)."""

    uid: str
    generation: int | None
    deleting: bool
    finalized: bool


@dataclass
class Repairs:
    """One pass's repairs, by kind, as account keys (``secret``: Secrets, as namespace/name)."""

    missing: list[str]
    stale: list[str]
    gone: list[str]
    finalizer: list[str]
    secret: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # deletions our finalizer held that nobody finished

    def accounts(self) -> set[str]:
        """The accounts repaired (one may be both missing and without finalizer)."""
        return {*self.missing, *self.stale, *self.gone, *self.finalizer, *self.deleted}


class AccountResync:
    """Lists the SmtpAccounts every ``interval`` seconds and repairs what the engine missed (see the module)."""

    def __init__(
        self, api_client: ApiClient, namespaces: tuple[str, ...], interval: float, memo: kopf.Memo,
        page_size: int = PAGE_SIZE,
    ) -> None:  # fmt: skip
        self._page_size = page_size
        self._api_client = api_client
        self._api = CustomObjectsApi(api_client)
        self._namespaces = namespaces
        self._interval = interval
        self._memo = memo
        self._engine: Engine = memo.engine
        self._metrics: OperatorMetrics = memo.metrics
        self._secrets: SecretCache = memo.secrets
        self._diffbase: SpecDiffBase = memo.diffbase
        self._behind: dict[str, tuple[str, int | None]] = {}  # found behind at the previous pass
        self._unfinalized: set[tuple[str, str]] = set()  # (key, uid) found without our finalizer then
        self._held: set[tuple[str, str]] = set()  # (key, uid) found deleting and held by our finalizer then
        self._secret_resync = SecretResync(api_client, namespaces, memo, page_size)

    async def run(self) -> None:
        """Forever: a failed pass is logged and counted; the next one starts from scratch."""
        while True:
            await asyncio.sleep(self._interval)
            if not (self._engine.primed and self._secrets.filled):
                self._metrics.resyncs.labels(result="skipped").inc()
                log.info("resync: start-up listings not done yet; next pass in %.0fs", self._interval)
                continue
            try:
                await self.run_once()
            except _ERRORS as error:
                self._metrics.resyncs.labels(result="failed").inc()
                what = f"HTTP {error.status} {error.reason}" if isinstance(error, ApiException) else type(error).__name__
                log.warning("resync: pass failed (%s); next pass in %.0fs", what, self._interval)
            except Exception:  # a safety net with a bug must not stop the operator it protects
                self._metrics.resyncs.labels(result="failed").inc()
                log.exception("resync: pass failed; next pass in %.0fs", self._interval)

    async def run_once(self) -> Repairs:
        """One pass: list, compare, repair; returns what was repaired."""
        listed: dict[str, Listed] = {}
        async for item in self._items():
            meta = item["metadata"]
            listed[f"{meta['namespace']}/{meta['name']}"] = Listed(
                uid=meta["uid"],
                generation=meta.get("generation"),
                deleting=bool(meta.get("deletionTimestamp")),
                finalized=FINALIZER in (meta.get("finalizers") or ()),
            )
        behind = {
            key: (obj.uid, obj.generation)
            for key, obj in listed.items()
            if not obj.deleting and self._engine.behind(key, obj.uid, obj.generation)
        }
        confirmed = sorted(key for key, mark in behind.items() if self._behind.get(key) == mark)
        self._behind = behind
        unfinalized = {(key, obj.uid) for key, obj in listed.items() if not obj.deleting and not obj.finalized}
        finalize = sorted(key for key, uid in unfinalized & self._unfinalized)
        self._unfinalized = unfinalized
        absent = sorted((key, uid) for key, uid in self._engine.known().items() if key not in listed)
        held = {(key, obj.uid) for key, obj in listed.items() if obj.deleting and obj.finalized}
        stuck = sorted(held & self._held)
        self._held = held

        repairs = Repairs([], [], [], [])
        for key in finalize:
            if await self._add_finalizer(key):
                repairs.finalizer.append(key)
        for key in confirmed:
            kind = await self._reconcile(key)
            if kind is not None:
                getattr(repairs, kind).append(key)
        for key, uid in absent:
            if await self._drop_if_gone(key, uid):
                repairs.gone.append(key)
        for key, uid in stuck:
            if await self._finish_deletion(key, uid):
                repairs.deleted.append(key)
        repairs.secret = await self._secret_resync.run_once()

        self._metrics.resyncs.labels(result="ok").inc()
        self._metrics.resync_listed.set(len(listed))
        for kind in ("missing", "stale", "gone", "finalizer", "secret", "deleted"):
            if count := len(getattr(repairs, kind)):
                self._metrics.resync_repairs.labels(kind=kind).inc(count)
                log.debug("resync: %s: %s", kind, ", ".join(getattr(repairs, kind)))
        if repaired := repairs.accounts():
            log.info(
                "resync: repaired %d account(s) of %d listed: %d missing, %d stale, %d gone, %d without finalizer,"
                " %d deletions finished",
                len(repaired), len(listed), len(repairs.missing), len(repairs.stale), len(repairs.gone),
                len(repairs.finalizer), len(repairs.deleted),
            )  # fmt: skip
        else:
            log.debug("resync: %d account(s) listed, nothing to repair", len(listed))
        return repairs

    async def _reconcile(self, key: str) -> str | None:
        """Reconcile ``key`` from a fresh read; its kind of repair, or None if it needs none (or failed)."""
        body = await self._fresh(key)
        if body is None:
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp") or not self._engine.behind(key, meta["uid"], meta.get("generation")):
            return None  # a handler caught up meanwhile, or a deletion began: kopf's
        kind = "stale" if self._engine.has(key) else "missing"
        try:
            change = await apply_account(body, "resync", self._memo)
        except kopf.TemporaryError as error:
            log.info("resync: %s not reconciled yet: %s", key, error)
            return None
        except kopf.PermanentError as error:  # names fields, never values
            log.warning("resync: %s cannot be served: %s", key, error)
            return kind
        event = credential_event(change)
        ref = self._engine.object_ref(key)
        if event is not None and ref is not None:
            await post_event(self._api_client, ref, *event, datetime.now(UTC))
        return kind

    async def _drop_if_gone(self, key: str, uid: str | None) -> bool:
        """Forget ``key`` if its object is truly gone (it may have been created after the listing began)."""
        if not await self._gone(key):
            return False
        if not self._engine.knows(key, uid):
            return False  # a handler replaced or removed the account meanwhile
        self._engine.start_deleting(key)  # wakes every push loop: they delete what the engine no longer has
        self._engine.forget(key)
        if uid is not None:
            self._diffbase.forget(uid)
        return True

    async def _finish_deletion(self, key: str, uid: str) -> bool:
        """Do what the delete handler does for ``key``, deleting for two passes and still held by our finalizer:
        off every gateway, forgotten, finalizer released. Whether it was; a fresh read first (kopf may have
        finished meanwhile), and the release is conditional on the version read."""
        fresh = await self._metadata(key)
        if fresh is None:
            return False
        meta, finalizers = fresh
        if meta.get("uid") != uid or not meta.get("deletionTimestamp") or FINALIZER not in finalizers:
            return False
        if self._engine.has(key):
            self._engine.start_deleting(key)
            remaining = await self._engine.wait_removed(key, DELETE_WAIT_SECONDS)
            if remaining:
                log.info("resync: %s is still served by gateway(s) %s; left for the next pass", key, ", ".join(remaining))
                return False
            self._engine.forget(key)
        self._diffbase.forget(uid)
        kept = [f for f in finalizers if f != FINALIZER]
        return await self._patch_finalizers(key, kept, meta["resourceVersion"])

    async def _patch_finalizers(self, key: str, finalizers: list[str], version: str) -> bool:
        """Set ``key``'s finalizers, unless the object changed since ``version``; whether they were set."""
        namespace, name = key.split("/", 1)
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
        try:
            # The stub lacks _content_type; a custom resource takes no strategic merge patch.
            await self._api.patch_namespaced_custom_object(  # type: ignore[call-arg]
                GROUP, VERSION, namespace, PLURAL, name, patch,
                _content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
        except ApiException as error:
            if error.status not in (404, 409):  # gone, or changed since the read: the next pass looks again
                log.warning("resync: finalizers of %s not updated: HTTP %s %s", key, error.status, error.reason)
            return False
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            log.warning("resync: finalizers of %s not updated: %s", key, type(error).__name__)
            return False
        return True

    async def _add_finalizer(self, key: str) -> bool:
        """Add our finalizer to a fresh read of ``key``, unless it changed meanwhile; whether it was added."""
        fresh = await self._metadata(key)
        if fresh is None:
            return False
        meta, finalizers = fresh
        if meta.get("deletionTimestamp") or FINALIZER in finalizers:
            return False
        return await self._patch_finalizers(key, [*finalizers, FINALIZER], meta["resourceVersion"])

    async def _metadata(self, key: str) -> tuple[dict[str, Any], list[str]] | None:
        """A fresh read of ``key``'s metadata and finalizers; None if it is gone or could not be read (logged)."""
        body = await self._fresh(key)
        if body is None:
            return None
        meta: dict[str, Any] = body.get("metadata") or {}
        return meta, list(meta.get("finalizers") or ())

    async def _fresh(self, key: str) -> dict[str, Any] | None:
        """``key`` read again; None if it is gone or could not be read (logged: the next pass tries again)."""
        try:
            return await self._read(key)
        except _ERRORS as error:
            log.warning("resync: could not read %s (%s); left for the next pass", key, type(error).__name__)
            return None

    async def _gone(self, key: str) -> bool:
        """Whether ``key`` is confirmed gone (404), not merely unreadable now."""
        try:
            return await self._read(key) is None
        except _ERRORS as error:
            log.warning("resync: could not read %s (%s); left for the next pass", key, type(error).__name__)
            return False

    async def _read(self, key: str) -> dict[str, Any] | None:
        """The object now; None if it does not exist."""
        namespace, name = key.split("/", 1)
        try:
            raw = await self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], raw)

    async def _items(self) -> AsyncIterator[dict[str, Any]]:
        """Every served SmtpAccount, a page at a time, as raw JSON (the client's models would cost more than the data)."""
        for namespace in self._namespaces or (None,):
            if namespace is None:
                list_page = functools.partial(self._api.list_cluster_custom_object, GROUP, VERSION, PLURAL)
            else:
                list_page = functools.partial(self._api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
            async for item in listed(list_page, self._page_size, _request_timeout=REQUEST_TIMEOUT):
                yield item
