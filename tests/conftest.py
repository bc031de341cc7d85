"""Shared fixtures: real SMTP upstreams started per test and always stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.smtp_servers import StallServer, TestCA, Upstream


@pytest.fixture(scope="session")
def test_ca() -> TestCA:
    return TestCA()


@pytest.fixture
def upstream_factory(test_ca: TestCA) -> Iterator:
    """Start any number of upstreams in a test; all are stopped at the end."""
    started: list[Upstream] = []

    def make(**kwargs: object) -> Upstream:
        kwargs.setdefault("ca", test_ca)
        server = Upstream(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def upstream(upstream_factory) -> Upstream:
    return upstream_factory()


@pytest.fixture
def stall_server() -> Iterator[StallServer]:
    server = StallServer()
    yield server
    server.close()
