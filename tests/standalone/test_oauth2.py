"""OAuth2 upstream authentication in `mailgate serve`: the gateway process obtains and renews its own tokens.

Real parts only: a `mailgate serve` child process, the test token endpoint
(``tests.oauth2_server.TokenServer``, which verifies client secrets and issues
short-lived tokens) and an aiosmtpd upstream with STARTTLS that accepts AUTH
XOAUTH2 only for unexpired tokens that endpoint issued for that mailbox. The
client secret is the sentinel the ``serve`` fixture looks for in the output.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.oauth2_server import TokenServer
from tests.smtp_servers import TestCA, Upstream
from tests.standalone.support import SENTINEL, ServeProcess, _free_port, write_atomically

pytestmark = pytest.mark.timeout(120)

MAILBOX = "alerts@shop.example"
MESSAGE = {"from": MAILBOX, "to": ["ana@example.com"], "subject": "hi", "text": "hello"}


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """The token endpoint, with app registration ``app`` (client secret: the sentinel) allowed to send as MAILBOX."""
    with TokenServer(lifetime=3600) as server:
        server.add_client("app", secret=SENTINEL, mailboxes=[MAILBOX])
        yield server


@pytest.fixture
def upstream(upstream_factory, token_server: TokenServer) -> Upstream:
    """STARTTLS, and AUTH XOAUTH2 only with unexpired tokens the token server issued for the mailbox."""
    return upstream_factory(tls="starttls", token_check=token_server.is_valid)


async def start(serve, accounts: Path, text: str, *extra: str) -> ServeProcess:
    """`mailgate serve -f accounts` (after writing ``text`` there), ready."""
    await asyncio.to_thread(accounts.write_text, text)
    gateway = serve("-f", str(accounts), "--insecure-no-auth", *extra)
    await gateway.wait_ready()
    return gateway


def oauth2_yaml(upstream: Upstream, ca: TestCA, server: TokenServer, *, name: str = "alerts", secret: str = SENTINEL,
                client_id: str = "app", mailbox: str = MAILBOX, per_connection: int = 1) -> str:  # fmt: skip
    """A Microsoft-shaped OAuth2 account against ``upstream`` (STARTTLS, the test CA) and its Secret."""
    indented_ca = "\n".join("      " + line for line in ca.ca_pem.strip().splitlines())
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {name}-oauth2, namespace: shop}}
stringData: {{clientSecret: "{secret}"}}
---
apiVersion: mailgate.dev/v1alpha1
kind: SmtpAccount
metadata: {{name: {name}, namespace: shop}}
spec:
  server:
    host: 127.0.0.1
    port: {upstream.port}
    tls: starttls
    caCertificate: |
{indented_ca}
  auth:
    method: oauth2
    secretRef: {{name: {name}-oauth2}}
    oauth2:
      provider: microsoft
      tenantId: contoso
      clientId: {client_id}
      mailbox: {mailbox}
      tokenUrl: {server.token_url("contoso")}
  senders: ["{mailbox}"]
  pool: {{maxConnections: 2, maxMessagesPerConnection: {per_connection}, acquireTimeoutSeconds: 10}}
"""


async def post(session: aiohttp.ClientSession, url: str, account: str = "shop/alerts", sender: str = MAILBOX) -> tuple[int, dict]:
    async with session.post(f"{url}/v1/accounts/{account}/messages", json={**MESSAGE, "from": sender}) as response:
        body = await response.json(content_type=None)
        return response.status, body


def xoauth2_tokens(upstream: Upstream) -> list[str]:
    return [secret for mechanism, _, secret in upstream.counters.logins if mechanism == "XOAUTH2"]


