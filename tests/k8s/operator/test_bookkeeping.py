"""kopf's bookkeeping without a write per account: nothing but the finalizer on an account, spec changes still handled."""

from __future__ import annotations

from typing import Any, cast

import kopf

from mailgate.operator.bookkeeping import RetryProgress, SpecDiffBase
from mailgate.operator.handlers import ANNOTATION_PREFIX, FINALIZER
from tests.k8s.operator.harness import Mesh


def as_body(raw: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, raw))


def account(uid: str, spec: dict[str, Any], **metadata: Any) -> kopf.Body:
    return as_body({"metadata": {"uid": uid, "name": "mail", "namespace": "shop", **metadata}, "spec": spec,
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip


def test_the_diff_base_is_the_spec_alone_kept_per_uid_until_forgotten() -> None:
    diffbase = SpecDiffBase()
    first = account("uid-1", {"auth": {"method": "none"}}, labels={"team": "a"}, annotations={"note": "x"})
    assert diffbase.fetch(body=first) is None  # new to this process: kopf calls the create handler
    essence = diffbase.build(body=first)
    assert essence == {"spec": {"auth": {"method": "none"}}}
    patch = kopf.Patch()
    diffbase.store(body=first, patch=patch, essence=essence)
    assert not patch  # nothing written to the object
    relabelled = account("uid-1", {"auth": {"method": "none"}}, labels={"team": "b"})
    assert diffbase.fetch(body=relabelled) == diffbase.build(body=relabelled)  # a label change is no change
    assert diffbase.fetch(body=account("uid-2", {})) is None
    diffbase.forget("uid-1")
    assert diffbase.fetch(body=first) is None and len(diffbase) == 0


def test_progress_of_a_retried_handler_is_an_annotation_without_the_kopf_marker() -> None:
    patch = kopf.Patch()
    record = cast(kopf.ProgressRecord, {"started": "2026-01-01T00:00:00", "retries": 1, "success": False})
    storage = RetryProgress(prefix=ANNOTATION_PREFIX)
    storage.store(key=kopf.HandlerId("remove"), record=record, body=account("uid-1", {}), patch=patch)
    assert set(patch["metadata"]["annotations"]) == {f"{ANNOTATION_PREFIX}/remove"}


def test_handling_an_account_writes_no_bookkeeping_to_it_and_spec_changes_still_count(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    mesh.operator()
    mesh.secret("plain-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("plain", upstream)
    mesh.wait_condition("plain", "Ready", "True")
    mesh.patch_account("plain", {"pool": {"maxConnections": 4}})
    mesh.wait_served(f"{mesh.namespace}/plain", lambda report: report["generation"] == 2, "generation 2 served")

    obj = mesh.account("plain") or {}
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    assert not [key for key in obj["metadata"].get("annotations") or {} if key.startswith(f"{ANNOTATION_PREFIX}/")]
    assert (gateway.account(f"{mesh.namespace}/plain") or {})["pool"]["maxConnections"] == 4
