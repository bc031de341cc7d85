"""OAuth2 in a cluster (issue 14): the operator holds the credential, obtains tokens and pushes them to the gateways.

Real parts: the session's kube-apiserver, the operator and two gateways as
processes, the test token endpoint (which verifies the client secret and
issues tokens that live a few seconds) and an aiosmtpd upstream with STARTTLS
that accepts AUTH XOAUTH2 only for unexpired tokens that endpoint issued for
the mailbox. Loads are bounded in count and time.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.operator.harness import Mesh, eventually, http
from tests.oauth2_server import TokenServer
from tests.smtp_servers import TestCA, Upstream

pytestmark = pytest.mark.k8s

MAILBOX = "alerts@shop.example"
LIFETIME = 4.0


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    with TokenServer(lifetime=LIFETIME) as server:
        yield server


def oauth2_spec(upstream: Upstream, ca: TestCA, server: TokenServer, secret: str, client_id: str, mailbox: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": upstream.port, "tls": "starttls", "caCertificate": ca.ca_pem},
        "auth": {
            "method": "oauth2",
            "secretRef": {"name": secret},
            "oauth2": {
                "provider": "microsoft",
                "tenantId": "contoso",
                "clientId": client_id,
                "mailbox": mailbox,
                "tokenUrl": server.token_url("contoso"),
            },
        },
        "senders": [mailbox],
        "pool": {"maxConnections": 2, "maxMessagesPerConnection": 1, "acquireTimeoutSeconds": 10},
    }


def test_the_operator_keeps_every_gateway_supplied_with_fresh_tokens(
    mesh: Mesh, upstream_factory, test_ca: TestCA, token_server: TokenServer
) -> None:
    client_secret = f"SENTINEL-client-secret-{secrets.token_hex(8)}"
    wrong_secret = f"SENTINEL-wrong-secret-{secrets.token_hex(8)}"
    token_server.add_client("app", secret=client_secret, mailboxes=[MAILBOX])
    token_server.add_client("news-app", secret=f"SENTINEL-news-{secrets.token_hex(8)}", mailboxes=["news@shop.example"])
    upstream = upstream_factory(tls="starttls", token_check=token_server.is_valid)
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    operator = mesh.operator("--standalone", "--advertise-address", "127.0.0.1")
    mesh.secret("alerts-oauth2", {"clientSecret": client_secret})
    mesh.apply_account("alerts", upstream, **oauth2_spec(upstream, test_ca, token_server, "alerts-oauth2", "app", MAILBOX))
    mesh.wait_condition("alerts", "Ready", "True", timeout=30)
    key = f"{mesh.namespace}/alerts"

    def send_round() -> list[int]:
        return [gateway.post(key, **{"from": MAILBOX}).status for gateway in gateways]

    # 1. Continuous sending through both gateways across several token lifetimes: no failed send,
    #    and one token request per renewal for the whole cluster, not one per gateway.
    statuses: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < 3 * LIFETIME:
        statuses += send_round()
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert statuses and set(statuses) == {200}, statuses
    issued = token_server.issued()
    renewals = math.ceil(elapsed / (LIFETIME * 2 / 3)) + 2
    assert 3 <= len(issued) <= renewals, f"{len(issued)} tokens in {elapsed:.0f}s: one per renewal, not per gateway"
    used = [login[2] for login in upstream.counters.logins if login[0] == "XOAUTH2"]
    assert len(set(used)) >= 3 and set(used) <= set(issued)
    assert operator.metric("mailgate_operator_oauth2_token_requests_total", account=key, outcome="issued") >= 3
    assert operator.metric("mailgate_operator_oauth2_token_remaining_seconds", account=key) > 0

    # 2. A token the upstream refuses (535) while unexpired: the gateway asks the operator, one new
    #    token is pushed, and the message goes out on the retry. Tokens now live long, so no
    #    scheduled renewal can stand in for the refresh the gateway asks for.
    token_server.lifetime = 600
    long_lived = len(token_server.issued()) + 1
    eventually(lambda: len(token_server.issued()) >= long_lived, "the next renewal, with a long lifetime")
    eventually(lambda: send_round() == [200, 200], "both gateways to send with the long-lived token")
    before = len(token_server.issued())
    for token in token_server.issued():
        token_server.revoke(token)
    assert send_round() == [200, 200]
    assert len(token_server.issued()) == before + 1, "one new token for the cluster, asked for by the first refusal"
    refresh = f"http://127.0.0.1:{operator.metrics_port}/v1/token-refresh"
    body = {"namespace": mesh.namespace, "name": "alerts", "rejectedToken": token_server.issued()[-1]}
    assert http("POST", refresh, body)[0] == 401
    assert http("POST", refresh, body, token=mesh.token)[0] == 400, "a token is never accepted in place of its fingerprint"
    assert http("POST", refresh, {**body, "rejectedToken": "0" * 16}, token=mesh.token)[0] == 204
    assert len(token_server.issued()) == before + 1, "a stale fingerprint renews nothing"

    # 3. Rotating the client secret mid-traffic: no failed send, the next token comes from the new secret.
    #    Counted from before the Secret changes: the operator sees the change and has the new token
    #    within milliseconds, at times before this process reads the PATCH's answer (a loaded machine);
    #    counted after, the new token would already be in the count and none would follow it.
    rotated = f"SENTINEL-rotated-{secrets.token_hex(8)}"
    token_server.set_client_secret("app", rotated)
    before = len(token_server.issued())
    mesh.secret("alerts-oauth2", {"clientSecret": rotated})
    statuses = []

    def sent_until_renewed() -> bool:
        """Keep sending (at least 10 rounds) until a token from the new secret is issued."""
        statuses.extend(send_round())
        time.sleep(0.2)
        return len(statuses) >= 20 and len(token_server.issued()) > before

    eventually(sent_until_renewed, "a token issued with the rotated secret, while sending")
    assert set(statuses) == {200}, statuses
    assert len(token_server.issued()) > before and token_server.count("refused") == 0

    # 4. A wrong client secret on another account: a condition and an Event with the endpoint's
    #    error, no crash loop, and the first account unaffected.
    mesh.secret("news-oauth2", {"clientSecret": wrong_secret})
    mesh.apply_account("news", upstream, **oauth2_spec(upstream, test_ca, token_server, "news-oauth2", "news-app",
                                                         "news@shop.example"))  # fmt: skip
    condition = mesh.wait_condition("news", "CredentialsResolved", "False", "TokenRequestRefused", timeout=30)
    assert "invalid_client" in condition["message"] and "AADSTS7000215" in condition["message"]
    events = eventually(
        lambda: [e for e in mesh.events("news") if e["reason"] == "TokenRequestRefused"] or None, "a TokenRequestRefused Event"
    )
    assert events[0]["type"] == "Warning" and "AADSTS7000215" in events[0]["message"]
    assert send_round() == [200, 200]
    operator.check_alive()
    time.sleep(2)
    assert token_server.count("refused") <= 2, "a refused secret is retried with a long backoff"

    # No credential or token anywhere a user or an attacker could read it.
    texts = [operator.log, *(gateway.log_path.read_text() for gateway in gateways)]
    texts += [json.dumps(mesh.account(name)) for name in ("alerts", "news")]
    texts += [json.dumps(mesh.events(name)) for name in ("alerts", "news")]
    texts += [json.dumps(gateway.status()) for gateway in gateways]
    texts += [str(http("GET", url)[1]) for url in (f"http://127.0.0.1:{operator.metrics_port}/metrics",
                                                   *(f"{gateway.send_url}/metrics" for gateway in gateways))]  # fmt: skip
    for secret in (client_secret, rotated, wrong_secret, *token_server.issued()):
        assert not any(secret in text for text in texts), "a secret or token leaked"