async def test_serve_sends_through_oauth2_across_token_lifetimes_without_a_failed_send(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    token_server.lifetime = 3
    accounts = tmp_path / "accounts.yaml"
    gateway = await start(serve, accounts, oauth2_yaml(upstream, test_ca, token_server))

    statuses = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 10  # more than three token lifetimes
        while time.monotonic() < deadline:
            status, body = await post(session, gateway.url)
            statuses.append((status, body.get("type")))
            await asyncio.sleep(0.2)
        async with session.get(f"{gateway.url}/metrics") as response:
            metrics = await response.text()
    assert statuses and all(status == 200 for status, _ in statuses), statuses
    assert len(upstream.messages) == len(statuses)
    used = xoauth2_tokens(upstream)
    assert len(set(used)) >= 3, "every message opened a session; sessions must have used renewed tokens"
    assert set(used) <= set(token_server.issued()), "only tokens the endpoint issued were sent"
    assert token_server.count("refused") == 0
    assert 'mailgate_oauth2_token_requests_total{account="shop/alerts",outcome="issued"}' in metrics
    assert 'mailgate_oauth2_token_remaining_seconds{account="shop/alerts"}' in metrics
    for token in token_server.issued():
        assert token not in metrics and token not in gateway.output()


async def test_a_token_the_upstream_refuses_is_renewed_once_and_the_message_still_sent(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    accounts = tmp_path / "accounts.yaml"
    gateway = await start(serve, accounts, oauth2_yaml(upstream, test_ca, token_server))
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway.url))[0] == 200
        [first] = token_server.issued()
        token_server.revoke(first)  # unexpired, but the upstream now answers 535 to it
        assert (await post(session, gateway.url))[0] == 200
        assert len(token_server.issued()) == 2, "one new token, not a loop"
        assert xoauth2_tokens(upstream)[-2:] == [first, token_server.issued()[1]]

        # A token refused again right after renewal is not renewed in a loop: one retry, then the 535 stands.
        upstream.token_check = lambda mailbox, token: False  # e.g. the mailbox permission was taken away
        for _ in range(4):
            status, body = await post(session, gateway.url)
            assert status == 503 and "credentials" in body["detail"], body
            assert body["upstream"]["code"] == 535, body
        assert len(token_server.issued()) <= 3, "at most one more token: fresh tokens refused too are not renewed again"


async def test_a_refused_client_secret_is_reported_and_leaves_other_accounts_alone(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    token_server.add_client("other", secret="the-real-secret", mailboxes=["news@shop.example"])
    accounts = tmp_path / "accounts.yaml"
    good = oauth2_yaml(upstream, test_ca, token_server)
    wrong = oauth2_yaml(upstream, test_ca, token_server, name="news", client_id="other", mailbox="news@shop.example")
    gateway = await start(serve, accounts, good + "---\n" + wrong)  # "news" sends the sentinel, not its secret
    await gateway.wait_output("AADSTS7000215")
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, gateway.url, "shop/news", "news@shop.example")
        assert status == 503, body
        assert "invalid_client" in body["detail"] and "AADSTS7000215" in body["detail"]
        assert (await post(session, gateway.url))[0] == 200
        await asyncio.sleep(2)
    refused = token_server.count("refused")
    assert 1 <= refused <= 3, f"a refused secret is retried with a long backoff, not in a loop ({refused} requests)"
    assert gateway.process.poll() is None
    assert "shop/news" in gateway.output()


