"""``mailgate dev``: a gateway, a capture SMTP server and a sample account, with nothing to configure.

Everything binds 127.0.0.1 and nothing leaves the machine: the sample
account ``dev/sample`` points at the capture server (plaintext, no AUTH), so
a message sent through the real send API, with the real relay, pool and
message builder, ends up in memory and is shown at ``GET /dev/messages``.
There is no caller authentication at all, which the banner says loudly.

The banner is printed once the port is bound (``--port 0`` picks a free one)
and ends with a ``mailgate dev ready: <url>`` line that ``mailgate.demo`` and
the tests wait for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile

from ..devserver import CaptureServer, dev_routes
from ..gateway.app import Gateway, GatewayOptions, run_until_signalled
from ..gateway.auth import AllowAnyone
from ..logs import configure_logging
from ..relay.outbox import OutboxOptions
from ..snapshot import AccountConfig, ConfigSnapshot

log = logging.getLogger("mailgate.dev")

SAMPLE_NAMESPACE = "dev"
SAMPLE_NAME = "sample"
READY_PREFIX = "mailgate dev ready: "
SAMPLE_MESSAGE = {
    "from": "app@example.com",
    "to": ["you@example.com"],
    "subject": "Hello from mailgate",
    "text": "It works: this message went through the gateway to the capture server.",
}


def sample_snapshot(smtp_port: int) -> ConfigSnapshot:
    """One account pointing at the capture server; any sender, no rate limit."""
    account = AccountConfig.model_validate(
        {
            "namespace": SAMPLE_NAMESPACE,
            "name": SAMPLE_NAME,
            "spec": {"server": {"host": "127.0.0.1", "port": smtp_port, "tls": "none"}, "auth": {"method": "none"}},
        }
    )
    return ConfigSnapshot(revision=1, accounts=[account])


def banner(url: str, smtp_port: int) -> str:
    send_url = f"{url}/v1/accounts/{SAMPLE_NAMESPACE}/{SAMPLE_NAME}/messages"
    curl = (
        f"curl -sS -X POST {send_url} -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(SAMPLE_MESSAGE))}"
    )
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            " mailgate dev: FOR DEVELOPMENT ONLY. No caller authentication: anyone who can",
            " reach this port may send. Mail goes to the capture server, never delivered.",
            rule,
            f" Send API:        {url}  (account {SAMPLE_NAMESPACE}/{SAMPLE_NAME})",
            f" Capture SMTP:    127.0.0.1:{smtp_port}",
            f" Captured mail:   curl -sS {url}/dev/messages",
            " Queued sending:  add -H 'Prefer: respond-async': 202 at once, then GET the Location",
            "",
            " Send a message:",
            f"   {curl}",
            rule,
            f"{READY_PREFIX}{url}",
        ]
    )


class _DevGateway(Gateway):
    """A gateway that prints the banner once it listens (only then is a ``--port 0`` known)."""

    def __init__(self, capture: CaptureServer, options: GatewayOptions) -> None:
        super().__init__(AllowAnyone(), options)
        self.capture = capture
        self.app.add_routes(dev_routes(capture.store))

    async def start(self) -> None:
        await super().start()
        print(banner(self.url, self.capture.port), flush=True)


def dev(args: argparse.Namespace) -> int:
    configure_logging("text", "INFO")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command at INFO
    try:
        asyncio.run(_run(args))
    except OSError as error:
        print(f"mailgate dev: cannot serve: {error}", file=sys.stderr)
        return 1
    return 0


async def _run(args: argparse.Namespace) -> None:
    capture = await CaptureServer().start()
    state = tempfile.TemporaryDirectory(prefix="mailgate-dev-")  # the queue lives as long as this process
    try:
        options = GatewayOptions(
            queue=OutboxOptions(url=f"sqlite:///{state.name}/queue.db", owner="mailgate-dev"),
            host=args.host,
            port=args.port,
            admin_port=None,
            hostname="mailgate.localhost",
            ehlo_hostname="localhost",  # the default, the FQDN, can cost a DNS lookup per new session
            shutdown_grace=5.0,
        )
        gateway = _DevGateway(capture, options)
        await gateway.apply_snapshot(sample_snapshot(capture.port))
        await run_until_signalled(gateway)
    finally:
        await capture.stop()  # after the gateway, whose pool QUITs its sessions first
        state.cleanup()
