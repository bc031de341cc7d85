"""The admin API's payload: what the operator (or standalone mode) pushes to a gateway.

Shared by ``mailgate.operator`` and ``mailgate.gateway`` so that neither
depends on the other. Credentials travel resolved (the gateway has no access
to Secrets); they are ``SecretStr`` so that a ``repr`` or a log line of a
snapshot never shows them, and are written out only when serialised to JSON
for the wire.
"""

from __future__ import annotations

import hashlib

from pydantic import Field, SecretStr, field_serializer

from .spec import DNS_LABEL_PATTERN, SmtpAccountSpec, _Model


class Credentials(_Model):
    """Resolved upstream credentials (from the account's Secret).

    For ``auth.method: oauth2`` one of two forms: ``token`` with
    ``tokenExpiresAt`` (an access token the operator obtained; the gateway never
    sees the long-lived credential), or ``oauth2Secret`` (the long-lived
    credential itself, as standalone mode loads it: the gateway then obtains
    its tokens itself).
    """

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    token_expires_at: float | None = Field(default=None, description="When ``token`` expires, in Unix seconds.")
    token_refresh_url: str | None = Field(
        default=None, description="Where the gateway asks for a new token when the upstream refuses this one (535)."
    )
    oauth2_secret: dict[str, SecretStr] | None = Field(
        default=None,
        description="The long-lived OAuth2 credential's Secret keys (clientSecret, tls.key, tls.crt, serviceAccountKey).",
    )

    webhook_secret: SecretStr | None = Field(
        default=None, description="spec.delivery.webhook's signing key (whsec_<base64>), from its Secret's webhookSecret."
    )

    @field_serializer("password", "token", "webhook_secret", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    @field_serializer("oauth2_secret", when_used="json")
    def _reveal_all(self, values: dict[str, SecretStr] | None) -> dict[str, str] | None:
        return {key: value.get_secret_value() for key, value in values.items()} if values is not None else None


class SmtpClientCredential(_Model):
    """An SMTP ingress login of an account: the username and a ``mailgate.passwords`` hash, never the password."""

    username: str = Field(min_length=1, max_length=256)
    password_hash: str = Field(min_length=1, max_length=512, repr=False)


class AccountShare(_Model):
    """This gateway's part of the cluster-wide limits, computed by the operator."""

    max_connections: int = Field(ge=0, description="Connections this gateway may open; 0 means forward to a peer.")
    messages_per_minute: int | None = Field(default=None, ge=0)
    peers: list[str] = Field(
        default_factory=list,
        description="Base URLs of gateways that hold a share, for a gateway whose own share is 0.",
    )


class AccountConfig(_Model):
    """One account as a gateway serves it."""

    namespace: str = Field(pattern=DNS_LABEL_PATTERN)
    name: str = Field(min_length=1, max_length=253)
    generation: int | None = None
    spec: SmtpAccountSpec
    credentials: Credentials = Field(default_factory=Credentials)
    share: AccountShare | None = Field(default=None, description="Absent: this gateway alone holds the whole limits.")
    smtp_clients: list[SmtpClientCredential] = Field(
        default_factory=list,
        description="Resolved spec.access.smtpClients, hashed with mailgate.passwords.hash_password by the sender.",
    )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ConfigSnapshot(_Model):
    """A full configuration; revisions only move forward (an older one is refused with 409)."""

    revision: int = Field(ge=0)
    accounts: list[AccountConfig] = Field(default_factory=list)


def config_digest(account: AccountConfig) -> str:
    """A digest of everything a gateway serves for an account, credentials included.

    The operator compares it with what each gateway reports in ``GET
    /v1/status`` to know which gateways are synced (a Secret rotation changes
    no generation but does change the digest). One-way, so safe to expose.
    """
    return hashlib.sha256(account.model_dump_json(by_alias=True).encode()).hexdigest()[:20]