async def test_rotating_the_client_secret_mid_traffic_fails_no_send(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    accounts = tmp_path / "accounts.yaml"
    gateway = await start(serve, accounts, oauth2_yaml(upstream, test_ca, token_server))
    rotated = SENTINEL + "-rotated"
    statuses = []
    async with aiohttp.ClientSession() as session:
        for index in range(30):
            if index == 10:
                token_server.set_client_secret("app", rotated)  # the provider's side first, then the Secret
                write_atomically(accounts, oauth2_yaml(upstream, test_ca, token_server, secret=rotated))
            statuses.append((await post(session, gateway.url))[0])
            await asyncio.sleep(0.1)
        for _ in range(100):  # the reload is polled every 0.05 s; the new token follows at once
            if len(token_server.issued()) >= 2:
                break
            await asyncio.sleep(0.1)
        assert (await post(session, gateway.url))[0] == 200
    assert statuses == [200] * 30
    assert len(token_server.issued()) == 2, "the new secret's token is fetched at once"
    assert token_server.count("refused") == 0
    assert xoauth2_tokens(upstream)[-1] == token_server.issued()[-1]


async def test_token_endpoint_down_backs_off_then_recovers(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    token_server.down = True
    accounts = tmp_path / "accounts.yaml"
    gateway = await start(serve, accounts, oauth2_yaml(upstream, test_ca, token_server))
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, gateway.url)
        assert status == 503 and "OAuth2" in body["detail"], body
        await asyncio.sleep(3)
        attempts = token_server.count("down")
        assert 2 <= attempts <= 6, f"exponential backoff, not a hot loop ({attempts} requests in ~3 s)"
        token_server.down = False
        for _ in range(60):  # the next request is due within the backoff (a few seconds by now)
            if (status := (await post(session, gateway.url))[0]) == 200:
                break
            await asyncio.sleep(0.5)
        assert status == 200


async def test_the_smtp_ingress_sends_through_an_oauth2_account(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    """An app with a plain SMTP login to the gateway; the gateway does OAuth2 upstream for it."""
    smtp_port = _free_port()
    ingress = ("--smtp-port", str(smtp_port), "--smtp-host", "127.0.0.1", "--smtp-trusted-networks", "127.0.0.0/8")
    await start(serve, tmp_path / "accounts.yaml", oauth2_yaml(upstream, test_ca, token_server), *ingress)

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            return client.sendmail(MAILBOX, ["rcpt@example.org"], f"From: {MAILBOX}\r\nSubject: x\r\n\r\nvia smtp\r\n".encode())

    assert await asyncio.to_thread(send) == {}
    [received] = await asyncio.to_thread(upstream.wait_messages, 1)
    assert received.login == MAILBOX and b"via smtp" in received.data
    assert xoauth2_tokens(upstream) == token_server.issued()


async def test_google_service_accounts_and_certificate_credentials_send_too(
    tmp_path: Path, upstream: Upstream, test_ca: TestCA, token_server: TokenServer, serve
) -> None:
    """The two other credentials, as users put them in Secrets: a Google JSON key and a kubernetes.io/tls pair."""
    import json

    from tests.oauth2_server import certificate_credential, service_account_key

    google_key = service_account_key()
    token_server.add_service_account(google_key.client_email, google_key.public_key_pem, google_key.key_id)
    certificate = certificate_credential("ec")
    token_server.add_client("cert-app", certificate_pem=certificate.certificate_pem, mailboxes=["orders@shop.example"])
    base = oauth2_yaml(upstream, test_ca, token_server, name="support", mailbox="support@shop.example")
    key_file = json.dumps(google_key.json(token_server.token_url("google")))
    google = base.replace(f'stringData: {{clientSecret: "{SENTINEL}"}}', f"stringData: {{serviceAccountKey: {key_file}}}")
    google = google.replace("provider: microsoft", "provider: google").replace("      tenantId: contoso\n", "")
    google = google.replace("      clientId: app\n", "")
    cert = oauth2_yaml(upstream, test_ca, token_server, name="orders", client_id="cert-app", mailbox="orders@shop.example")
    pair = json.dumps({"tls.key": certificate.private_key_pem, "tls.crt": certificate.certificate_pem})
    cert = cert.replace(f'stringData: {{clientSecret: "{SENTINEL}"}}', f"type: kubernetes.io/tls\nstringData: {pair}")
    cert = cert.replace("      clientId: cert-app\n", "      clientId: cert-app\n      clientAuthentication: certificate\n")
    gateway = await start(serve, tmp_path / "accounts.yaml", google + "---\n" + cert)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, gateway.url, "shop/support", "support@shop.example"))[0] == 200
        assert (await post(session, gateway.url, "shop/orders", "orders@shop.example"))[0] == 200
    assert {(record.grant_type, record.outcome) for record in token_server.requests} == {
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", "issued"),
        ("client_credentials", "issued"),
    }
    assert {login[1] for login in upstream.counters.logins} == {"support@shop.example", "orders@shop.example"}
    assert google_key.private_key_pem.splitlines()[1] not in gateway.output()
    assert certificate.private_key_pem.splitlines()[1] not in gateway.output()
