"""TokenEndpoint against the real test token server: every grant works, every failure is a clean TokenError."""

from __future__ import annotations

import socket
import time

import pytest

from mailgate.oauth2 import (
    ClientAssertionGrant,
    ClientSecretGrant,
    JwtBearerGrant,
    TokenEndpoint,
    TokenError,
    google_service_account_grant,
    token_fingerprint,
)
from tests.oauth2_server import CertificateCredential, ServiceAccountKey, TokenServer, certificate_credential
from tests.smtp_servers import TestCA

from .conftest import CLIENT_ID, MAILBOX, SECRET


@pytest.mark.parametrize("method", ["basic", "post"])
async def test_client_secret_issues_a_token_the_provider_accepts(
    token_server: TokenServer, endpoint: TokenEndpoint, method: str
) -> None:
    token_server.lifetime = 120
    grant = ClientSecretGrant(token_server.token_url(), CLIENT_ID, SECRET, scope="s", method=method)  # type: ignore[arg-type]
    before = time.time()
    token = await endpoint.fetch(grant)
    assert token_server.is_valid(MAILBOX, token.value)
    assert not token_server.is_valid("other@example.com", token.value)
    assert token.lifetime == 120 and before + 120 <= token.expires_at <= time.time() + 120
    assert token_server.requests[-1].auth == method and token_server.requests[-1].outcome == "issued"
    assert token.value not in repr(token) and token.fingerprint() == token_fingerprint(token.value)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_certificate_client_assertion_issues_a_token(
    token_server: TokenServer,
    endpoint: TokenEndpoint,
    rsa_credential: CertificateCredential,
    ec_credential: CertificateCredential,
    kind: str,
) -> None:
    credential = rsa_credential if kind == "rsa" else ec_credential
    token_server.add_client("cert-app", certificate_pem=credential.certificate_pem, mailboxes=[MAILBOX])
    url = token_server.token_url("contoso")
    grant = ClientAssertionGrant(url, "cert-app", credential.private_key_pem, credential.certificate_pem)
    token = await endpoint.fetch(grant)
    assert token_server.is_valid(MAILBOX, token.value)
    assert token_server.requests[-1].auth == "assertion"


async def test_assertion_signed_by_an_unregistered_certificate_is_refused(
    token_server: TokenServer, endpoint: TokenEndpoint, rsa_credential: CertificateCredential
) -> None:
    token_server.add_client("cert-app", certificate_pem=rsa_credential.certificate_pem, mailboxes=[MAILBOX])
    other = certificate_credential("rsa")
    grant = ClientAssertionGrant(token_server.token_url(), "cert-app", other.private_key_pem, other.certificate_pem)
    with pytest.raises(TokenError) as caught:
        await endpoint.fetch(grant)
    assert (caught.value.error, caught.value.status, caught.value.retryable) == ("invalid_client", 401, False)
    assert "AADSTS700027" in caught.value.description


async def test_google_service_account_acts_as_any_mailbox(
    token_server: TokenServer, endpoint: TokenEndpoint, sa_key: ServiceAccountKey
) -> None:
    token_server.add_service_account(sa_key.client_email, sa_key.public_key_pem, key_id=sa_key.key_id)
    url = token_server.base_url + "/token"
    grant = google_service_account_grant(sa_key.json(url), "someone@example.com", "https://mail.google.com/")
    token = await endpoint.fetch(grant)
    assert token_server.is_valid("someone@example.com", token.value)
    assert not token_server.is_valid(MAILBOX, token.value)
    assert token_server.requests[-1].subject == "someone@example.com"

    stranger = JwtBearerGrant(url, "stranger@example.iam.gserviceaccount.com", "x@example.com", sa_key.private_key_pem, scope="s")
    with pytest.raises(TokenError) as caught:
        await endpoint.fetch(stranger)
    assert (caught.value.error, caught.value.status, caught.value.retryable) == ("invalid_grant", 400, False)
    no_scope = JwtBearerGrant(url, sa_key.client_email, "x@example.com", sa_key.private_key_pem, sa_key.key_id)
    with pytest.raises(TokenError, match="invalid_scope"):
        await endpoint.fetch(no_scope)


async def test_wrong_secret_is_a_refusal_that_explains_itself_without_the_secret(
    token_server: TokenServer, endpoint: TokenEndpoint
) -> None:
    wrong = "Wrong~secret.value-1234567890"
    for method in ("basic", "post"):
        grant = ClientSecretGrant(token_server.token_url(), CLIENT_ID, wrong, method=method)
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(grant)
        error = caught.value
        assert (error.error, error.status, error.retryable) == ("invalid_client", 401, False)
        assert "AADSTS7000215" in error.description
        assert str(error).startswith(f"token endpoint {token_server.token_url()} refused the request (HTTP 401): invalid_client:")
        assert wrong not in str(error) + repr(error) + error.description
    unknown = ClientSecretGrant(token_server.token_url(), "no-such-app", SECRET)
    with pytest.raises(TokenError, match="AADSTS700016") as caught:
        await endpoint.fetch(unknown)
    assert (caught.value.error, caught.value.status) == ("invalid_client", 400)


