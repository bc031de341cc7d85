"""Two SmtpAccounts claiming one sender: real apiserver, gateway and operator report it on both, and clear it."""

from __future__ import annotations

from functools import partial

from tests.k8s.operator.harness import Mesh, eventually


def test_a_duplicate_sender_claim_is_a_condition_and_event_on_both_accounts(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory()
    mesh.gateway("gw-1", index=1)
    mesh.operator()
    auth = {"method": "none"}

    def warned(name: str) -> bool:
        return any(e["reason"] == "SenderConflict" and e["type"] == "Warning" for e in mesh.events(name))

    mesh.apply_account("billing", upstream, auth=auth, senders=["billing@shop.example", "*@shop.example"])
    mesh.apply_account("invoices", upstream, auth=auth, senders=["billing@shop.example"])

    for name, other in (("billing", "invoices"), ("invoices", "billing")):
        condition = mesh.wait_condition(name, "SendersUnique", "False", "SenderConflict")
        assert f"billing@shop.example (also listed by {mesh.namespace}/{other})" in condition["message"]
        assert "*@shop.example" not in condition["message"]  # only the shared pattern is named
        eventually(partial(warned, name), f"a SenderConflict Event on {name}")
    assert (mesh.condition("billing", "Ready") or {}).get("status") == "True"  # sending by name still works

    mesh.patch_account("invoices", {"senders": ["invoices@shop.example"]})
    for name in ("billing", "invoices"):
        assert mesh.wait_condition(name, "SendersUnique", "True")["reason"] == "Unique"
    eventually(
        lambda: any(e["reason"] == "SenderConflictResolved" for e in mesh.events("billing")),
        "a SenderConflictResolved Event",
    )
