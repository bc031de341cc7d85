"""The Secrets the operator reads, in memory: filled by a paged LIST, kept current by the Secret watch.

Why not kopf's index: every change to a kopf index toggles kopf's index
readiness, and every resource's first listing waits for the Secrets to be
indexed; at start-up that is quadratic in the number of Secrets (2,000
accounts and Secrets took minutes). Here the account handlers wait once for
one listing (``wait_filled``), and an event costs a dictionary update.

Memory: only the keys the operator reads (``SECRET_KEYS``), decoded. A Secret
with none of them (a Helm release, a TLS certificate) is kept as one shared
empty mapping: it exists, so an account pointing at it reports ``KeyMissing``,
not ``SecretNotFound``.

Order: the listing and the watch race while the cache fills. The watch stream
of one Secret is ordered and ends at its latest state, whereas a listed copy
may be older than an event already applied; so a listed copy never replaces
what an event has set (or deleted) since the cache was created.

Versions: each Secret's ``resourceVersion`` as last applied is kept beside its
values, so the periodic resync (``secret_resync``) can tell from a
metadata-only listing which Secrets changed without the cache hearing of it
(a lost watch event), and read only those. It costs a tuple and a short string
per Secret (about 1 MB for 10,000).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from .credentials import SecretValues, secret_values
from .paging import listed

log = logging.getLogger(__name__)

PAGE_SIZE = 500
"""Secrets per LIST page: bounds the transient memory of a page (Helm release Secrets can be large)."""

EMPTY: SecretValues = MappingProxyType({})


class Known(NamedTuple):
    """One Secret as the cache has it."""

    values: SecretValues
    version: str | None  # its resourceVersion then (None if whoever told the cache did not say)


class SecretCache:
    """(namespace, name) -> the Secret's relevant keys, decoded; ``lookup`` is a ``SecretLookup``."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, Known]] = {}
        self._touched: set[tuple[str, str]] | None = set()  # keys events set while filling; None once filled
        self._filled = asyncio.Event()
        self._waiting_logged = False

    def lookup(self, namespace: str, name: str) -> SecretValues | None:
        """The Secret's relevant keys (empty if it has none), or None if there is no such Secret."""
        known = self._by_namespace.get(namespace, {}).get(name)
        return known.values if known is not None else None

    def version(self, namespace: str, name: str) -> str | None:
        """The ``resourceVersion`` the cache's copy of the Secret is from; None if unknown or no such Secret."""
        known = self._by_namespace.get(namespace, {}).get(name)
        return known.version if known is not None else None

    def known(self) -> Iterator[tuple[str, str]]:
        """Every Secret the cache has, as (namespace, name)."""
        for namespace, names in self._by_namespace.items():
            for name in names:
                yield namespace, name

    def __len__(self) -> int:
        return sum(len(names) for names in self._by_namespace.values())

    @property
    def filled(self) -> bool:
        return self._touched is None

    def update(self, namespace: str, name: str, data: Mapping[str, str] | None, version: str | None = None) -> bool:
        """A Secret as a watch event (or a fresh read) has it (``data`` as the apiserver returns it, ``version`` its
        ``resourceVersion``); True if its values changed."""
        self._touch(namespace, name)
        return self._store(namespace, name, data, version)

    def remove(self, namespace: str, name: str) -> bool:
        """A Secret deleted; True if it was known."""
        self._touch(namespace, name)
        names = self._by_namespace.get(namespace)
        if names is None or names.pop(name, None) is None:
            return False
        if not names:
            del self._by_namespace[namespace]
        return True

    def add_listed(self, namespace: str, name: str, data: Mapping[str, str] | None, version: str | None = None) -> None:
        """A Secret from the start-up listing, unless an event has spoken for it already."""
        if self._touched is not None and (namespace, name) in self._touched:
            return
        self._store(namespace, name, data, version)

    def mark_filled(self) -> None:
        """The listing is complete: lookups are now authoritative."""
        self._touched = None
        self._filled.set()

    async def wait_filled(self, timeout: float) -> bool:
        """Wait until the listing is complete; False after ``timeout`` seconds. The first waiter says so in the log."""
        if self.filled:
            return True
        if not self._waiting_logged:
            self._waiting_logged = True
            log.info("SmtpAccount handlers wait for the start-up listing of Secrets")
        try:
            await asyncio.wait_for(self._filled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _touch(self, namespace: str, name: str) -> None:
        if self._touched is not None:
            self._touched.add((namespace, name))

    def _store(self, namespace: str, name: str, data: Mapping[str, str] | None, version: str | None) -> bool:
        values: SecretValues = secret_values(data) or EMPTY
        names = self._by_namespace.setdefault(namespace, {})
        before = names.get(name)
        names[name] = Known(values, version)
        return before is None or before.values != values


async def fill(cache: SecretCache, api_client: ApiClient, namespaces: tuple[str, ...], page_size: int = PAGE_SIZE) -> None:
    """List the Secrets of ``namespaces`` (all if empty) into ``cache``, retrying until it succeeds, then mark it filled."""
    delay = 0.5
    while True:
        try:
            count = 0
            for namespace in namespaces or (None,):
                async for item in _list_secrets(CoreV1Api(api_client), namespace, page_size):
                    meta = item["metadata"]
                    cache.add_listed(meta["namespace"], meta["name"], item.get("data"), meta.get("resourceVersion"))
                    count += 1
            break
        except (ApiException, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            what = f"HTTP {error.status} {error.reason}" if isinstance(error, ApiException) else type(error).__name__
            log.warning("listing Secrets failed (%s); again in %.1fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    cache.mark_filled()
    log.info("listed %d Secrets; SmtpAccount handlers proceed", count)


def _list_secrets(api: CoreV1Api, namespace: str | None, page_size: int) -> AsyncIterator[dict[str, Any]]:
    """Secrets as raw JSON, a page at a time."""
    if namespace is None:
        return listed(api.list_secret_for_all_namespaces, page_size)
    return listed(functools.partial(api.list_namespaced_secret, namespace), page_size)
