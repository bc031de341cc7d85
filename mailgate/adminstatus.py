"""A gateway's admin status (``GET /v1/status``, docs/admin-api.md): one model for the gateway that writes it,
the operator that reads it and the OpenAPI document that describes it.

camelCase on the wire, as everywhere else in the project (``spec.py``, ``snapshot.py``): the models
serialise by alias, so no snake_case key can reach the wire. Python code builds them by field name;
readers of the wire use ``GatewayStatus.from_wire``, which accepts the aliases only, so a key in the
wrong case is never silently read.

Writer and reader differ on purpose. The gateway always writes every field (the document marks them all
required). A reader tolerates a newer gateway: unknown keys are ignored, and a field a gateway may leave
out reads as "unknown" (its default). Protocol-free: pydantic only, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,  # how Python code (the gateway) builds the models
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",  # a newer gateway may say more
        json_schema_serialization_defaults_required=True,  # the gateway writes every field
        json_schema_extra={"additionalProperties": False},  # and no other: the document describes what it sends
    )


class LastHealthCheck(_Wire):
    """The last NOOP, connect or AUTH outcome on the account's upstream."""

    ok: bool
    age_seconds: float = Field(description="Seconds since that outcome.")
    error: str | None = Field(description="Its error text when it failed; never a credential.")


class PoolStatus(_Wire):
    """The account's pool on this gateway (``SMTPPool.stats()``, docs/pool.md)."""

    upstream: str = Field(description="user@host:port; no secret.")
    max_connections: int = Field(description="The limit in force: this gateway's connection share.")
    idle: int
    active: int
    opening: int
    closing: int
    waiting: int = Field(description="Sends queued for a connection.")
    created: int = Field(description="Sessions opened successfully since start.")
    closed: dict[str, int] = Field(description="Sessions retired, by reason (ttl, max_messages, idle, error, ...).")
    messages_sent: int = Field(description="Transactions the upstream accepted.")
    last_health_check: LastHealthCheck | None
    last_error: str | None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> PoolStatus:
        """From ``SMTPPool.stats()``, whose keys are these fields' Python names."""
        return cls.model_validate(stats, by_alias=False, by_name=True)


class RateLimitStatus(_Wire):
    messages_per_minute: int | None = Field(default=None, description="This gateway's rate; null: unlimited.")


class QueueStatus(_Wire):
    """The account's undelivered messages in the durable queue (docs/delivery.md), as the gateway last counted them.

    The gateway counts every housekeeping interval (15 s), not per request, so reading the status never queries
    the queue. With a shared PostgreSQL queue every gateway counts the same messages: combine gateways by taking
    the largest count, never the sum. The oldest message is a time, not an age, so that two reads of an unchanged
    queue are equal.
    """

    queued: int = Field(description="Accepted, never attempted yet.")
    deferred: int = Field(description="Attempted (or their account throttled), waiting for the next attempt.")
    sending: int = Field(description="Being delivered right now.")
    oldest_created_at: datetime | None = Field(
        description="When the oldest of these messages was accepted (RFC 3339, UTC); null when none is pending."
    )


class AccountStatus(_Wire):
    """One account as this gateway serves it; never a credential."""

    digest: str = Field(description="snapshot.config_digest of what is served; credentials included, one-way.")
    generation: int | None = None
    healthy: bool | None = Field(default=None, description="Last connect or NOOP result; null before the first.")
    last_error: str | None = Field(default=None, description="Last connect, login or NOOP error text; never a credential.")
    pool: PoolStatus | None = Field(default=None, description="Pool state; null when this gateway forwards the account.")
    forward_to: list[str] = Field(default_factory=list, description="Peers this gateway forwards to (its share is 0).")
    rate_limit: RateLimitStatus = Field(default_factory=RateLimitStatus)
    suspended: bool = False
    sender_conflicts: list[str] = Field(default_factory=list, description="Sender patterns another account lists too.")
    queue: QueueStatus | None = Field(
        default=None, description="Pending queued messages (zeros when none); null when this gateway runs no queue."
    )


class GatewayStatus(_Wire):
    revision: int = Field(description="The configuration revision served; 0 before the first snapshot.")
    ready: bool = Field(description="A snapshot was received since the gateway started.")
    accounts: dict[str, AccountStatus] = Field(description="By account key, namespace/name.")

    @classmethod
    def from_wire(cls, payload: Any) -> GatewayStatus:
        """Read a decoded ``GET /v1/status`` body by its camelCase keys only; raises ``pydantic.ValidationError``."""
        return cls.model_validate(payload, by_alias=True, by_name=False)
