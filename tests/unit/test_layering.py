"""Which package may import which (issue 16): checked in a fresh interpreter, where sys.modules tells the truth."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(module: str) -> set[str]:
    code = f"import sys, json; import {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", ["mailgate.gateway.app", "mailgate.gateway.main", "mailgate.operator.main"])
def test_the_gateway_and_the_operator_never_load_standalone_mode(module: str) -> None:
    assert not {name for name in loaded_after(module) if name.startswith("mailgate.standalone")}


def test_a_gateway_without_an_smtp_listener_does_not_load_aiosmtpd() -> None:
    loaded = loaded_after("mailgate.gateway.main")
    assert "aiosmtpd" not in loaded and "mailgate.ingress.server" not in loaded


# The relay core knows no protocol: what a door speaks (aiohttp, aiosmtpd), how the process is run and
# observed (Prometheus, Kubernetes, YAML) and the doors themselves stay out of it.
DOOR_AND_PROCESS = ("aiohttp", "aiosmtpd", "prometheus_client", "kopf", "kubernetes_asyncio", "yaml")
OUTSIDE_THE_CORE = ("mailgate.gateway", "mailgate.ingress", "mailgate.operator", "mailgate.standalone")


@pytest.mark.parametrize(
    "module",
    [
        "mailgate.relay.core",
        "mailgate.relay.routing",
        "mailgate.relay.accounts",
        "mailgate.relay.rfc822",
        "mailgate.relay.tokens",
        "mailgate.relay.outbox",  # durable delivery: the queue's storage is no protocol either
    ],
)
def test_the_relay_core_loads_no_protocol(module: str) -> None:
    loaded = loaded_after(module)
    assert not {name for name in loaded if name.split(".")[0] in DOOR_AND_PROCESS}
    assert not {name for name in loaded if name.startswith(OUTSIDE_THE_CORE)}


def test_the_smtp_door_reaches_the_core_only() -> None:
    """The SMTP ingress imports the relay core, never the HTTP door's modules."""
    loaded = loaded_after("mailgate.ingress.session")
    assert not {name for name in loaded if name.startswith("mailgate.gateway")}