async def test_echoed_secrets_are_scrubbed_and_descriptions_cleaned(
    token_server: TokenServer, endpoint: TokenEndpoint, secret_grant: ClientSecretGrant
) -> None:
    token_server.respond_with(400, {"error": "invalid_request", "error_description": f"bad value '{SECRET}'\r\nFAKE LOG LINE"})
    with pytest.raises(TokenError) as caught:
        await endpoint.fetch(secret_grant)
    assert SECRET not in str(caught.value)
    assert "[redacted]" in caught.value.description
    assert "\r" not in str(caught.value) and "\n" not in str(caught.value)
    token_server.respond_with(400, {"error": "invalid_request", "error_description": "x" * 5000})
    with pytest.raises(TokenError) as caught:
        await endpoint.fetch(secret_grant)
    assert 250 <= len(caught.value.description) <= 300


async def test_malformed_success_answers_are_invalid_responses_that_never_quote_the_token(
    token_server: TokenServer, endpoint: TokenEndpoint, secret_grant: ClientSecretGrant
) -> None:
    leaked = "eyJ0eXAiOiJKV1QiLCJub25jZSI6IjEyMzQ1Njc4OTAifQ.secret-token"
    answers: list[object] = [
        {"access_token": leaked, "token_type": "mac", "expires_in": 3600},
        {"access_token": leaked, "token_type": "Bearer", "expires_in": "soon"},
        {"access_token": leaked, "token_type": "Bearer", "expires_in": 0},
        {"token_type": "Bearer", "expires_in": 3600},
        [leaked],
        f"access_token={leaked}&token_type=bearer",  # form-encoded, as some old providers answered
    ]
    for answer in answers:
        token_server.respond_with(200, answer if isinstance(answer, dict) else str(answer))
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(secret_grant)
        assert (caught.value.error, caught.value.retryable) == ("invalid_response", True), answer
        assert leaked not in str(caught.value) and "secret-token" not in str(caught.value)


async def test_lenient_where_providers_differ(
    token_server: TokenServer, endpoint: TokenEndpoint, secret_grant: ClientSecretGrant
) -> None:
    token_server.respond_with(200, {"access_token": "t1", "token_type": "bearer", "expires_in": "120"}, "text/plain")
    assert (await endpoint.fetch(secret_grant)).lifetime == 120
    token_server.respond_with(200, {"access_token": "t2", "token_type": "Bearer"})
    assert (await endpoint.fetch(secret_grant)).lifetime == 3600


async def test_outages_are_retryable_and_redirects_are_not_followed(
    token_server: TokenServer, secret_grant: ClientSecretGrant
) -> None:
    endpoint = TokenEndpoint(timeout=0.5)
    try:
        token_server.down = True
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(secret_grant)
        assert (caught.value.error, caught.value.status, caught.value.retryable) == ("http_503", 503, True)
        assert "Service Unavailable" not in str(caught.value)  # the HTML body is not the message
        token_server.down = False

        token_server.respond_with(429, {"error": "temporarily_unavailable", "error_description": "slow down"})
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(secret_grant)
        assert (caught.value.error, caught.value.retryable) == ("temporarily_unavailable", True)

        token_server.respond_with(302, "", "text/plain", {"Location": token_server.token_url("elsewhere")})
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(secret_grant)
        assert (caught.value.error, caught.value.retryable) == ("http_302", False)
        token_server.respond_normally()

        token_server.stall = True
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(secret_grant)
        assert (caught.value.error, caught.value.retryable) == ("timeout", True)
        token_server.stall = False

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        nowhere = ClientSecretGrant(f"http://127.0.0.1:{closed_port}/t/token?x=1", CLIENT_ID, SECRET)
        with pytest.raises(TokenError) as caught:
            await endpoint.fetch(nowhere)
        assert (caught.value.error, caught.value.retryable) == ("unreachable", True)
        assert caught.value.url == f"http://127.0.0.1:{closed_port}/t/token"
        assert (await endpoint.fetch(secret_grant)).value in token_server.issued(CLIENT_ID)  # and it works again
    finally:
        await endpoint.close()


async def test_https_endpoint_is_trusted_through_ca_pem_only(test_ca: TestCA) -> None:
    async with TokenServer(ssl_context=test_ca.server_context()) as server:
        server.add_client(CLIENT_ID, secret=SECRET, mailboxes=[MAILBOX])
        grant = ClientSecretGrant(server.token_url(), CLIENT_ID, SECRET)
        assert grant.token_url.startswith("https://")
        trusting, untrusting = TokenEndpoint(ca_pem=test_ca.ca_pem, timeout=5), TokenEndpoint(timeout=5)
        try:
            assert server.is_valid(MAILBOX, (await trusting.fetch(grant)).value)
            with pytest.raises(TokenError) as caught:
                await untrusting.fetch(grant)
            assert caught.value.error == "unreachable" and "certificate" in caught.value.description.lower()
            assert server.count() == 1  # the untrusted endpoint never saw the request (nor the secret)
        finally:
            await trusting.close()
            await untrusting.close()
