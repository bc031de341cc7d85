"""The SmtpAccount resource: one pydantic model, the single source of its schema.

The CRD in ``crds/`` is rendered from these models (``mailgate crd``), the
standalone gateway validates its YAML with them and the operator parses
objects with them, so the three can never disagree. Constraints the
apiserver must enforce live here as field bounds, patterns and CEL rules
(``x-kubernetes-validations``) rather than in code that runs later.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "mailgate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SmtpAccount"
PLURAL = "smtpaccounts"

# local@domain, *@domain or *@*.domain (any subdomain); IDN domains allowed as UTF-8.
SENDER_PATTERN = r"^(\*|[^@\s*]+)@(\*\.)?[^@\s*.]+(\.[^@\s*.]+)+$"
SERVICE_ACCOUNT_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _host_pattern() -> str:
    """A DNS name, an IPv4 address or a bare IPv6 address, written for both Python's ``re`` and Go's RE2.

    Names: RFC 1123 labels (letters, digits, inner hyphens, at most 63 each;
    IDNs in their ``xn--`` form), no trailing dot, and a last label that starts
    with a letter, so that digits and dots are always read as an IPv4 address
    (``1.2.3`` or ``01.2.3.4`` is neither). IPv6 without brackets and without a
    zone (``%eth0``), as the socket layer takes it. RE2 has no lookahead, so the
    IPv6 forms are spelled out by the number ``b`` of groups before ``::``
    (which stands for at least one group): at most ``7 - b`` groups after it,
    or ``5 - b`` and then an embedded IPv4 address (which counts as two).
    """
    label = "[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    last = "[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    octet = "(25[0-5]|(2[0-4]|1[0-9]|[1-9])?[0-9])"
    ipv4 = rf"({octet}\.){{3}}{octet}"
    group = "[0-9A-Fa-f]{1,4}"

    def repeat(atom: str, low: int, high: int) -> str:
        return "" if high == 0 else rf"({atom}){{{low}}}" if low == high else rf"({atom}){{{low},{high}}}"

    hex_forms = [rf"({group}:){{7}}{group}"]
    before_ipv4 = [rf"({group}:){{6}}"]
    for before in range(8):
        head = repeat(f"{group}:", before, before) + ":" if before else "::"
        if before < 7:
            hex_forms.append(rf"{head}({group}{repeat(f':{group}', 0, 6 - before)})?")
        else:
            hex_forms.append(head)
        if before <= 5:
            before_ipv4.append(head + repeat(f"{group}:", 0, 5 - before))
    ipv6 = "|".join(hex_forms) + f"|({'|'.join(before_ipv4)}){ipv4}"
    return rf"^(({label}\.)*{last}|{ipv4}|{ipv6})$"


HOST_PATTERN = _host_pattern()
HOST_MESSAGE = "must be a DNS name or an IP address (IPv6 without brackets), with no port, scheme or spaces"
_HOST = re.compile(HOST_PATTERN)

# Constrained strings: pydantic enforces them in standalone mode, the CRD carries them to the apiserver.
SenderPattern = Annotated[str, StringConstraints(pattern=SENDER_PATTERN, max_length=320)]
ServiceAccountName = Annotated[str, StringConstraints(pattern=SERVICE_ACCOUNT_PATTERN, max_length=317)]
NamespaceName = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]


class _Model(BaseModel):
    """camelCase on the wire (Kubernetes convention), snake_case in Python; unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False)


class TLSMode(str, Enum):
    implicit = "implicit"
    starttls = "starttls"
    none = "none"


class AuthMethod(str, Enum):
    login = "login"
    xoauth2 = "xoauth2"
    oauth2 = "oauth2"
    none = "none"


class OAuth2Provider(str, Enum):
    microsoft = "microsoft"
    google = "google"
    generic = "generic"


class OAuth2ClientAuthentication(str, Enum):
    client_secret_basic = "clientSecretBasic"
    client_secret_post = "clientSecretPost"
    certificate = "certificate"


