"""The periodic account resync (issue 13): SmtpAccounts the operator never handled end up served anyway.

Real parts: the session's kube-apiserver, gateway processes, aiosmtpd upstreams and the
operator as a process. What a lost watch event or a timed-out PATCH leaves behind is made
with the API alone, never by stubbing it:

- "kopf believes it handled the account, the engine never saw it": the object arrives
  carrying kopf's own progress record (``operator.mailgate.dev/<handler id>``, see
  ``bookkeeping.RetryProgress``) saying the handler already succeeded. kopf reads it, skips
  the handler, stores its diff base and purges the record: exactly the state a handler run
  whose outcome was lost leaves. The same with a spec change: the engine stays at the old
  generation.
- "the object is gone and nobody told the engine": with the operator frozen (SIGSTOP), the
  finalizer is removed and the object deleted, so kopf sees only a DELETED event for an
  object without its finalizer, on which no delete handler runs.

The last test runs the resync in this process, without kopf, against the same apiserver:
accounts nobody gave the finalizer (kopf adds it only on an event for the object, so with
kopf running it cannot be made to miss one), paging, and the passes it waits for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import kubernetes_asyncio.config
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from mailgate.operator.admin import AdminClient
from mailgate.operator.bookkeeping import SpecDiffBase
from mailgate.operator.engine import Engine
from mailgate.operator.handlers import ANNOTATION_PREFIX, FINALIZER
from mailgate.operator.main import account_resync_seconds
from mailgate.operator.metrics import OperatorMetrics
from mailgate.operator.resync import AccountResync
from mailgate.operator.secrets import SecretCache, fill
from tests.k8s.cluster import ControlPlane
from tests.k8s.operator.harness import Mesh, OperatorProcess, eventually

RESYNC = 2.0  # seconds between resyncs in these tests; production default: 300


@pytest.fixture(autouse=True)
def short_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness passes its own environment on to the operator process."""
    monkeypatch.setenv("MAILGATE_ACCOUNT_RESYNC_SECONDS", str(RESYNC))


def handled_record(purpose: str) -> str:
    """kopf's progress record of a handler that succeeded, as kopf itself writes it."""
    return json.dumps(
        {"started": "2026-01-01T00:00:00.000000+00:00", "stopped": "2026-01-01T00:00:00.100000+00:00",
         "purpose": purpose, "retries": 1, "success": True},
        separators=(",", ":"),
    )  # fmt: skip


def kopf_record_purged(mesh: Mesh, name: str) -> bool:
    annotations = (mesh.account(name) or {}).get("metadata", {}).get("annotations") or {}
    return not any(key.startswith(f"{ANNOTATION_PREFIX}/") for key in annotations)


def resyncs(operator: OperatorProcess) -> float:
    return operator.metric("mailgate_operator_account_resyncs_total", result="ok")


