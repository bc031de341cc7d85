"""Who may send: SMTP AUTH only over TLS (or plaintext from trusted networks when allowed), relay without AUTH
only from listed networks, client logins that belong to one account."""

from __future__ import annotations

import base64
import logging
import smtplib

import pytest

from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, account, in_thread, transaction
from tests.smtp_servers import Upstream

MESSAGE = b"From: app@shop.example\r\nSubject: hi\r\n\r\nhello\r\n"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_auth_is_neither_offered_nor_accepted_before_starttls(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def go() -> tuple[dict[str, str], tuple[int, bytes], tuple[int, bytes], dict[str, str]]:
        with gw.smtp(starttls=False) as client:
            before = dict(client.esmtp_features)
            attempt = client.docmd("AUTH", "PLAIN " + plain("app", "pw"))
            mail = client.mail("app@shop.example")
            client.rset()
            client.starttls(context=gw.tls.client_context())
            client.ehlo()
            return before, attempt, mail, dict(client.esmtp_features)

    before, attempt, mail, after = await in_thread(go)
    assert "auth" not in before and "starttls" in before
    assert attempt == (538, b"5.7.11 Encryption required for requested authentication mechanism")
    assert mail == (530, b"5.7.0 Authentication required")
    assert after["auth"].split() == ["LOGIN", "PLAIN"] and "starttls" not in after


@pytest.mark.parametrize(
    ("user", "password"),
    [("app", "wrong"), ("app", ""), ("nobody", "pw"), ("APP", "pw")],
)
async def test_wrong_credentials_are_refused(gw: IngressGateway, upstream: Upstream, user: str, password: str) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def go() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with gw.smtp() as client:
            refused = client.docmd("AUTH", "PLAIN " + plain(user, password))
            return refused, client.mail("app@shop.example")

    refused, mail = await in_thread(go)
    assert refused == (535, b"5.7.8 Authentication credentials invalid")
    assert mail[0] == 530


async def test_auth_login_and_plain_both_work(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "p4ss-w0rd"}))

    def go(mechanism: str) -> list[tuple[int, str]]:
        with gw.smtp() as client:
            client.user, client.password = "app", "p4ss-w0rd"
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
            return transaction(client, "app@shop.example", ["ops@example.org"], MESSAGE)

    assert (await in_thread(go, "LOGIN"))[-1][0] == 250
    assert (await in_thread(go, "PLAIN"))[-1][0] == 250
    assert len(upstream.messages) == 2


async def test_a_rotated_password_stops_working_at_once(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "old"}))

    def login(password: str) -> int:
        with gw.smtp() as client:
            return client.docmd("AUTH", "PLAIN " + plain("app", password))[0]

    assert await in_thread(login, "old") == 235
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "new"}))
    assert await in_thread(login, "old") == 535
    assert await in_thread(login, "new") == 235


async def test_a_login_listed_by_two_accounts_logs_in_nowhere(
    gw: IngressGateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw.configure(
        account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}),
        account(upstream, "other", senders=["*@other.example"], clients={"app": "pw"}),
    )

    def login() -> int:
        with gw.smtp() as client:
            return client.docmd("AUTH", "PLAIN " + plain("app", "pw"))[0]

    with caplog.at_level(logging.WARNING, logger="mailgate.ingress.clients"):
        assert await in_thread(login) == 535
    assert "SMTP login 'app' is listed by several accounts (apps/other, apps/shop)" in caplog.text
    assert gw.ingress.directory.conflicts() == {"app": ("apps/other", "apps/shop")}


async def test_repeated_failed_logins_end_the_session(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def go() -> list[int]:
        codes = []
        with gw.smtp() as client:
            for _ in range(6):
                codes.append(client.docmd("AUTH", "PLAIN " + plain("app", "guess"))[0])
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        return codes

    assert await in_thread(go) == [535] * 5 + [421]


async def test_untrusted_clients_cannot_relay_without_auth_even_over_tls(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"]))

    def go() -> list[tuple[int, str]]:
        with gw.smtp() as client:
            return transaction(client, "app@shop.example", ["ops@example.org"], MESSAGE)

    assert await in_thread(go) == [(530, "5.7.0 Authentication required")]
    assert upstream.messages == []


async def test_trusted_networks_relay_without_auth(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(trusted_networks="10.0.0.0/8, 127.0.0.0/8")
    gw.configure(account(upstream, "shop", senders=["*@shop.example"]))

    def go() -> list[tuple[int, str]]:
        with gw.smtp(starttls=False) as client:
            assert "auth" not in client.esmtp_features  # plaintext AUTH is not allowed unless asked for
            return transaction(client, "app@shop.example", ["ops@example.org"], MESSAGE)

    assert (await in_thread(go))[-1][0] == 250
    assert b"with ESMTP id " in upstream.messages[0].data


async def test_plaintext_auth_only_from_trusted_networks_and_only_when_allowed(
    ingress_factory: IngressFactory, upstream: Upstream
) -> None:
    trusted = await ingress_factory(trusted_networks="127.0.0.1", allow_plaintext_auth=True)
    elsewhere = await ingress_factory(trusted_networks="192.0.2.0/24", allow_plaintext_auth=True)
    for gw in (trusted, elsewhere):
        gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def login(gw: IngressGateway) -> int:
        with gw.smtp(starttls=False) as client:
            return client.docmd("AUTH", "PLAIN " + plain("app", "pw"))[0]

    assert await in_thread(login, trusted) == 235
    assert await in_thread(login, elsewhere) == 538


async def test_implicit_tls_port(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(implicit_tls_port=0)
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def go() -> tuple[dict[str, str], list[tuple[int, str]]]:
        context = gw.tls.client_context()
        with smtplib.SMTP_SSL(HOST, gw.tls_port, local_hostname="client.test", context=context, timeout=10) as client:
            client.ehlo()
            features = dict(client.esmtp_features)
            client.login("app", "pw")
            return features, transaction(client, "app@shop.example", ["ops@example.org"], MESSAGE)

    features, replies = await in_thread(go)
    assert "starttls" not in features and "auth" in features
    assert replies[-1][0] == 250
    assert b"with ESMTPSA id " in upstream.messages[0].data