class ServerSpec(_Model):
    """Where the upstream listens and how the session is encrypted."""

    host: str = Field(
        min_length=1,
        max_length=253,
        # A CEL rule rather than `pattern`: the apiserver then answers with HOST_MESSAGE, not a 1,400-character regex.
        json_schema_extra={"x-kubernetes-validations": [{"rule": f"self.matches(r'{HOST_PATTERN}')", "message": HOST_MESSAGE}]},
        description="Upstream SMTP server: a DNS name (IDNs in xn-- form) or an IPv4 or IPv6 address; "
        "IPv6 without brackets (2001:db8::25), no port (see port), no scheme.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port. Defaults by TLS mode: 465 for implicit, 587 for starttls, 25 for none.",
    )
    tls: TLSMode = Field(
        default=TLSMode.starttls,
        description="implicit: TLS from the first byte (port 465). starttls: upgrade is required, "
        "never a silent plaintext fallback. none: plaintext (trusted internal relays only).",
    )
    verify_certificate: bool = Field(
        default=True, description="Verify the server certificate and host name. Disable only for lab servers."
    )
    ca_certificate: str | None = Field(
        default=None,
        max_length=65536,
        description="PEM CA bundle to trust instead of the system store (private CAs).",
    )

    @field_validator("host")
    @classmethod
    def _host_is_a_name_or_an_address(cls, host: str) -> str:
        """The CRD's pattern, for standalone mode, with a message that says what is wanted instead of the regex."""
        if _HOST.fullmatch(host) is None:
            raise PydanticCustomError("host_format", HOST_MESSAGE)
        return host


class SecretRef(_Model):
    """A Secret in the SmtpAccount's own namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret in the account's namespace.")


# https only, except on loopback (a token endpoint run beside the gateway, as in tests).
TOKEN_URL_PATTERN = r"^(https://[^\s/?#@]+|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?)(/[^\s#]*)?$"
MAILBOX_PATTERN = r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$"

# (rule, message, fieldPath) for the CEL validations of OAuth2Spec; _check_oauth2 applies the same in standalone mode.
_OAUTH2_RULES = [
    (
        "self.provider != 'microsoft' || has(self.tenantId) || has(self.tokenUrl)",
        "tenantId is required for provider microsoft (or set tokenUrl)",
        ".tenantId",
    ),
    ("self.provider == 'google' || has(self.clientId)", "clientId is required for providers microsoft and generic", ".clientId"),
    ("self.provider != 'generic' || has(self.tokenUrl)", "tokenUrl is required for provider generic", ".tokenUrl"),
    (
        "self.provider != 'google' || !has(self.clientId) && !has(self.clientAuthentication)",
        "provider google takes its identity from the Secret's serviceAccountKey: clientId and clientAuthentication do not apply",
        ".clientAuthentication",
    ),
]


class OAuth2Spec(_Model):
    """Where the gateway gets its OAuth2 access tokens; the long-lived credential stays in auth.secretRef."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": rule, "message": message, "fieldPath": path} for rule, message, path in _OAUTH2_RULES
            ]
        }
    )

    provider: OAuth2Provider = Field(
        description="microsoft: client credentials at login.microsoftonline.com with a client secret or a certificate. "
        "google: a service account with domain-wide delegation (JWT bearer grant, sub = mailbox). "
        "generic: client credentials at tokenUrl."
    )
    mailbox: str = Field(
        min_length=3,
        max_length=320,
        pattern=MAILBOX_PATTERN,
        description="The mailbox the gateway authenticates as (the XOAUTH2 user; Google: the user impersonated).",
    )
    tenant_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9.]*$",
        description="microsoft: the Entra ID tenant (directory) ID or a verified domain.",
    )
    client_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="microsoft, generic: the application (client) ID."
    )
    client_authentication: OAuth2ClientAuthentication | None = Field(
        default=None,
        description="microsoft, generic: clientSecretPost, clientSecretBasic (Secret key clientSecret) or certificate "
        "(a client assertion signed with the Secret's tls.key, with tls.crt's thumbprint). "
        "Default: clientSecretPost for microsoft, clientSecretBasic for generic.",
    )
    token_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=TOKEN_URL_PATTERN,
        description="The token endpoint (https). Defaults: microsoft "
        "https://login.microsoftonline.com/{tenantId}/oauth2/v2.0/token, google the key's token_uri "
        "(https://oauth2.googleapis.com/token). Set it for sovereign clouds or another provider.",
    )
    scope: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Scope to request. Defaults: microsoft https://outlook.office365.com/.default, "
        "google https://mail.google.com/; generic: none unless set.",
    )
    audience: str | None = Field(
        default=None, min_length=1, max_length=1024, description="generic: an audience parameter for the token request."
    )
    ca_certificate: str | None = Field(
        default=None, max_length=65536, description="PEM CA bundle to trust for the token endpoint instead of the system store."
    )

    @model_validator(mode="after")
    def _check_oauth2(self) -> OAuth2Spec:
        """The CEL rules above, for standalone mode (no apiserver there)."""
        provider, has = self.provider, self.model_fields_set
        if provider is OAuth2Provider.microsoft and self.tenant_id is None and self.token_url is None:
            raise ValueError(_OAUTH2_RULES[0][1])
        if provider is not OAuth2Provider.google and self.client_id is None:
            raise ValueError(_OAUTH2_RULES[1][1])
        if provider is OAuth2Provider.generic and self.token_url is None:
            raise ValueError(_OAUTH2_RULES[2][1])
        if provider is OAuth2Provider.google and ({"client_id", "client_authentication"} & has):
            raise ValueError(_OAUTH2_RULES[3][1])
        return self


