"""Gateway pod discovery: a list-and-watch of Pods in the gateway namespace, by label selector.

Why not a kopf handler on Pods: kopf watches every resource in the same set
of namespaces, so a cluster-wide operator would watch all Pods of the
cluster (and need RBAC for them) to find a handful of gateways. This watch is
namespaced and filtered by the apiserver, and needs only list/watch on Pods
in the gateway namespace. It re-lists every few minutes and after any error,
so a missed event heals itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from .engine import PodInfo

log = logging.getLogger(__name__)

WATCH_SECONDS = 240
MAX_BACKOFF = 30.0


def pod_info(pod: dict[str, Any]) -> PodInfo:
    """The fields of a Pod (as JSON) that decide whether and where it gets configuration."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodInfo(
        uid=meta.get("uid", ""),
        name=meta.get("name", ""),
        ip=status.get("podIP") or None,
        running=status.get("phase") == "Running",
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
    )


class PodWatcher:
    """Reports the full list of gateway pods to ``on_change`` after every change."""

    def __init__(
        self, api_client: ApiClient, namespace: str, selector: str, on_change: Callable[[Iterable[PodInfo]], None]
    ) -> None:
        self._client = api_client
        self._api = CoreV1Api(api_client)
        self._namespace = namespace
        self._selector = selector
        self._on_change = on_change

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._list_and_watch()
                failures = 0
            except (ApiException, aiohttp.ClientError, TimeoutError, ValueError) as error:
                failures += 1
                delay = min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1))
                log.warning("watching gateway pods failed (%s); again in %.1fs", _describe(error), delay)
                await asyncio.sleep(delay)

    async def _list_and_watch(self) -> None:
        listing = await self._api.list_namespaced_pod(self._namespace, label_selector=self._selector)
        raw = [self._client.sanitize_for_serialization(pod) for pod in listing.items]
        pods = {info.uid: info for info in map(pod_info, raw)}
        self._on_change(list(pods.values()))
        version = listing.metadata.resource_version if listing.metadata is not None else None
        stream = watch.Watch()
        async with stream:
            async for event in stream.stream(
                self._api.list_namespaced_pod, self._namespace, label_selector=self._selector,
                resource_version=version, timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
            ):  # fmt: skip
                kind = event["type"]
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                info = pod_info(event["raw_object"])
                if kind == "DELETED":
                    pods.pop(info.uid, None)
                else:
                    pods[info.uid] = info
                self._on_change(list(pods.values()))


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return type(error).__name__
