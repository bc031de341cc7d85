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