class AuthSpec(_Model):
    """How the gateway authenticates to the upstream."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.method == 'none' || has(self.secretRef)",
                    "message": "secretRef is required unless method is none",
                    "fieldPath": ".secretRef",
                    "reason": "FieldValueRequired",
                },
                {
                    "rule": "(self.method == 'oauth2') == has(self.oauth2)",
                    "message": "oauth2 is required with method oauth2 and allowed only with it",
                    "fieldPath": ".oauth2",
                },
            ]
        }
    )

    method: AuthMethod = Field(
        default=AuthMethod.none,
        description="login: username and password (PLAIN/LOGIN/CRAM-MD5, as offered). "
        "oauth2: XOAUTH2 with access tokens the gateway obtains and renews itself (see oauth2). "
        "xoauth2: a static access token from the Secret, for tokens refreshed elsewhere. none: no AUTH.",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with key username, and password (login) or token (xoauth2); for oauth2 the long-lived "
        "credential: clientSecret, tls.key and tls.crt (certificate), or serviceAccountKey (google, the JSON key). "
        "Required unless method is none.",
    )
    oauth2: OAuth2Spec | None = Field(default=None, description="Token endpoint and identity for method oauth2.")

    @model_validator(mode="after")
    def _secret_ref_required(self) -> AuthSpec:
        """The same rules as the CEL validations above, for standalone mode (no apiserver there)."""
        if self.method is not AuthMethod.none and self.secret_ref is None:
            raise ValueError("secretRef is required unless method is none")
        if (self.method is AuthMethod.oauth2) != (self.oauth2 is not None):
            raise ValueError("oauth2 is required with method oauth2 and allowed only with it")
        return self


class PoolSpec(_Model):
    """Connection pool limits. maxConnections is cluster-wide; the operator splits it across gateways."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.healthCheckAfterIdleSeconds < self.ttlSeconds",
                    "message": "healthCheckAfterIdleSeconds must be below ttlSeconds",
                    "fieldPath": ".healthCheckAfterIdleSeconds",
                }
            ]
        }
    )

    max_connections: int = Field(
        default=3, ge=1, le=1000, description="Cluster-wide maximum of concurrent upstream sessions (Office 365: 3)."
    )
    ttl_seconds: int = Field(
        default=300, ge=1, le=86400, description="Maximum lifetime of a session, counted from its creation."
    )
    idle_timeout_seconds: int = Field(default=60, ge=1, le=86400, description="Idle sessions are closed after this.")
    health_check_after_idle_seconds: int = Field(
        default=10, ge=0, le=86400, description="A session idle this long is checked with NOOP before reuse."
    )
    max_messages_per_connection: int = Field(
        default=100, ge=1, le=100000, description="Reconnect after this many messages (providers cap them per session)."
    )
    acquire_timeout_seconds: int = Field(
        default=30, ge=0, le=600, description="How long a send may wait for a free session before 503."
    )

    @model_validator(mode="after")
    def _health_check_below_ttl(self) -> PoolSpec:
        """The same rule as the CEL validation above, for standalone mode."""
        if self.health_check_after_idle_seconds >= self.ttl_seconds:
            raise ValueError("healthCheckAfterIdleSeconds must be below ttlSeconds")
        return self


