"""The Secret part of the periodic resync: a Secret change whose watch event never came reaches the gateways anyway.

Real parts: the session's kube-apiserver, gateways and the engine in this process (``test_engine.cluster``),
the test token endpoint. The resync runs without kopf, so nothing watches Secrets: every change the test
makes through the API is an event the operator never gets, which is the case at hand, made without
stubbing the API. "The event came late" is played by calling the Secret handler's own code with a fresh
read, as kopf would.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes_asyncio.config
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from mailgate.operator.bookkeeping import SpecDiffBase
from mailgate.operator.handlers import FINALIZER, apply_account, apply_secret
from mailgate.operator.resync import AccountResync
from mailgate.operator.secret_resync import SecretResync
from mailgate.operator.secrets import SecretCache, fill
from tests.k8s.cluster import ControlPlane
from tests.k8s.operator import test_engine
from tests.k8s.operator.harness import object_path
from tests.k8s.operator.test_engine import Cluster, until
from tests.oauth2_server import TokenServer

cluster = test_engine.cluster  # the fixture: an Engine pushing to in-process gateways

MAILBOX = "alerts@shop.example"


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=600) as server:  # no scheduled renewal during a test: a new token means new credentials
        yield server


@dataclass
class World:
    """The apiserver side, and the operator's side without kopf."""

    cp: ControlPlane
    namespace: str
    cluster: Cluster
    memo: kopf.Memo
    resync: AccountResync

    def secret(self, name: str, data: dict[str, str]) -> None:
        """Create or replace a Secret's data (a rotation is one update)."""
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.namespace}}
        code, answer = self.cp.request("POST", self._path("secrets"), {**body, "stringData": data})
        if code == 409:
            code, answer = self.cp.request("PATCH", self._path("secrets", name), {"data": None, "stringData": data})
        assert code in (200, 201), answer

    def delete_secret(self, name: str) -> None:
        assert self.cp.request("DELETE", self._path("secrets", name))[0] == 200

    async def account(self, name: str, spec: dict[str, Any]) -> str:
        """Create the SmtpAccount (with our finalizer: kopf would have added it) and reconcile it as kopf's handler would."""
        body = {"apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount",
                "metadata": {"name": name, "namespace": self.namespace, "finalizers": [FINALIZER]}, "spec": spec}  # fmt: skip
        code, created = self.cp.request("POST", self._path("smtpaccounts"), body)
        assert code == 201, created
        await apply_account(created, "create", self.memo)
        return f"{self.namespace}/{name}"

    def _path(self, kind: str, name: str = "") -> str:
        return object_path(self.namespace, kind, name)

    def served(self, key: str) -> Any:
        """The account's configuration on the one gateway (None if it serves none)."""
        account = self.cluster.gateways["gw-1"].registry.get(key)
        return account.config if account is not None else None

    def password(self, key: str) -> str | None:
        config = self.served(key)
        password = config.credentials.password if config is not None else None
        return password.get_secret_value() if password is not None else None

    def token(self, key: str) -> str | None:
        config = self.served(key)
        token = config.credentials.token if config is not None else None
        return token.get_secret_value() if token is not None else None

    def problem(self, key: str) -> str | None:
        inputs = self.cluster.engine.status_inputs(key)
        assert inputs is not None
        return inputs.problem.reason if inputs.problem is not None else None

    def metric(self, name: str, **labels: str) -> float:
        return self.cluster.metrics.registry.get_sample_value(name, labels) or 0.0


def login_spec(secret: str, domain: str) -> dict[str, Any]:
    return {"server": {"host": "127.0.0.1", "port": 2525, "tls": "none"},
            "auth": {"method": "login", "secretRef": {"name": secret}}, "senders": [f"*@{domain}"]}  # fmt: skip


def oauth2_spec(secret: str, server: TokenServer) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 2525, "tls": "starttls"},
        "auth": {"method": "oauth2", "secretRef": {"name": secret},
                 "oauth2": {"provider": "microsoft", "tenantId": "contoso", "clientId": "app", "mailbox": MAILBOX,
                            "tokenUrl": server.token_url("contoso")}},
        "senders": [MAILBOX],
    }  # fmt: skip


