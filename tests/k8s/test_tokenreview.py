"""ServiceAccount tokens checked by a real apiserver's TokenReview, as the gateway does in cluster."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailgate.gateway.tokenreview import TokenReviewAuthenticator, kubernetes_api_client
from mailgate.relay.identity import AccountRef
from mailgate.spec import AccessSpec
from tests.k8s.cluster import ControlPlane

GATEWAY_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: test-gateway-tokenreview}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: test-gateway-tokenreview-NS}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: test-gateway-tokenreview}
subjects:
- {kind: ServiceAccount, name: gateway, namespace: NS}
"""


def _gateway_kubeconfig(control_plane: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig holding only the gateway ServiceAccount's token: the review runs with its RBAC."""
    control_plane.create_service_account(namespace, "gateway")
    control_plane.apply(GATEWAY_RBAC.replace("NS", namespace))
    return control_plane.service_account_kubeconfig(namespace, "gateway", path)


@pytest.fixture
async def authenticator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> AsyncIterator[TokenReviewAuthenticator]:
    api = await kubernetes_api_client(str(_gateway_kubeconfig(control_plane, namespace, tmp_path / "kubeconfig")))
    async with api:
        yield TokenReviewAuthenticator(api, ttl=0, negative_ttl=0)


def _account(*, service_accounts: Sequence[str] = (), namespaces: Sequence[str] = ()) -> AccountRef:
    access = AccessSpec(service_accounts=list(service_accounts), namespaces=list(namespaces))
    return AccountRef(namespace="shop", name="billing", access=access)


async def test_allowed_service_account_is_identified_and_authorised(
    control_plane: ControlPlane, namespace: str, authenticator: TokenReviewAuthenticator
) -> None:
    control_plane.create_service_account(namespace, "checkout")
    identity = await authenticator.identify(control_plane.token(namespace, "checkout"))
    assert identity is not None
    assert identity.name == f"system:serviceaccount:{namespace}:checkout"
    assert identity.may_use(_account(service_accounts=[f"{namespace}/checkout"]))
    assert identity.may_use(_account(namespaces=[namespace]))
    assert not identity.may_use(_account(service_accounts=[f"{namespace}/other"]))
    assert not identity.may_use(_account())


async def test_garbage_and_wrong_audience_tokens_are_not_authenticated(
    control_plane: ControlPlane, namespace: str, authenticator: TokenReviewAuthenticator
) -> None:
    control_plane.create_service_account(namespace, "checkout")
    assert await authenticator.identify("not-a-token") is None
    assert await authenticator.identify(control_plane.token(namespace, "checkout", audience="vault")) is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_expired_token_is_not_authenticated(
    control_plane: ControlPlane, namespace: str, authenticator: TokenReviewAuthenticator
) -> None:
    """A real token re-signed by the cluster's own key with its expiry in the past."""
    control_plane.create_service_account(namespace, "checkout")
    header, claims, _ = control_plane.token(namespace, "checkout").split(".")
    payload = json.loads(_unb64(claims))
    payload["iat"] = payload["nbf"] = int(time.time()) - 7200
    payload["exp"] = int(time.time()) - 3600
    signing_input = f"{header}.{_b64(json.dumps(payload).encode())}".encode()
    key = serialization.load_pem_private_key((control_plane.workdir / "sa.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    expired = f"{signing_input.decode()}.{_b64(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))}"
    # The same re-signing with a fresh expiry is accepted, so the refusal is about the expiry.
    payload["exp"] = int(time.time()) + 600
    fresh_input = f"{header}.{_b64(json.dumps(payload).encode())}".encode()
    fresh = f"{fresh_input.decode()}.{_b64(key.sign(fresh_input, padding.PKCS1v15(), hashes.SHA256()))}"
    assert await authenticator.identify(fresh) is not None
    assert await authenticator.identify(expired) is None


async def test_deleted_service_account_token_stops_working(
    control_plane: ControlPlane, namespace: str, authenticator: TokenReviewAuthenticator
) -> None:
    control_plane.create_service_account(namespace, "leaver")
    token = control_plane.token(namespace, "leaver")
    assert await authenticator.identify(token) is not None
    control_plane.kubectl("delete", "serviceaccount", "leaver", "-n", namespace)
    # The apiserver looks ServiceAccounts up through its informer cache: wait for it to see the delete.
    deadline = time.monotonic() + 15
    while await authenticator.identify(token) is not None:
        assert time.monotonic() < deadline, "token of a deleted ServiceAccount still authenticated"
        await asyncio.sleep(0.2)


async def test_verdicts_are_cached_and_the_cache_is_bounded(
    control_plane: ControlPlane, namespace: str, authenticator: TokenReviewAuthenticator
) -> None:
    control_plane.create_service_account(namespace, "checkout")
    token = control_plane.token(namespace, "checkout")
    authenticator.ttl, authenticator.max_entries = 60, 2
    for _ in range(3):
        assert await authenticator.identify(token) is not None
    assert authenticator.reviews == 1
    for i in range(3):
        await authenticator.identify(f"garbage-{i}")
    assert authenticator.reviews == 4
    assert len(authenticator._cache) <= 2