class RateLimitSpec(_Model):
    """Cluster-wide sending rate; the operator splits it across gateways."""

    messages_per_minute: int | None = Field(
        default=None, ge=1, le=1000000, description="Messages per minute, cluster-wide (Office 365: 30). Unset: unlimited."
    )


class DeliveryMode(str, Enum):
    sync = "sync"
    queue = "queue"


WEBHOOK_URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s#]*)?$"
DEFAULT_MAX_AGE_SECONDS = 5 * 24 * 3600  # Postfix's maximal_queue_lifetime


class WebhookSpec(_Model):
    """Where delivery events of queued messages are posted, signed as Standard Webhooks describes."""

    url: str = Field(
        max_length=2048,
        pattern=WEBHOOK_URL_PATTERN,
        description="The receiver (http or https; no user or password in the URL). Events: message.sent, "
        "message.deferred, message.failed.",
    )
    secret_ref: SecretRef = Field(
        description="Secret with key webhookSecret: the signing key as whsec_<base64> (24 to 64 bytes), the format "
        "Standard Webhooks libraries verify with."
    )


class DeliverySpec(_Model):
    """Synchronous relay (the upstream's verdict in the answer) or durable queueing with retries."""

    mode: DeliveryMode = Field(
        default=DeliveryMode.sync,
        description="sync: every send waits for the upstream and answers with its verdict. queue: a message is "
        "answered (HTTP 202, SMTP 250) once stored durably, then delivered with retries (needs a gateway started "
        "with a queue). A sync account still queues an HTTP request sent with Prefer: respond-async.",
    )
    max_age_seconds: int = Field(
        default=DEFAULT_MAX_AGE_SECONDS,
        ge=60,
        le=30 * 24 * 3600,
        description="A queued message still undelivered this long after it was accepted fails (default 5 days).",
    )
    retry_unknown: bool = Field(
        default=False,
        description="When the connection drops after the message was sent and before the upstream's verdict, the "
        "message may or may not have been delivered. false (default): fail it (a possible loss, never a duplicate). "
        "true: deliver it again (a possible duplicate, never a loss).",
    )
    webhook: WebhookSpec | None = Field(default=None, description="Delivery events of queued messages, signed.")


class SmtpClientRef(_Model):
    """One SMTP AUTH login of the gateway's SMTP ingress (a client credential, never the upstream's)."""

    secret_ref: SecretRef = Field(
        description="Secret with keys username and password: what an app sends in SMTP AUTH to the gateway. "
        "Gateways receive only a salted hash of the password. Usernames must be unique across accounts."
    )


class AccessSpec(_Model):
    """Who may send through this account. Empty lists: nobody in cluster mode."""

    service_accounts: list[ServiceAccountName] = Field(
        default_factory=list,
        max_length=256,
        description="ServiceAccounts allowed to send, as namespace/name.",
    )
    namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=256,
        description="Namespaces whose every ServiceAccount may send.",
    )
    smtp_clients: list[SmtpClientRef] = Field(
        default_factory=list,
        max_length=64,
        description="SMTP AUTH logins for apps that send through the gateway's SMTP ingress. "
        "A client that logs in with one of them sends through this account, with From addresses limited to senders.",
    )


