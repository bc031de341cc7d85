"""A gateway with the SMTP ingress in its own process, for tests that send it real signals.

``python -m tests.ingress.gateway_process SNAPSHOT.json CERT KEY`` starts a
gateway (HTTP on a free port, no admin API), applies the snapshot, opens the
SMTP ingress on a free port, prints ``READY <smtp port>`` and runs until
SIGTERM, exactly as ``mailgate gateway`` does (``run_until_signalled``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mailgate.gateway.app import Gateway, GatewayOptions, run_until_signalled
from mailgate.gateway.auth import AllowAnyone
from mailgate.ingress.attach import attach
from mailgate.ingress.options import IngressOptions, parse_networks
from mailgate.ingress.server import IngressServer
from mailgate.snapshot import ConfigSnapshot


class Announcer:
    """A door that opens nothing: it tells the test the SMTP port once the gateway started its doors."""

    def __init__(self, ingress: IngressServer) -> None:
        self.ingress = ingress

    async def start(self) -> None:
        print(f"READY {self.ingress.ports['smtp']}", flush=True)

    def stop_accepting(self) -> None:
        return None

    async def drain(self, deadline: float) -> bool:
        return True

    async def close(self, deadline: float) -> None:
        return None


async def main(snapshot: ConfigSnapshot, cert: str, key: str) -> None:
    gateway = Gateway(
        AllowAnyone(), GatewayOptions(host="127.0.0.1", port=0, admin_port=None, upstream_timeout=5.0, shutdown_grace=10.0)
    )
    options = IngressOptions(
        port=0,
        host="127.0.0.1",
        tls_cert=cert,
        tls_key=key,
        hostname="gw.test.example",
        trusted_networks=parse_networks("127.0.0.0/8"),
        shutdown_grace=10.0,
    )
    ingress = attach(gateway, options)
    gateway.add_door(Announcer(ingress))  # doors start in order: after the ingress's listeners are open
    await gateway.apply_snapshot(snapshot)
    await run_until_signalled(gateway)


if __name__ == "__main__":
    snapshot_file, cert_file, key_file = sys.argv[1:4]
    asyncio.run(main(ConfigSnapshot.model_validate_json(Path(snapshot_file).read_text()), cert_file, key_file))
