"""The clients apps and containers really use: swaks and msmtp (Debian packages, `bash hack/system-deps.sh`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, account
from tests.smtp_servers import Upstream

# swaks and msmtp are installed by `bash hack/system-deps.sh` (make test): a missing one fails, never skips.

LOGIN = ("keycloak", "kc-secret-1")


async def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


def swaks(gw: IngressGateway, *extra: str, auth: str | None = "PLAIN") -> list[str]:
    argv = [
        "swaks", "--server", HOST, "--port", str(gw.port), "--ehlo", "client.test",
        "--tls", "--tls-verify", "--tls-ca-path", str(gw.tls.ca),
        "--from", "noreply@shop.example", "--to", "ops@example.org",
        "--h-From", "Shop <noreply@shop.example>", "--h-Subject", "from swaks", "--body", "hello from swaks",
    ]
    if auth is not None:
        argv += ["--auth", auth, "--auth-user", LOGIN[0], "--auth-password", LOGIN[1]]
    return argv + list(extra)


def msmtp_config(gw: IngressGateway, folder: Path, *, password: str = LOGIN[1]) -> Path:
    config = folder / "msmtprc"
    config.write_text(
        "\n".join(
            [
                "account default",
                f"host {HOST}",
                f"port {gw.port}",
                "domain client.test",
                "tls on",
                "tls_starttls on",
                f"tls_trust_file {gw.tls.ca}",
                "auth on",
                f"user {LOGIN[0]}",
                f"password {password}",
                "from noreply@shop.example",
                "",
            ]
        )
    )
    config.chmod(0o600)  # msmtp refuses a configuration file others can read
    return config


MSMTP_MESSAGE = (
    b"From: Shop <noreply@shop.example>\n"  # msmtp, like sendmail, reads LF line endings and sends CRLF
    b"To: ops@example.org\n"
    b"Subject: from msmtp\n"
    b"\n"
    b".a line starting with a dot\n"
    b"caf\xc3\xa9\n"
)


@pytest.fixture
async def keycloak(gw: IngressGateway, upstream: Upstream) -> tuple[IngressGateway, Upstream]:
    gw.configure(account(upstream, "keycloak", senders=["noreply@shop.example"], clients={LOGIN[0]: LOGIN[1]}))
    return gw, upstream


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_starttls_auth_send(keycloak: tuple[IngressGateway, Upstream], mechanism: str) -> None:
    gw, upstream = keycloak
    code, output = await run(*swaks(gw, auth=mechanism))
    assert code == 0, output
    assert "<~  250 2.0.0 OK " in output
    [message] = upstream.messages
    assert message.mail_from == "noreply@shop.example"
    assert b"with ESMTPSA id" in message.data and b"hello from swaks" in message.data


async def test_swaks_sees_the_upstreams_refusal(keycloak: tuple[IngressGateway, Upstream]) -> None:
    gw, upstream = keycloak
    upstream.data_reply = "554 5.7.1 spam detected"
    code, output = await run(*swaks(gw))
    assert code != 0
    assert "<~* 554 5.7.1 spam detected" in output
    assert upstream.messages == []


async def test_swaks_without_tls_cannot_authenticate(keycloak: tuple[IngressGateway, Upstream]) -> None:
    gw, upstream = keycloak
    argv = [arg for arg in swaks(gw) if arg not in ("--tls", "--tls-verify")]
    argv.remove("--tls-ca-path")
    argv.remove(str(gw.tls.ca))
    code, output = await run(*argv)
    assert code != 0
    assert "Host did not advertise authentication" in output or "538 5.7.11" in output, output
    assert upstream.messages == []


async def test_msmtp_as_sendmail(keycloak: tuple[IngressGateway, Upstream], tmp_path: Path) -> None:
    gw, upstream = keycloak
    code, output = await run("msmtp", "-C", str(msmtp_config(gw, tmp_path)), "-t", stdin=MSMTP_MESSAGE)
    assert code == 0, output
    [message] = upstream.messages
    assert message.rcpt_tos == ["ops@example.org"]
    body = message.data.split(b"\r\n\r\n", 1)[1]
    assert body == b".a line starting with a dot\r\ncaf\xc3\xa9\r\n"


async def test_msmtp_reports_the_mapped_replies(keycloak: tuple[IngressGateway, Upstream], tmp_path: Path) -> None:
    gw, upstream = keycloak
    config = str(msmtp_config(gw, tmp_path))
    upstream.data_reply = "450 4.2.0 mailbox busy"
    code, output = await run("msmtp", "-C", config, "-t", stdin=MSMTP_MESSAGE)
    assert code != 0 and "server message: 451 4.2.0 upstream said 450: mailbox busy" in output, output
    upstream.data_reply = "550 5.1.1 no such user"
    code, output = await run("msmtp", "-C", config, "-t", stdin=MSMTP_MESSAGE)
    assert code != 0 and "server message: 550 5.1.1 no such user" in output, output
    (tmp_path / "wrong").mkdir()
    wrong = msmtp_config(gw, tmp_path / "wrong", password="not-the-password")
    code, output = await run("msmtp", "-C", str(wrong), "-t", stdin=MSMTP_MESSAGE)
    assert code != 0 and "535 5.7.8" in output, output
    assert upstream.messages == []


async def test_swaks_from_a_trusted_network_without_auth(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8")
    gw.configure(account(upstream, "alerts", senders=["*@shop.example"]))
    argv = [arg for arg in swaks(gw, auth=None) if arg not in ("--tls", "--tls-verify", "--tls-ca-path", str(gw.tls.ca))]
    code, output = await run(*argv)
    assert code == 0, output
    assert len(upstream.messages) == 1
