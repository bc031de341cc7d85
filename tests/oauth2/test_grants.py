"""Grants build the requests providers document, and broken key material fails at configuration time, secret-free."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import unquote_plus

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailgate.oauth2 import (
    ClientAssertionGrant,
    ClientSecretGrant,
    Grant,
    GrantError,
    JwtBearerGrant,
    check_grant,
    google_service_account_grant,
    token_request,
)
from tests.oauth2_server import CertificateCredential, ServiceAccountKey

from .conftest import CLIENT_ID, SECRET

URL = "https://login.example.test/tenant/oauth2/v2.0/token"
NOW = 1_700_000_000.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_client_secret_basic_form_urlencodes_both_parts_and_keeps_the_secret_out_of_the_form() -> None:
    grant = ClientSecretGrant(URL, "id:with+odd chars", SECRET, scope="s1 s2", audience="https://api.example.test")
    request = token_request(grant, NOW)
    user, colon, password = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert colon and ":" not in password and " " not in password  # encoded before joining (RFC 6749 §2.3.1)
    assert (unquote_plus(user), unquote_plus(password)) == ("id:with+odd chars", SECRET)
    assert request.form == {"grant_type": "client_credentials", "scope": "s1 s2", "audience": "https://api.example.test"}
    assert request.url == URL


def test_client_secret_post_sends_the_credentials_in_the_form_only() -> None:
    request = token_request(ClientSecretGrant(URL, CLIENT_ID, SECRET, method="post"), NOW)
    assert request.form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    assert "Authorization" not in request.headers


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_client_assertion_carries_microsofts_claims_and_both_thumbprints(
    kind: str, rsa_credential: CertificateCredential, ec_credential: CertificateCredential
) -> None:
    credential = rsa_credential if kind == "rsa" else ec_credential
    grant = ClientAssertionGrant(URL, CLIENT_ID, credential.private_key_pem, credential.certificate_pem, scope="s")
    check_grant(grant)
    form = token_request(grant, NOW).form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert (form["grant_type"], form["client_id"], form["scope"]) == ("client_credentials", CLIENT_ID, "s")
    certificate = x509.load_pem_x509_certificate(credential.certificate_pem.encode())
    der = certificate.public_bytes(serialization.Encoding.DER)
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["alg"] == ("RS256" if kind == "rsa" else "ES256")
    assert header["x5t#S256"] == _b64url(hashlib.sha256(der).digest())
    assert header["x5t"] == _b64url(hashlib.sha1(der).digest())
    claims = jwt.decode(
        form["client_assertion"], certificate.public_key(), algorithms=[header["alg"]], audience=URL,  # type: ignore[arg-type]
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )  # fmt: skip
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert (claims["nbf"], claims["iat"], claims["exp"]) == (int(NOW), int(NOW), int(NOW) + 300)
    second = jwt.decode(token_request(grant, NOW).form["client_assertion"], options={"verify_signature": False})
    assert second["jti"] != claims["jti"]  # a fresh id per assertion


def test_google_key_file_becomes_a_delegating_jwt_bearer_grant(sa_key: ServiceAccountKey) -> None:
    grant = google_service_account_grant(
        sa_key.json("https://oauth2.googleapis.com/token"), "user@example.com", "https://mail.google.com/"
    )
    assert (grant.token_url, grant.issuer, grant.subject, grant.key_id) == (
        "https://oauth2.googleapis.com/token",
        sa_key.client_email,
        "user@example.com",
        sa_key.key_id,
    )
    request = token_request(grant, NOW)
    assert request.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert jwt.get_unverified_header(request.form["assertion"])["kid"] == sa_key.key_id
    claims = jwt.decode(
        request.form["assertion"], sa_key.public_key_pem, algorithms=["RS256"], audience=grant.token_url,
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert claims == {
        "iss": sa_key.client_email,
        "sub": "user@example.com",
        "scope": "https://mail.google.com/",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    override = google_service_account_grant(sa_key.json("https://x.test/token"), "u@example.com", "s", token_url=URL)
    assert override.token_url == URL


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda key: key.pop("client_email"), "serviceAccountKey: missing client_email"),
        (lambda key: key.pop("private_key"), "serviceAccountKey: missing private_key"),
        (lambda key: key.update(type="authorized_user"), "serviceAccountKey: type is not service_account"),
        (lambda key: key.update(private_key="-----BEGIN PRIVATE KEY-----\nnot a key\n"), "serviceAccountKey: private_key"),
    ],
)
def test_broken_google_key_files_name_the_field_never_a_value(sa_key: ServiceAccountKey, change: object, message: str) -> None:
    key = json.loads(sa_key.json("https://oauth2.googleapis.com/token"))
    change(key)  # type: ignore[operator]
    with pytest.raises(GrantError) as caught:
        google_service_account_grant(json.dumps(key), "user@example.com", "https://mail.google.com/")
    assert str(caught.value).startswith(message)
    assert sa_key.private_key_pem.splitlines()[1] not in str(caught.value)
    with pytest.raises(GrantError, match=r"^serviceAccountKey is not JSON$"):
        google_service_account_grant(sa_key.private_key_pem, "user@example.com", "s")


def test_bad_key_material_fails_check_grant_naming_the_part(
    rsa_credential: CertificateCredential, ec_credential: CertificateCredential
) -> None:
    garbage = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdr\n-----END PRIVATE KEY-----\n"
    cases: list[tuple[Grant, str]] = [
        (ClientAssertionGrant(URL, CLIENT_ID, garbage, rsa_credential.certificate_pem), "privateKey is not"),
        (ClientAssertionGrant(URL, CLIENT_ID, rsa_credential.private_key_pem, "not a certificate"), "certificate is not"),
        (ClientAssertionGrant(URL, CLIENT_ID, rsa_credential.private_key_pem, ec_credential.certificate_pem), "certificate does"),
        (JwtBearerGrant(URL, "sa@example.test", "u@example.com", rsa_credential.certificate_pem), "privateKey is not"),
        (ClientSecretGrant(URL, CLIENT_ID, ""), "clientSecret is empty"),
        (ClientSecretGrant("login.example.test/token", CLIENT_ID, SECRET), "tokenUrl must be"),
    ]
    for grant, message in cases:
        with pytest.raises(GrantError) as caught:
            check_grant(grant)
        assert str(caught.value).startswith(message), grant
        assert rsa_credential.private_key_pem.splitlines()[1] not in str(caught.value)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_pem = weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(GrantError, match="privateKey: RSA keys need at least 2048 bits"):
        check_grant(JwtBearerGrant(URL, "sa@example.test", "u@example.com", weak_pem))
    with pytest.raises(GrantError, match="privateKey is not"):  # also at signing time, should check_grant have been skipped
        token_request(JwtBearerGrant(URL, "sa@example.test", "u@example.com", garbage), NOW)


def test_reprs_show_no_secret_or_key(rsa_credential: CertificateCredential) -> None:
    grants: list[Grant] = [
        ClientSecretGrant(URL, CLIENT_ID, SECRET),
        ClientAssertionGrant(URL, CLIENT_ID, rsa_credential.private_key_pem, rsa_credential.certificate_pem),
        JwtBearerGrant(URL, "sa@example.test", "u@example.com", rsa_credential.private_key_pem),
    ]
    for grant in grants:
        request = token_request(grant, NOW)
        text = repr(grant) + repr(request)
        assert SECRET not in text and "PRIVATE KEY" not in text
        assert all(value not in text for value in request.form.values() if len(value) > 40)  # the assertions
        assert all(value not in text for value in request.headers.values() if value.startswith("Basic"))
