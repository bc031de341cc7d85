"""swaks and msmtp through the SMTP ingress of a queue-mode account, the upstream down: 250, exit 0, delivered later.

This is the case durable delivery exists for: a cron job's msmtp or a script's
swaks never retries, so the gateway must say 250 only once the message is
committed to the (real PostgreSQL) queue, and then deliver it when the upstream
comes back. ``mailgate serve`` runs as a real process; swaks and msmtp are the
Debian packages ``hack/system-deps.sh`` installs (a missing one fails, never skips).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.queue.gateways import Gateways, deliveries, queue_flags, queued_accounts, states, until, until_all_final
from tests.queue.postgres import PostgresServer
from tests.smtp_servers import TestCA, Upstream, _free_port

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
LOGIN = ("cron", "cron-login-Secret-42")
SENDER = "noreply@shop.example"
CLIENT_ACCESS = f"""\
  senders: [{SENDER}]
  access: {{smtpClients: [{{secretRef: {{name: cron-login}}}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cron-login, namespace: shop}}
stringData: {{username: {LOGIN[0]}, password: {LOGIN[1]}}}
"""
QUEUED_AS = re.compile(r"<~  250 2\.0\.0 OK \S+ queued as (?P<id>[0-9a-f]{32})")
MSMTP_MESSAGE = f"From: Cron <{SENDER}>\nTo: ops@example.org\nSubject: nightly backup failed\nX-Test-Seq: msmtp\n\nsee the log\n"


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    started = Gateways(tmp_path)
    yield started
    started.close()


def tls_files(test_ca: TestCA, folder: Path) -> tuple[Path, Path, Path]:
    cert, key, ca = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in test_ca.server_cert.cert_chain_pems))
    key.write_bytes(test_ca.server_cert.private_key_pem.bytes())
    ca.write_bytes(test_ca.ca.cert_pem.bytes())
    return cert, key, ca


async def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


def msmtp_config(folder: Path, port: int, ca: Path) -> Path:
    config = folder / "msmtprc"
    lines = [
        "account default", f"host {HOST}", f"port {port}", "domain client.test", "tls on", "tls_starttls on",
        f"tls_trust_file {ca}", "auth on", f"user {LOGIN[0]}", f"password {LOGIN[1]}", f"from {SENDER}", "",
    ]  # fmt: skip
    config.write_text("\n".join(lines))
    config.chmod(0o600)  # msmtp refuses a configuration file others can read
    return config


async def test_swaks_and_msmtp_get_250_while_the_upstream_is_down_and_their_mail_goes_out_once_it_is_back(
    gateways: Gateways,
    test_ca: TestCA,
    postgres_server: PostgresServer,
    postgres_schema: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    upstream = Upstream(ca=test_ca, users={"billing": "pw"})  # its port is chosen, nothing listens there yet
    accounts = queued_accounts(tmp_path / "accounts.yaml", upstream, extra=CLIENT_ACCESS)
    cert, key, ca = tls_files(test_ca, tmp_path)
    smtp_port = _free_port()
    gateway = gateways.start(
        *queue_flags(accounts, postgres_dsn, "gw-smtp"),
        "--smtp-port", str(smtp_port), "--smtp-host", HOST, "--smtp-tls-cert", str(cert), "--smtp-tls-key", str(key),
        "--smtp-hostname", "gw.test.example",
    )  # fmt: skip
    await gateway.wait_ready()

    code, output = await run(
        "swaks", "--server", HOST, "--port", str(smtp_port), "--ehlo", "client.test",
        "--tls", "--tls-verify", "--tls-ca-path", str(ca),
        "--auth", "PLAIN", "--auth-user", LOGIN[0], "--auth-password", LOGIN[1],
        "--from", SENDER, "--to", "ops@example.org", "--header", "X-Test-Seq: swaks", "--body", "disk full",
    )  # fmt: skip
    assert code == 0, output
    match = QUEUED_AS.search(output)
    assert match is not None, output
    code, output = await run("msmtp", "-C", str(msmtp_config(tmp_path, smtp_port, ca)), "-t", stdin=MSMTP_MESSAGE.encode())
    assert code == 0, output

    stored = states(postgres_server, postgres_schema)
    assert len(stored) == 2 and match["id"] in stored
    # Both are tried, and deferred, while the upstream is down: stored, not delivered, not given up.
    await until(
        lambda: all(state == "deferred" for state, _ in states(postgres_server, postgres_schema).values()),
        30,
        "both messages deferred",
        gateway.output,
    )
    try:
        upstream.start()
        final = await until_all_final(postgres_server, postgres_schema, 30, gateway.output)
    finally:
        upstream.stop()
    assert final == dict.fromkeys(stored, "sent")
    assert deliveries(upstream) == {"swaks": 1, "msmtp": 1}
    assert all(m.mail_from == SENDER and m.rcpt_tos == ["ops@example.org"] for m in upstream.messages)
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/v1/messages/{match['id']}") as response:
        shown = await response.json()
    assert response.status == 200 and shown["state"] == "sent" and shown["lastReply"]["code"] == 250, shown
    assert LOGIN[1] not in gateway.output()
