"""Secrets that exist before the operator starts: listed in pages before any account is resolved.

The start-up race this guards against: kopf hands over the SmtpAccounts while
the Secrets are still being listed, and an account whose Secret is not listed
yet would report ``SecretNotFound`` (a Warning Event, a False condition)
although the Secret exists. Large Helm release Secrets make the listing take
a while, as they do in a real namespace.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes_asyncio.config
from kubernetes_asyncio.client import ApiClient, Configuration

from mailgate.operator.secrets import EMPTY, SecretCache, fill
from tests.k8s.cluster import ControlPlane
from tests.k8s.operator.harness import Mesh, eventually

ACCOUNTS = 300
HELM_RELEASES = 25
OPAQUE = 25


def create_all(cp: ControlPlane, path: str, bodies: list[dict[str, Any]]) -> None:
    def create(body: dict[str, Any]) -> None:
        code, answer = cp.request("POST", path, body, timeout=30)
        assert code == 201, answer

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, bodies))


def secret(namespace: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, **extra}


def irrelevant_secrets(namespace: str) -> list[dict[str, Any]]:
    """Helm release Secrets (large, none of the keys the operator reads) and Opaque ones with other keys."""
    release = base64.b64encode(os.urandom(300_000)).decode()  # what a gzipped release record looks like
    helm = [
        secret(namespace, f"sh.helm.release.v1.app-{index}.v1", type="helm.sh/release.v1", data={"release": release})
        for index in range(HELM_RELEASES)
    ]
    opaque = [secret(namespace, f"config-{index}", stringData={"config.yaml": "a: 1"}) for index in range(OPAQUE)]
    return helm + opaque


def test_accounts_whose_secrets_exist_before_the_operator_starts_never_see_secret_not_found(
    mesh: Mesh, upstream_factory
) -> None:
    upstream = upstream_factory()
    gateway = mesh.gateway("gw-1", index=1)
    names = [f"pre-{index}" for index in range(ACCOUNTS)]
    create_all(mesh.cp, mesh._path("secrets"), irrelevant_secrets(mesh.namespace))
    create_all(mesh.cp, mesh._path("secrets"), [
        secret(mesh.namespace, f"{name}-smtp", stringData={"username": name, "password": "pw"}) for name in names
    ])  # fmt: skip
    create_all(mesh.cp, mesh._path("smtpaccounts"), [mesh.account_body(name, upstream) for name in names])
    mesh.apply_account("misdirected", upstream, auth={"method": "login", "secretRef": {"name": "config-0"}})

    mesh.operator()
    eventually(lambda: len(gateway.status()["accounts"]) >= ACCOUNTS, f"the gateway serving {ACCOUNTS} accounts", 180)
    assert set(gateway.status()["accounts"]) == {f"{mesh.namespace}/{name}" for name in names}
    condition = mesh.wait_condition("misdirected", "CredentialsResolved", "False", "KeyMissing")
    assert f"Secret {mesh.namespace}/config-0 has no key 'username'" in condition["message"]

    # kopf posts Events in order: once this one is there, any earlier SecretNotFound would be too.
    mesh.delete("secrets", "pre-0-smtp")
    mesh.wait_condition("pre-0", "CredentialsResolved", "False", "SecretNotFound")
    eventually(lambda: not_found_events(mesh), "the SecretNotFound Event of pre-0")
    assert not_found_events(mesh) == {"pre-0"}


def not_found_events(mesh: Mesh) -> set[str]:
    code, body = mesh.cp.request(
        "GET", f"/api/v1/namespaces/{mesh.namespace}/events?fieldSelector=reason%3DSecretNotFound", timeout=30
    )
    assert code == 200, body
    return {event["involvedObject"]["name"] for event in body["items"]}


async def test_the_listing_pages_through_every_namespace_it_is_given(control_plane: ControlPlane, namespace: str) -> None:
    other = f"{namespace}-b"
    control_plane.create_namespace(other)
    try:
        create_all(control_plane, f"/api/v1/namespaces/{namespace}/secrets", [
            secret(namespace, f"s-{index}", stringData={"username": f"u{index}", "password": "pw"}) for index in range(23)
        ])  # fmt: skip
        create_all(control_plane, f"/api/v1/namespaces/{other}/secrets", irrelevant_secrets(other)[-3:])
        configuration = Configuration()
        await kubernetes_asyncio.config.load_kube_config(
            config_file=str(control_plane.kubeconfig), client_configuration=configuration
        )
        async with ApiClient(configuration) as api_client:
            namespaced = SecretCache()
            await fill(namespaced, api_client, (namespace, other), page_size=5)
            everywhere = SecretCache()
            await fill(everywhere, api_client, (), page_size=5)
    finally:
        control_plane.delete_namespace(other, wait=False)

    for cache in (namespaced, everywhere):
        assert cache.filled
        assert all(cache.lookup(namespace, f"s-{index}") == {"username": f"u{index}", "password": "pw"} for index in range(23))
        assert all(cache.lookup(other, f"config-{index}") is EMPTY for index in range(OPAQUE - 3, OPAQUE))
    assert len(namespaced) == 26
    assert len(everywhere) >= 26
