"""The ``serve`` fixture: ``mailgate serve`` processes started by a test, stopped (cleanly) at its end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standalone.support import SENTINEL, ServeProcess, start_serve


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        process = start_serve(tmp_path, *args, name=f"serve{len(started)}")
        started.append(process)
        return process

    yield start
    for process in started:
        running = process.process.poll() is None
        code = process.stop()
        output = process.output()
        assert SENTINEL not in output
        if running:
            assert code == 0, output  # SIGTERM is a clean shutdown
