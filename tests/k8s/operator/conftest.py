"""Fixtures for operator tests: a Mesh of gateway processes, Pods and operators, always cleaned up."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import ControlPlane
from tests.k8s.operator.harness import Mesh


@pytest.fixture
def mesh(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Mesh]:
    """Accounts live in ``namespace``; gateway Pods in a namespace of their own."""
    gateway_namespace = f"gw-{uuid.uuid4().hex[:10]}"
    control_plane.create_namespace(gateway_namespace)
    mesh = Mesh(control_plane, namespace, gateway_namespace, tmp_path)
    try:
        yield mesh
    finally:
        mesh.close()
        control_plane.delete_namespace(gateway_namespace, wait=False)
