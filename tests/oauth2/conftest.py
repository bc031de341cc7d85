"""A real token endpoint per test, a token client closed after it, and key material made once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from mailgate.oauth2 import AccessToken, ClientSecretGrant, TokenEndpoint, TokenError
from tests.oauth2_server import (
    CertificateCredential,
    ServiceAccountKey,
    TokenServer,
    certificate_credential,
    service_account_key,
)

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "Xy8Q~s3cr3t.value_with-special+chars: %and space"  # Entra secrets carry ~ . _ -; the rest tests §2.3.1 encoding
MAILBOX = "relay@example.com"


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    async with TokenServer() as server:
        server.add_client(CLIENT_ID, secret=SECRET, mailboxes=[MAILBOX])
        yield server


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    client = TokenEndpoint(timeout=5.0)
    yield client
    await client.close()


@pytest.fixture
def secret_grant(token_server: TokenServer) -> ClientSecretGrant:
    return ClientSecretGrant(token_server.token_url(), CLIENT_ID, SECRET, scope="https://outlook.office365.com/.default")


@pytest.fixture(scope="session")
def rsa_credential() -> CertificateCredential:
    return certificate_credential("rsa")


@pytest.fixture(scope="session")
def ec_credential() -> CertificateCredential:
    return certificate_credential("ec")


@pytest.fixture(scope="session")
def sa_key() -> ServiceAccountKey:
    return service_account_key()


@dataclass
class Observed:
    """A TokenObserver that remembers what it was told."""

    issued: list[AccessToken] = field(default_factory=list)
    failed: list[tuple[TokenError, float]] = field(default_factory=list)

    def token_issued(self, key: str, token: AccessToken) -> None:
        self.issued.append(token)

    def token_failed(self, key: str, error: TokenError, retry_in: float) -> None:
        self.failed.append((error, retry_in))