@pytest.fixture
async def world(control_plane: ControlPlane, namespace: str, cluster: Cluster) -> AsyncIterator[World]:
    configuration = Configuration()
    await kubernetes_asyncio.config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    async with ApiClient(configuration) as api_client:
        secrets = SecretCache()
        memo = kopf.Memo(engine=cluster.engine, metrics=cluster.metrics, secrets=secrets, diffbase=SpecDiffBase())
        resync = AccountResync(api_client, (namespace,), 300, memo, page_size=2)
        world = World(control_plane, namespace, cluster, memo, resync)
        world.secret("unread", {"config.yaml": "a: 1"})  # in the namespace, read by no account
        await fill(secrets, api_client, (namespace,))
        await cluster.add("gw-1", 1)
        yield world


async def test_secret_changes_the_watch_missed_reach_the_gateways_after_two_passes(
    world: World, token_server: TokenServer
) -> None:
    token_server.add_client("app", secret="SENTINEL-first-client-secret", mailboxes=[MAILBOX])
    world.secret("mail-smtp", {"username": "app", "password": "SENTINEL-old-password"})
    world.secret("alerts-oauth2", {"clientSecret": "SENTINEL-first-client-secret"})
    world.secret("doomed-smtp", {"username": "app", "password": "pw"})
    world.secret("late-smtp", {"username": "app", "password": "SENTINEL-late-old"})
    for name in ("mail-smtp", "alerts-oauth2", "doomed-smtp", "late-smtp"):  # as the watch would have brought them
        code, body = world.cp.request("GET", f"/api/v1/namespaces/{world.namespace}/secrets/{name}")
        assert code == 200, body
        await apply_secret(world.namespace, name, body, "secret", world.memo)
    mail = await world.account("mail", login_spec("mail-smtp", "mail.example"))
    alerts = await world.account("alerts", oauth2_spec("alerts-oauth2", token_server))
    doomed = await world.account("doomed", login_spec("doomed-smtp", "doomed.example"))
    late = await world.account("late", login_spec("late-smtp", "late.example"))
    await until(lambda: world.password(mail) == "SENTINEL-old-password", "the first password on the gateway")
    await until(lambda: world.token(alerts) in token_server.issued(), "the first token on the gateway")
    await until(lambda: world.served(doomed) and world.served(late), "every account on the gateway")
    assert (await world.resync.run_once()).secret == []  # nothing missed

    # Changes nobody watched: a rotation of each kind, a deletion, and a Secret nobody reads.
    token_server.set_client_secret("app", "SENTINEL-rotated-client-secret")
    tokens_before = len(token_server.issued())
    world.secret("mail-smtp", {"username": "app", "password": "SENTINEL-new-password"})
    world.secret("alerts-oauth2", {"clientSecret": "SENTINEL-rotated-client-secret"})
    world.delete_secret("doomed-smtp")
    world.secret("late-smtp", {"username": "app", "password": "SENTINEL-late-new"})
    world.secret("unread", {"config.yaml": "a: 2"})

    first = await world.resync.run_once()
    assert first.secret == [] and first.accounts() == set()  # behind once may be an event on its way: left alone
    assert world.password(mail) == "SENTINEL-old-password"
    # The late event arrives between the passes, through the handler's code: the resync must not apply it again.
    code, body = world.cp.request("GET", f"/api/v1/namespaces/{world.namespace}/secrets/late-smtp")
    assert code == 200, body
    await apply_secret(world.namespace, "late-smtp", body, "secret", world.memo)
    await until(lambda: world.password(late) == "SENTINEL-late-new", "the late event's password on the gateway")

    second = await world.resync.run_once()
    namespace = world.namespace
    assert second.secret == [f"{namespace}/alerts-oauth2", f"{namespace}/doomed-smtp", f"{namespace}/mail-smtp"]
    assert second.accounts() == set()
    await until(lambda: world.password(mail) == "SENTINEL-new-password", "the new password on the gateway")
    await until(lambda: len(token_server.issued()) > tokens_before, "a token issued with the rotated client secret")
    await until(lambda: world.token(alerts) == token_server.issued()[-1], "the new token on the gateway")
    assert token_server.count("refused") == 0
    assert world.problem(doomed) == "SecretNotFound"
    assert world.problem(mail) is None and world.problem(alerts) is None
    assert world.metric("mailgate_operator_account_resync_repairs_total", kind="secret") == 3
    assert world.metric("mailgate_operator_reconciles_total", trigger="resync", result="ok") == 3  # handler's code

    # Repaired once: the following passes find nothing and push nothing.
    revision = world.cluster.gateways["gw-1"].registry.revision
    pushes = world.metric("mailgate_operator_push_duration_seconds_count", kind="account")
    for _ in range(2):
        assert (await world.resync.run_once()).secret == []
    assert world.cluster.gateways["gw-1"].registry.revision == revision
    assert world.metric("mailgate_operator_push_duration_seconds_count", kind="account") == pushes
    assert world.metric("mailgate_operator_account_resync_repairs_total", kind="secret") == 3


