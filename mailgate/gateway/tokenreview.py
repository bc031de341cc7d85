"""In-cluster callers: Kubernetes ServiceAccount tokens checked with a TokenReview.

Callers send their projected token (audience ``mailgate``) as a bearer token.
The apiserver is the only judge of a token (signature, expiry, audience,
whether the ServiceAccount and the bound pod still exist), so the gateway
asks it with a TokenReview rather than verifying JWTs itself.

A TokenReview is a round trip to the apiserver, so verdicts are cached: for
``ttl`` seconds (positive) or ``negative_ttl`` seconds (negative), at most
``max_entries`` tokens, keyed by a SHA-256 of the token so the cache never
holds a usable credential. Concurrent requests with the same token share one
review. The consequence, documented in docs/security.md: a revoked token
(deleted ServiceAccount) keeps working for at most ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web
from kubernetes_asyncio import client as k8s

from ..relay.identity import Identity
from .auth import bearer_token

log = logging.getLogger("mailgate.gateway.tokenreview")

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass
class _Verdict:
    identity: Identity | None
    expires: float


class TokenReviewAuthenticator:
    """An ``Authenticator`` for ServiceAccount tokens, with a bounded verdict cache."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        audience: str = "mailgate",
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10000,
    ) -> None:
        self._api = k8s.AuthenticationV1Api(api_client)
        self.audience = audience
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, _Verdict] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Identity | None]] = {}
        self.reviews = 0  # how many TokenReviews were sent (for metrics and tests)

    async def authenticate(self, request: web.Request) -> Identity | None:
        token = bearer_token(request)
        if token is None:
            return None
        return await self.identify(token)

    async def identify(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        verdict = self._cache.get(key)
        if verdict is not None and verdict.expires > now:
            self._cache.move_to_end(key)
            return verdict.identity
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            identity = await self._review(token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(identity)
        self._remember(key, identity)
        return identity

    async def _review(self, token: str) -> Identity | None:
        """One TokenReview; API errors propagate (the gateway answers 503, never a false 401)."""
        self.reviews += 1
        body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        review = await self._api.create_token_review(body)
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        if self.audience not in (status.audiences or []):
            return None
        username = status.user.username or ""
        if not username.startswith(SERVICE_ACCOUNT_PREFIX):
            log.info("refusing a non-ServiceAccount identity %s", username)
            return None
        namespace, _, name = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        if not namespace or not name:
            return None
        return Identity.service_account(namespace, name)

    def _remember(self, key: str, identity: Identity | None) -> None:
        ttl = self.ttl if identity is not None else self.negative_ttl
        if ttl <= 0:
            return
        self._cache[key] = _Verdict(identity, time.monotonic() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


async def kubernetes_api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """An API client from a kubeconfig file, else the pod's in-cluster ServiceAccount."""
    from kubernetes_asyncio import config

    # kubernetes_asyncio logs every response body at DEBUG, and a TokenReview's echoes the caller's token.
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
    else:
        config.load_incluster_config()
    return k8s.ApiClient()