class SmtpAccountSpec(_Model):
    """Desired state of one upstream SMTP account."""

    server: ServerSpec = Field(description="The upstream SMTP server.")
    auth: AuthSpec = Field(default=AuthSpec(), description="Authentication to the upstream.")
    pool: PoolSpec = Field(default=PoolSpec(), description="Connection pool limits.")
    rate_limit: RateLimitSpec = Field(default=RateLimitSpec(), description="Sending rate limit.")
    senders: list[SenderPattern] = Field(
        default_factory=list,
        max_length=256,
        description="Allowed envelope senders and originator header addresses (From, Sender, Resent-From, "
        "Resent-Sender): local@domain, *@domain or *@*.domain. Empty: any sender.",
    )
    access: AccessSpec = Field(default=AccessSpec(), description="Callers allowed to use this account.")
    max_message_bytes: int = Field(
        default=26214400, ge=1024, le=157286400, description="Largest message accepted, in bytes (413 above)."
    )
    suspend: bool = Field(default=False, description="Stop sending through this account; requests get 503.")
    delivery: DeliverySpec = Field(default=DeliverySpec(), description="Synchronous relay or durable queueing.")

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_are_empty(cls, data: Any) -> Any:
        """An absent section becomes ``{}``, which validates to the same default as the model's.

        Why: pydantic deep-copies a mutable default on every validation, and
        that copy was most of the cost of validating 10,000 accounts (a
        snapshot push, ``mailgate serve``); building the default from ``{}`` is
        several times cheaper. The schema's defaults (and so the CRD's) stay.
        """
        if not isinstance(data, dict):
            return data
        absent: dict[str, dict[str, Any]] = {alias: {} for name, alias in _SECTIONS if alias not in data and name not in data}
        return {**data, **absent} if absent else data


_SECTIONS = [(name, to_camel(name)) for name in ("auth", "pool", "rate_limit", "access", "delivery")]


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """Standard metav1.Condition shape."""

    type: str = Field(description="Ready, CredentialsResolved, Synced, UpstreamHealthy or SendersUnique.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed.")
    observed_generation: int | None = Field(default=None, description="Generation this condition was computed for.")


class GatewaySync(_Model):
    synced: int = Field(default=0, description="Gateways serving the current generation.")
    total: int = Field(default=0, description="Ready gateways.")


class EffectiveLimits(_Model):
    max_connections_per_gateway: list[int] = Field(default_factory=list, description="Each gateway's connection share.")
    messages_per_minute_per_gateway: list[int] = Field(default_factory=list, description="Each gateway's rate share.")


class DeliveryStatus(_Model):
    """The account's messages waiting in the gateways' durable queue (docs/operator.md#queued-messages).

    Written at most once per two resync periods per account, and only when the numbers change: they
    can be that old. Absent until the account first has a message pending.
    """

    queued: int = Field(default=0, description="Accepted, never attempted yet.")
    deferred: int = Field(
        default=0, description="Attempted, waiting for the next attempt (the upstream was down, busy or throttling)."
    )
    sending: int = Field(default=0, description="Being delivered when the gateways last counted.")
    oldest_message_time: datetime | None = Field(
        default=None, description="When the oldest pending message was accepted; absent when none is pending."
    )


class SmtpAccountStatus(_Model):
    """Observed state, written by the operator through the status subresource."""

    observed_generation: int | None = Field(default=None, description="The generation the status describes.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, CredentialsResolved, Synced, UpstreamHealthy, SendersUnique."
    )
    gateways: GatewaySync = Field(default_factory=GatewaySync, description="How many gateways serve the spec.")
    effective: EffectiveLimits = Field(default_factory=EffectiveLimits, description="The per-gateway split of the limits.")
    delivery: DeliveryStatus | None = Field(
        default=None, description="Queued messages not delivered yet, as the gateways count them (queue mode)."
    )


class ObjectMeta(BaseModel):
    """The part of metadata the gateway needs; everything else is kept but ignored."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str = Field(default="default", pattern=DNS_LABEL_PATTERN)
    generation: int | None = None


class SmtpAccount(BaseModel):
    """A whole SmtpAccount object, as `kubectl apply` and standalone mode read it."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["mailgate.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["SmtpAccount"]
    metadata: ObjectMeta
    spec: SmtpAccountSpec
    status: SmtpAccountStatus | None = None

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

