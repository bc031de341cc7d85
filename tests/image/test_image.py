"""The container image as the chart runs it: built from the Dockerfile, run by podman on the host network.

The gateway runs with the chart's pod settings (uid from the image, read-only
root filesystem with only a /tmp scratch mount, every capability dropped, no
privilege escalation, the admin token as a read-only file) and relays through
STARTTLS and AUTH to a real upstream started by the test on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.image.podman import LIMITS, free_port, host_ca_bundle, podman
from tests.smtp_servers import TestCA, Upstream

ADMIN_TOKEN = "image-test-admin-token"
PASSWORD = "image-test-Pa55"
GATEWAY = "mailgate-image-test-gateway"
# The chart's securityContext and its /tmp emptyDir, as podman flags.
CHART_POD = [
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:size=64m",
    "--cap-drop", "all", "--security-opt", "no-new-privileges",
]  # fmt: skip


def run(image: str, *args: str, entrypoint: str | None = None) -> str:
    """One short-lived container with the chart's settings; returns its output."""
    flags = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", "--network", "none", *LIMITS, *CHART_POD, *flags, image, *args).stdout


def http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(check: Callable[[], bool], container: str, what: str) -> None:
    """Poll until ``check`` holds; a container that exits meanwhile fails at once with its log."""
    deadline = time.monotonic() + 60
    while not check():
        running = podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip() == "true"
        if not running or time.monotonic() > deadline:
            logs = podman("logs", container, check=False)
            problem = f"exited before {what}" if not running else f"gave no {what} within 60 s"
            pytest.fail(f"{container} {problem}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.2)


def livez(url: str) -> bool:
    try:
        return http("GET", url + "/livez")[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.fixture
def gateway(image: str, tmp_path: Path, upstream_factory: object) -> Iterator[tuple[str, str]]:
    """``mailgate gateway`` in the image with the chart's pod settings; yields its send and admin URLs.

    It depends on ``upstream_factory`` so that it stops (QUIT to its upstreams) before the upstreams do.
    """
    token = tmp_path / "token"
    token.write_text(ADMIN_TOKEN)
    port, admin_port = free_port(), free_port()
    podman("rm", "--force", "--ignore", GATEWAY)  # left over by an interrupted run
    podman(
        "run", "--detach", "--name", GATEWAY, "--network", "host", *LIMITS, *CHART_POD,
        "--volume", f"{token}:/var/run/mailgate/admin/token:ro",
        image, "gateway", "--host", "127.0.0.1", f"--port={port}", f"--admin-port={admin_port}",
        "--admin-token-file=/var/run/mailgate/admin/token", "--insecure-no-auth", "--log-format=json",
        "--shutdown-grace=5",
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    finally:
        podman("rm", "--force", "--time", "5", GATEWAY)


def test_image_runs_as_uid_10001_by_default(image: str) -> None:
    """The chart's runAsNonRoot can only verify a numeric USER; the process must really run as it."""
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert run(image, "-u", entrypoint="id").strip() == "10001"
    assert run(image, "-g", entrypoint="id").strip() == "10001"


def test_gateway_on_a_read_only_root_answers_livez_and_relays_a_message(
    image: str, gateway: tuple[str, str], upstream_factory: Callable[..., Upstream], test_ca: TestCA
) -> None:
    url, admin_url = gateway
    up = upstream_factory(tls="starttls", users={"billing": PASSWORD})
    wait_for(lambda: livez(url), GATEWAY, "/livez")
    assert podman("exec", GATEWAY, "id", "-u").stdout.strip() == "10001"
    denied = podman("exec", GATEWAY, "touch", "/opt/mailgate/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    account = {
        "namespace": "shop",
        "name": "billing",
        "spec": {
            "server": {"host": "127.0.0.1", "port": up.port, "tls": "starttls", "caCertificate": test_ca.ca_pem},
            "auth": {"method": "login", "secretRef": {"name": "billing-smtp"}},
        },
        "credentials": {"username": "billing", "password": PASSWORD},
    }
    status, body = http("PUT", admin_url + "/v1/config", {"revision": 1, "accounts": [account]}, token=ADMIN_TOKEN)
    assert status == 200, body
    assert http("GET", url + "/readyz")[0] == 200
    message = {"from": "app@shop.example", "to": ["rcpt@example.org"], "subject": "From the image", "text": "Hello."}
    status, body = http("POST", url + "/v1/accounts/shop/billing/messages", message)
    assert status == 200, body
    assert [(m.mail_from, m.rcpt_tos, m.login) for m in up.messages] == [("app@shop.example", ["rcpt@example.org"], "billing")]
    assert b"Subject: From the image" in up.messages[0].data


def test_operator_help_runs(image: str) -> None:
    assert "usage: mailgate operator" in run(image, "operator", "--help")


def test_build_only_settings_stay_out_of_the_image(image: str) -> None:
    """The host's CA bundle reaches pip in the build stage as a secret: no PIP_* setting, path or step may remain."""
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert not [name for name in env if name.startswith("PIP_")]
    bundle = host_ca_bundle()
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    for leak in ("pip_cert", "PIP_CERT", "/run/secrets", *([bundle] if bundle else [])):
        assert leak not in " ".join(env.values()), leak
        assert leak not in history, leak
    assert run(image, "-c", "test ! -e /run/secrets/pip_cert && test ! -e /etc/pip.conf", entrypoint="/bin/sh") == ""
