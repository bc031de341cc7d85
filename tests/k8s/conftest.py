"""Fixtures for tests against a real kube-apiserver (see tests/k8s/cluster.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import ControlPlane, locate_binaries

HERE = Path(__file__).resolve().parent
CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here too, so `-m k8s` works before pyproject lists it."""
    config.addinivalue_line("markers", "k8s: needs the real kube-apiserver")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection looks at the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/k8s with ``k8s`` so `-m "not k8s"` can leave them out.

    A conftest hook sees every collected item, not only this directory's, hence the path check.
    """
    for item in items:
        if HERE == item.path.parent or HERE in item.path.parents:
            item.add_marker(pytest.mark.k8s)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before any test runs, and only if a k8s test is selected.

    Why here and not in the fixture: a cold build takes ~13 minutes, far beyond
    the per-test timeout, and its progress lines should reach the terminal.
    """
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        locate_binaries()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the whole session (start-up takes seconds), CRDs installed."""
    with ControlPlane() as cp:
        if CRD_DIR.is_dir():
            cp.install_crds(CRD_DIR)
        yield cp


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test; deleted afterwards without waiting for it to go."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.create_namespace(name)
    yield name
    control_plane.delete_namespace(name, wait=False)
