"""The podman command lines the image tests share, with the flags these machines need.

``crun`` (podman's default runtime) fails on the hosts' hybrid cgroups and the
runtime may not raise resource limits, so every build and run goes through
``runc`` with the limits pinned (see ``../shared/IMAGE-BUILD.md``).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from pathlib import Path

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
ROOT = Path(__file__).resolve().parents[2]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one podman command; on failure the error carries its output, which a test report then shows."""
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).splitlines()[-60:]  # a failed build's cause is at its end
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n" + "\n".join(output))
    return result


def base_image() -> str:
    """The Python base the image is built on here: made once per machine by hack/image-base.sh."""
    result = subprocess.run(["bash", str(ROOT / "hack" / "image-base.sh")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"hack/image-base.sh exited {result.returncode}:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def host_ca_bundle() -> str | None:
    """The CA bundle pip trusts on this host: behind a TLS-inspecting proxy pip in the build needs it too."""
    path = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
    return path if path and Path(path).is_file() else None


def build(tag: str, base: str) -> None:
    """Build the working tree's Dockerfile; the host CA reaches the build as a secret, never the image."""
    secret = host_ca_bundle()
    podman(
        "build", "--layers=false", "--network", "host", *LIMITS,
        "--build-arg", f"PYTHON_IMAGE={base}",
        *(["--secret", f"id=pip_cert,src={secret}"] if secret else []),
        "-t", tag, str(ROOT),
        timeout=600,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
