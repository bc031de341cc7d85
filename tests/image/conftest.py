"""The image under test: built once per session from the working tree's Dockerfile, removed at the end.

The Python base (hack/image-base.sh) is kept: it is the slow, unchanging part.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.image.podman import base_image, build, podman

TAG = "localhost/mailgate:image-test"


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    # `make test` installs podman (hack/system-deps.sh): its absence is a broken set-up, reported, never a skip.
    assert shutil.which("podman") is not None, "podman is not installed: run `make system-deps` (make test does)"
    build(TAG, base_image())
    yield TAG
    podman("rmi", "--force", TAG)
