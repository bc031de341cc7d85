"""Leader election on a coordination.k8s.io Lease: one active operator replica, the others stand by.

Why not kopf peering: a paused kopf operator stops its handlers, but not the
push loops and the Pod watch that run beside them; a paused replica would go
on pushing a stale view to the gateways. Here a replica that is not the
leader runs no kopf and no push loop at all, and a leader that fails to
renew its Lease in time stops (the process exits, Kubernetes restarts it as a
standby), the usual client-go contract.

Expiry is judged by this replica's own monotonic clock (how long the record
has stayed unchanged), never by comparing another host's timestamps, so
clock skew between nodes does not matter. A leader that shuts down cleanly
releases the Lease, and a standby takes over within ``retry_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


class LeaseElector:
    """Acquire, keep and release one Lease for ``identity``."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_deadline: float = 10.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self._api = CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_seconds = retry_seconds
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        announced = False
        while not await self._try():
            if not announced:
                log.info("standing by: Lease %s/%s is held by another replica", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.retry_seconds)
        log.info("leading: acquired Lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def hold(self) -> None:
        """Renew the Lease; return when it could not be renewed within the deadline (leadership lost)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_seconds)
            if await self._try():
                renewed = time.monotonic()
            elif time.monotonic() - renewed > self.renew_deadline:
                log.error("lost Lease %s/%s: not renewed for %.0fs", self.namespace, self.name, self.renew_deadline)
                return

    async def release(self) -> None:
        """Hand the Lease back so that a standby takes over at once (best effort)."""
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("released Lease %s/%s", self.namespace, self.name)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, type(error).__name__)

    async def _try(self) -> bool:
        """One acquire-or-renew attempt; any API failure counts as "not now"."""
        try:
            return await self._attempt()
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            if not isinstance(error, ApiException) or error.status != 409:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, _describe(error))
            return False

    async def _attempt(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            await self._api.create_namespaced_lease(
                self.namespace,
                V1Lease(
                    metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=self._spec(now, acquired=now, transitions=0),
                ),
            )
            return True
        spec = lease.spec or V1LeaseSpec()
        if spec.holder_identity == self.identity:
            spec.renew_time = now
            spec.lease_duration_seconds = self.lease_seconds
            await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = spec.lease_duration_seconds or self.lease_seconds
        if spec.holder_identity and time.monotonic() - self._observed_at < duration:
            return False
        lease.spec = self._spec(now, acquired=now, transitions=(spec.lease_transitions or 0) + 1)
        await self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        return True

    def _spec(self, now: datetime, *, acquired: datetime, transitions: int) -> V1LeaseSpec:
        return V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired,
            renew_time=now,
            lease_transitions=transitions,
        )


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return type(error).__name__
