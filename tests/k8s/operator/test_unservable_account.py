"""An account that passes the model but a gateway cannot serve becomes a False condition on that SmtpAccount.

The engine pushes to real gateways in this process (no apiserver needed):
the gateway answers 422 naming the account and field, nothing it serves
changes, and the operator puts the gateway's words on the account's
``Synced`` and ``Ready`` conditions, while the other accounts stay synced.
"""

from __future__ import annotations

from datetime import UTC, datetime

from mailgate.operator.conditions import build_status
from tests.k8s.operator import test_engine
from tests.k8s.operator.test_engine import Cluster, body, lookup, until

cluster = test_engine.cluster  # the fixture: in-process gateways and an Engine pushing to them

BAD_CA = "-----BEGIN CERTIFICATE-----\nMIIBnot-a-certificate\n-----END CERTIFICATE-----\n"
TLS_SERVER = {"host": "127.0.0.1", "port": 9, "tls": "starttls"}


def conditions(cluster: Cluster, key: str) -> dict[str, tuple[str, str, str]]:
    inputs = cluster.engine.status_inputs(key)
    assert inputs is not None
    status = build_status(inputs, [], datetime.now(UTC))
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


async def test_a_refused_account_is_a_false_condition_naming_the_field(cluster: Cluster) -> None:
    await cluster.add("gw-a", 1)
    await cluster.engine.upsert(body("good"), lookup)
    await until(lambda: cluster.synced("shop/good"), "the good account on the gateway")

    await cluster.engine.upsert(body("broken", server={**TLS_SERVER, "caCertificate": BAD_CA}), lookup)
    await until(lambda: conditions(cluster, "shop/broken")["Synced"][1] == "Rejected", "the refusal on the account")
    status, _, message = conditions(cluster, "shop/broken")["Synced"]
    assert status == "False"
    assert "gw-a" in message and "spec.server.caCertificate" in message and "shop/broken" in message
    assert "MIIBnot" not in message
    assert conditions(cluster, "shop/broken")["Ready"][0] == "False"
    gateway = cluster.gateways["gw-a"]
    assert gateway.registry.get("shop/broken") is None
    assert cluster.synced("shop/good")

    # A corrected spec is pushed again and served.
    await cluster.engine.upsert(body("broken", generation=2, server={**TLS_SERVER}), lookup)
    await until(lambda: cluster.synced("shop/broken"), "the corrected account on the gateway")
    assert gateway.registry.get("shop/broken") is not None


async def test_a_full_snapshot_leaves_out_only_the_refused_account(cluster: Cluster) -> None:
    """A gateway that starts (or restarts) gets one snapshot: its 422 names the account, the rest is served."""
    await cluster.engine.upsert(body("good"), lookup)
    await cluster.engine.upsert(body("broken", server={**TLS_SERVER, "caCertificate": BAD_CA}), lookup)
    await cluster.add("gw-a", 1)

    await until(lambda: cluster.synced("shop/good"), "the good account on the new gateway")
    await until(lambda: conditions(cluster, "shop/broken")["Synced"][1] == "Rejected", "the refusal on the account")
    status, _, message = conditions(cluster, "shop/broken")["Synced"]
    assert status == "False"
    assert "gw-a" in message and "spec.server.caCertificate" in message and "shop/broken" in message
    assert "MIIBnot" not in message
    gateway = cluster.gateways["gw-a"]
    assert gateway.registry.get("shop/broken") is None
    assert gateway.registry.get("shop/good") is not None
    assert conditions(cluster, "shop/good")["Synced"][0] == "True"
