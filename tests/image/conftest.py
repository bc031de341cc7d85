"""The image under test: built once per session from the working tree's Dockerfile, removed at the end.

The Python base (hack/image-base.sh) is kept: it is the slow, unchanging part.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.image.podman import base_image, build, podman

TAG = "localhost/mailgate:image-test"


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    build(TAG, base_image())
    yield TAG
    podman("rmi", "--force", TAG)