def wait_resyncs(operator: OperatorProcess, count: int) -> None:
    """Until ``count`` more resync passes have completed."""
    target = resyncs(operator) + count
    eventually(lambda: resyncs(operator) >= target, f"{count} resync pass(es)", timeout=count * RESYNC + 20)


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """Pids a test stopped with SIGSTOP; continued at the end whatever happens, so they can be stopped cleanly."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def test_an_account_kopf_believes_handled_is_served_within_one_resync(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    mesh.secret("lost-smtp", {"username": "app", "password": "pw"})
    body: dict[str, Any] = mesh.account_body("lost", upstream)
    body["metadata"]["finalizers"] = [FINALIZER]
    body["metadata"]["annotations"] = {f"{ANNOTATION_PREFIX}/reconcile": handled_record("create")}
    code, answer = mesh.cp.request("POST", f"/apis/mailgate.dev/v1alpha1/namespaces/{mesh.namespace}/smtpaccounts", body)
    assert code == 201, answer
    key = f"{mesh.namespace}/lost"

    eventually(lambda: kopf_record_purged(mesh, "lost"), "kopf to take the record as done and purge it")
    mesh.wait_served(key, lambda report: report["generation"] == 1, "the resync to push the account", timeout=RESYNC + 20)
    mesh.wait_condition("lost", "Ready", "True")
    assert operator.metric("mailgate_operator_account_resync_repairs_total", kind="missing") == 1
    assert operator.metric("mailgate_operator_reconciles_total", trigger="resync", result="ok") == 1
    assert "resync: repaired 1 account(s)" in operator.log
    code, sent = gateway.send(key)
    assert code == 200, sent


def test_a_spec_change_kopf_believes_handled_is_served_within_one_resync(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    mesh.secret("stale-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("stale", upstream, pool={"maxConnections": 2})
    key = f"{mesh.namespace}/stale"
    mesh.wait_condition("stale", "Ready", "True")

    mesh.patch_account(
        "stale",
        {"metadata": {"annotations": {f"{ANNOTATION_PREFIX}/reconcile.spec": handled_record("update")}},
         "spec": {"pool": {"maxConnections": 5}}},
    )  # fmt: skip
    eventually(lambda: kopf_record_purged(mesh, "stale"), "kopf to take the record as done and purge it")
    mesh.wait_served(
        key, lambda report: report["generation"] == 2 and report["pool"]["maxConnections"] == 5,
        "the resync to push generation 2", timeout=RESYNC + 20,
    )  # fmt: skip
    mesh.wait_condition("stale", "Synced", "True", generation=2)
    assert operator.metric("mailgate_operator_account_resync_repairs_total", kind="stale") == 1


def test_an_account_whose_object_vanished_unseen_leaves_the_gateways(mesh: Mesh, upstream_factory, frozen: list[int]) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    for name in ("kept", "vanished"):
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
        mesh.apply_account(name, upstream)
    for name in ("kept", "vanished"):
        mesh.wait_condition(name, "Ready", "True")

    assert operator.proc is not None
    os.kill(operator.proc.pid, signal.SIGSTOP)
    frozen.append(operator.proc.pid)
    mesh.patch_account("vanished", {"metadata": {"finalizers": None}})
    mesh.delete("smtpaccounts", "vanished")
    assert mesh.account("vanished") is None  # gone at once: no finalizer held it
    os.kill(operator.proc.pid, signal.SIGCONT)
    frozen.remove(operator.proc.pid)

    key = f"{mesh.namespace}/vanished"
    eventually(lambda: gateway.account(key) is None, "the resync to take the account off the gateway", RESYNC + 20)
    assert gateway.account(f"{mesh.namespace}/kept") is not None
    assert operator.metric("mailgate_operator_account_resync_repairs_total", kind="gone") == 1
    assert operator.metric("mailgate_operator_accounts") == 1
    wait_resyncs(operator, 1)
    account_kinds = ("missing", "stale", "gone", "finalizer")  # a Secret event late on a loaded machine is not this test's
    repairs = sum(operator.metric("mailgate_operator_account_resync_repairs_total", kind=kind) for kind in account_kinds)
    assert repairs == 1  # repaired once, not every pass


def test_a_resync_with_nothing_missed_pushes_and_writes_nothing(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    names = [f"calm-{index}" for index in range(5)]
    for name in names:
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
        mesh.apply_account(name, upstream, senders=[f"*@{name}.example"])  # one sender each: no SenderConflict
    for name in names:
        mesh.wait_condition(name, "Ready", "True")
    wait_resyncs(operator, 1)  # settled: statuses written, every account seen by a resync

    revision = gateway.status()["revision"]
    pushes = operator.metric("mailgate_operator_push_duration_seconds_count")
    patches = operator.metric("mailgate_operator_status_patches_total")
    reconciles = operator.metric("mailgate_operator_reconciles_total")
    wait_resyncs(operator, 3)

    assert gateway.status()["revision"] == revision
    assert operator.metric("mailgate_operator_push_duration_seconds_count") == pushes
    assert operator.metric("mailgate_operator_status_patches_total") == patches
    assert operator.metric("mailgate_operator_reconciles_total") == reconciles
    assert operator.metric("mailgate_operator_account_resync_repairs_total") == 0
    assert operator.metric("mailgate_operator_account_resync_listed") == len(names)


def plain_account(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"server": {"host": "127.0.0.1", "port": 2525, "tls": "none"},
                 "auth": {"method": "login", "secretRef": {"name": "shared-smtp"}}, "senders": [f"*@{name}.example"]},
    }  # fmt: skip


async def test_a_pass_pages_through_accounts_and_repairs_what_stayed_unhandled_for_two_passes(
    control_plane: ControlPlane, namespace: str
) -> None:
    path = f"/apis/mailgate.dev/v1alpha1/namespaces/{namespace}/smtpaccounts"
    control_plane.create_secret(namespace, "shared-smtp", {"username": "app", "password": "pw"})
    names = [f"orphan-{index}" for index in range(7)]
    for name in names:  # no operator runs: nobody handles them, nobody adds the finalizer
        code, answer = control_plane.request("POST", path, plain_account(namespace, name))
        assert code == 201, answer
    keys = [f"{namespace}/{name}" for name in names]

    async with in_process_resync(control_plane, namespace, page_size=3) as (resync, engine, metrics):
        first = await resync.run_once()
        assert first.accounts() == set()  # behind once may be a handler still at work: left alone
        assert metrics.registry.get_sample_value("mailgate_operator_account_resync_listed") == len(names)

        second = await resync.run_once()
        assert sorted(second.missing) == keys and sorted(second.finalizer) == keys
        assert not second.stale and not second.gone
        for name in names:
            obj = control_plane.request("GET", f"{path}/{name}")[1]
            assert obj["metadata"]["finalizers"] == [FINALIZER]
            assert not engine.behind(f"{namespace}/{name}", obj["metadata"]["uid"], 1)
        assert (await resync.run_once()).accounts() == set()

        assert control_plane.request("DELETE", f"{path}/orphan-0")[0] == 200  # held by the finalizer now
        assert (await resync.run_once()).accounts() == set()  # Terminating, seen once: kopf's delete handler may be at work
        assert engine.has(keys[0])
        code, answer = control_plane.request("PATCH", f"{path}/orphan-0", {"metadata": {"finalizers": None}})
        assert code == 200, answer
        gone = await resync.run_once()
        assert gone.gone == [keys[0]] and gone.accounts() == {keys[0]}
        assert not engine.has(keys[0]) and engine.has(keys[1])
    repairs = {
        kind: metrics.registry.get_sample_value("mailgate_operator_account_resync_repairs_total", {"kind": kind})
        for kind in ("missing", "stale", "gone", "finalizer")
    }
    assert repairs == {"missing": 7, "stale": None, "gone": 1, "finalizer": 7}
    resynced = metrics.registry.get_sample_value("mailgate_operator_reconciles_total", {"trigger": "resync", "result": "ok"})
    assert resynced == 7  # through the handlers' own code


@contextlib.asynccontextmanager
async def in_process_resync(
    control_plane: ControlPlane, namespace: str, page_size: int = 500
) -> AsyncIterator[tuple[AccountResync, Engine, OperatorMetrics]]:
    """The resync in this process, without kopf (no handler runs unless a test calls it), no gateway Pods."""
    configuration = Configuration()
    await kubernetes_asyncio.config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    metrics = OperatorMetrics()
    async with ApiClient(configuration) as api_client, AdminClient("unused", 1) as admin:
        engine = Engine(client=admin, send_port=1, resync_seconds=30, metrics=metrics)  # no gateway Pods: no pushes
        engine.expect([])
        secrets = SecretCache()
        await fill(secrets, api_client, (namespace,))
        memo = kopf.Memo(engine=engine, metrics=metrics, secrets=secrets, diffbase=SpecDiffBase())
        try:
            yield AccountResync(api_client, (namespace,), 300, memo, page_size=page_size), engine, metrics
        finally:
            await engine.close()


async def test_a_deletion_nobody_finished_is_finished_after_two_passes(control_plane: ControlPlane, namespace: str) -> None:
    """A Terminating account held by our finalizer whose delete handler never ran (its event lost, or the PATCH
    releasing the finalizer timed out): it stayed served and ``kubectl delete`` hung. The resync finishes it."""
    path = f"/apis/mailgate.dev/v1alpha1/namespaces/{namespace}/smtpaccounts"
    control_plane.create_secret(namespace, "shared-smtp", {"username": "app", "password": "pw"})
    for name in ("doomed", "kept"):
        code, answer = control_plane.request("POST", path, plain_account(namespace, name))
        assert code == 201, answer
    doomed, kept = f"{namespace}/doomed", f"{namespace}/kept"
    async with in_process_resync(control_plane, namespace) as (resync, engine, metrics):
        await resync.run_once()
        adopted = await resync.run_once()  # both served and finalized, as kopf's handlers would have left them
        assert sorted(adopted.finalizer) == [doomed, kept] and engine.has(doomed)

        assert control_plane.request("DELETE", f"{path}/doomed")[0] == 200  # held by our finalizer; no kopf to see it
        first = await resync.run_once()
        assert first.accounts() == set() and engine.has(doomed)  # once may be kopf's handler at work: left alone
        second = await resync.run_once()
        assert second.deleted == [doomed] and second.accounts() == {doomed}
        assert not engine.has(doomed) and engine.has(kept)
        assert control_plane.request("GET", f"{path}/doomed")[0] == 404  # the finalizer released, the object gone
        assert (await resync.run_once()).accounts() == set()
    deleted = metrics.registry.get_sample_value("mailgate_operator_account_resync_repairs_total", {"kind": "deleted"})
    assert deleted == 1


def test_the_interval_comes_from_the_environment_and_must_be_a_positive_number() -> None:
    assert account_resync_seconds(None) == account_resync_seconds("") == 300
    assert account_resync_seconds("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "5m"):
        with pytest.raises(ValueError):
            account_resync_seconds(bad)