async def test_a_secret_created_unseen_after_its_account_resolves_the_account(world: World) -> None:
    key = await world.account("early", login_spec("early-smtp", "early.example"))
    assert world.problem(key) == "SecretNotFound"
    world.secret("early-smtp", {"username": "app", "password": "SENTINEL-created"})  # its ADDED event is lost
    assert (await world.resync.run_once()).secret == []
    assert (await world.resync.run_once()).secret == [f"{world.namespace}/early-smtp"]
    await until(lambda: world.password(key) == "SENTINEL-created", "the account served with the new Secret")
    assert world.problem(key) is None


async def test_a_pass_lists_secrets_without_their_values(world: World) -> None:
    """The listing is metadata only: values travel only in the read of a Secret found behind twice."""
    large = base64.b64encode(b"x" * 200_000).decode()  # what a Helm release Secret looks like
    for index in range(3):
        code, answer = world.cp.request("POST", world._path("secrets"), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"helm-{index}", "namespace": world.namespace},
            "data": {"release": large},
        })  # fmt: skip
        assert code == 201, answer
    secret_resync = SecretResync(world.resync._api_client, (world.namespace,), world.memo, page_size=2)
    items = [item async for item in secret_resync._items()]
    assert {item["metadata"]["name"] for item in items} == {"unread", "helm-0", "helm-1", "helm-2"}
    assert all("data" not in item and item["metadata"]["resourceVersion"] for item in items)


async def test_a_missed_change_of_other_keys_only_catches_the_version_up_and_pushes_nothing(world: World) -> None:
    world.secret("quiet-smtp", {"username": "app", "password": "SENTINEL-quiet"})
    code, body = world.cp.request("GET", world._path("secrets", "quiet-smtp"))
    assert code == 200, body
    await apply_secret(world.namespace, "quiet-smtp", body, "secret", world.memo)  # as the watch brought it
    key = await world.account("quiet", login_spec("quiet-smtp", "quiet.example"))
    await until(lambda: world.password(key) == "SENTINEL-quiet", "the account on the gateway")
    revision = world.cluster.gateways["gw-1"].registry.revision
    code, answer = world.cp.request("PATCH", world._path("secrets", "quiet-smtp"), {"metadata": {"labels": {"team": "a"}}})
    assert code == 200, answer

    assert (await world.resync.run_once()).secret == []
    assert (await world.resync.run_once()).secret == [f"{world.namespace}/quiet-smtp"]  # the watch did miss an event
    assert (await world.resync.run_once()).secret == []
    assert world.cluster.gateways["gw-1"].registry.revision == revision
    assert world.metric("mailgate_operator_reconciles_total", trigger="resync", result="ok") == 0
