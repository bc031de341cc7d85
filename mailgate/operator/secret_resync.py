"""The Secret part of the periodic resync: Secret changes whose watch event the operator never got.

The ``SecretCache`` hears of a Secret change only through kopf's Secret
watch. When that event is lost, the cache keeps the old values and nothing
tells the accounts that read the Secret: gateways keep the old password, an
OAuth2 token keeper keeps asking with a rotated-away client secret, until
the next change of that Secret or a restart. So at each account resync pass
the leader also lists the Secrets of the served namespaces, **metadata
only** (``PartialObjectMetadataList``: no values travel, and a namespace full
of large Helm release Secrets costs a few hundred bytes per Secret), and
compares the ``resourceVersion`` of each Secret that an account reads with
the one the cache's copy is from:

- listed, and the cache has another version or none: **changed** (or created)
  unseen;
- cached, and not listed: **deleted** unseen.

A Secret counts only when it was so at two passes in a row with the same
listed and cached versions (an event on its way, or a listing older than an
event, changes one of them by the next pass), and it is read again just
before: if the fresh copy is what the cache has, an event caught up. The
repair is ``handlers.apply_secret``, the Secret event handler's own code:
cache updated, referencing accounts re-resolved, the same Events and metrics
(``trigger="resync"``). Only names and versions are compared or logged,
never values.

When nothing was missed a pass costs the metadata listing and a dictionary
lookup per Secret: no Secret is read, nothing is pushed.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from .engine import Engine
from .events import post_event
from .handlers import apply_secret, credential_event
from .paging import listed
from .secrets import SecretCache

log = logging.getLogger(__name__)

PAGE_SIZE = 500
REQUEST_TIMEOUT = 60.0
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
"""What the apiserver answers a LIST with: names and versions, no ``data`` (the fallback is never used by a
current apiserver; if it were, the pass would still work, reading more)."""

SecretKey = tuple[str, str]  # (namespace, name)
Mark = tuple[str | None, str | None]  # (listed resourceVersion or None if not listed, the cache's version)


class SecretResync:
    """One pass (``run_once``) at a time, called by ``resync.AccountResync``; keeps what the previous pass found."""

    def __init__(self, api_client: ApiClient, namespaces: tuple[str, ...], memo: kopf.Memo, page_size: int = PAGE_SIZE) -> None:
        self._api_client = api_client
        self._namespaces = namespaces
        self._memo = memo
        self._page_size = page_size
        self._engine: Engine = memo.engine
        self._secrets: SecretCache = memo.secrets
        self._behind: dict[SecretKey, Mark] = {}  # found behind at the previous pass

    async def run_once(self) -> list[str]:
        """List, compare, repair; returns the Secrets repaired, as ``namespace/name``."""
        listed: dict[SecretKey, str | None] = {}
        async for item in self._items():
            meta = item["metadata"]
            key = (meta["namespace"], meta["name"])
            if self._engine.referencing(*key):
                listed[key] = meta.get("resourceVersion")
        behind: dict[SecretKey, Mark] = {}
        for key, version in listed.items():
            cached = self._secrets.version(*key)
            if self._secrets.lookup(*key) is None or cached != version:
                behind[key] = (version, cached)
        for key in self._secrets.known():
            if key not in listed and self._engine.referencing(*key):
                behind[key] = (None, self._secrets.version(*key))
        confirmed = sorted(key for key, mark in behind.items() if self._behind.get(key) == mark)
        self._behind = behind

        repaired = [f"{namespace}/{name}" for namespace, name in confirmed if await self._repair(namespace, name)]
        if repaired:
            log.info("resync: applied %d Secret change(s) the watch missed: %s", len(repaired), ", ".join(repaired))
        return repaired

    async def _repair(self, namespace: str, name: str) -> bool:
        """Apply a fresh read of the Secret if the cache is still behind it; whether it was applied."""
        try:
            body = await self._read(namespace, name)
        except (ApiException, aiohttp.ClientError, TimeoutError, ValueError) as error:
            what = f"HTTP {error.status}" if isinstance(error, ApiException) else type(error).__name__
            log.warning("resync: could not read Secret %s/%s (%s); left for the next pass", namespace, name, what)
            return False
        if body is None:
            if self._secrets.lookup(namespace, name) is None:
                return False  # its DELETED event arrived meanwhile
        elif body["metadata"].get("resourceVersion") == self._secrets.version(namespace, name):
            return False  # its event arrived meanwhile
        # No await between the check above and the cache update inside: a handler cannot slip in between.
        changes = await apply_secret(namespace, name, body, "resync", self._memo)
        for key, change in changes:
            event = credential_event(change)
            ref = self._engine.object_ref(key)
            if event is not None and ref is not None:
                await post_event(self._api_client, ref, *event, datetime.now(UTC))
        return True

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret now, as raw JSON; None if it does not exist. Its values stay in memory, never in a log."""
        response = await self._api_client.call_api(
            f"/api/v1/namespaces/{namespace}/secrets/{name}", "GET",
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
        async with response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise ApiException(status=response.status, reason=response.reason)
            body: dict[str, Any] = json.loads(await response.read())
        return body

    async def _items(self) -> AsyncIterator[dict[str, Any]]:
        """Every Secret of the served namespaces, metadata only, a page at a time."""
        for namespace in self._namespaces or (None,):
            path = "/api/v1/secrets" if namespace is None else f"/api/v1/namespaces/{namespace}/secrets"
            async for item in listed(functools.partial(self._list_page, path), self._page_size):
                yield item

    async def _list_page(self, path: str, *, limit: int, _preload_content: bool, _continue: str | None = None) -> object:
        """One page, as ``paging.listed`` asks for it (the generated client would not let us choose ``Accept``)."""
        query: list[tuple[str, Any]] = [("limit", limit)]
        if _continue:
            query.append(("continue", _continue))
        return await self._api_client.call_api(
            path, "GET", query_params=query, header_params={"Accept": METADATA_ONLY}, auth_settings=["BearerToken"],
            _preload_content=_preload_content, _request_timeout=REQUEST_TIMEOUT,
        )  # fmt: skip
