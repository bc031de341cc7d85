"""Fixtures for the alert-rule tests.

The live Prometheus (tests/prometheus/server.py) is started by the test that scrapes a
gateway and the operator, tests/k8s/operator/test_prometheus_contracts.py: it needs the
Kubernetes fixtures, which only tests under tests/k8s see.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prometheus.server import binary


@pytest.fixture(scope="session")
def promtool() -> Path:
    return binary("promtool")
