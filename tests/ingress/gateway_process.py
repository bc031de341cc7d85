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
from mailgate.ingress import IngressOptions, attach, parse_networks
from mailgate.snapshot import ConfigSnapshot


async def main(snapshot_file: str, cert: str, key: str) -> None:
    gateway = Gateway(
        AllowAnyone(), GatewayOptions(host="127.0.0.1", port=0, admin_port=None, upstream_timeout=5.0, shutdown_grace=10.0)
    )
    options = IngressOptions(
        port=0, host="127.0.0.1", tls_cert=cert, tls_key=key, hostname="gw.test.example",
        trusted_networks=parse_networks("127.0.0.0/8"), shutdown_grace=10.0,
    )
    ingress = attach(gateway, options)
    await gateway.apply_snapshot(ConfigSnapshot.model_validate_json(Path(snapshot_file).read_text()))

    async def announce() -> None:
        while not ingress.ports:
            await asyncio.sleep(0.01)
        print(f"READY {ingress.ports['smtp']}", flush=True)

    announcer = asyncio.create_task(announce())
    await run_until_signalled(gateway)
    await announcer


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
