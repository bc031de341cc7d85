"""What became of a message: exactly one outcome per send, whatever the door.

- ``Sent``: the upstream accepted the message (some recipients may be refused);
- ``Refused``: it will not be sent as it is; ``retryable`` says whether the
  very same request can succeed later (an upstream 4xx, a timeout);
- ``RetryLater``: a temporary condition on our side or the upstream's, with a
  ``retry_after`` in seconds (rate limit, saturated pool, upstream down);
  nothing reached the upstream, so a retry cannot send twice;
- ``DeliveryUnknown``: the message text and its final dot went out and no
  verdict came back (a drop, a timeout): the upstream may have it. A door
  must not say "retry, nothing was sent", and an Idempotency-Key remembers it.

``Reason`` values are stable slugs: the HTTP door uses them as problem types
(``gateway/problems.py``), the SMTP door maps them to reply codes
(``ingress/replies.py``), metrics use them as the ``outcome`` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import aiosmtplib

from ..oauth2.keeper import TokenUnavailable
from ..pool import PoolClosed, PoolTimeout, TransactionError, UnknownAccount, describe_error

# Retry-After hints, in seconds, for the temporary conditions that have no natural deadline.
RETRY_POOL_SATURATED = 1.0
RETRY_UPSTREAM_DOWN = 5.0
RETRY_AUTH_FAILED = 30.0
RETRY_SUSPENDED = 60.0
RETRY_SHUTTING_DOWN = 1.0
RETRY_ROUTING_CONFLICT = 60.0  # a configuration fix, not a transient state
MAX_RETRY_AFTER = 3600.0


class Reason(str, Enum):
    """Why a message was not sent; the value is the stable problem type slug (docs/api.md)."""

    UNKNOWN_ACCOUNT = "unknown-account"
    FORBIDDEN = "forbidden"
    SENDER_NOT_ALLOWED = "sender-not-allowed"
    TOO_LARGE = "message-too-large"
    RATE_LIMITED = "rate-limited"
    SUSPENDED = "account-suspended"
    POOL_SATURATED = "pool-saturated"
    UPSTREAM_UNAVAILABLE = "upstream-unavailable"
    UPSTREAM_AUTH_FAILED = "upstream-auth-failed"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_REFUSED = "upstream-refused"
    UPSTREAM_UNSUPPORTED = "upstream-unsupported"
    SHUTTING_DOWN = "shutting-down"
    NO_LOCAL_SHARE = "no-local-share"
    DELIVERY_UNKNOWN = "delivery-unknown"
    ROUTING_CONFLICT = "routing-conflict"
    PEER_UNAVAILABLE = "peer-unavailable"


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    accepted: list[str]
    rejected: dict[str, tuple[int, str]]
    code: int
    reply: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Reason
    detail: str
    retryable: bool = False
    upstream: tuple[int, str] | None = None  # the upstream's code and text, when it answered


@dataclass(frozen=True, slots=True)
class RetryLater:
    reason: Reason
    detail: str
    retry_after: float
    upstream: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class DeliveryUnknown:
    """The upstream may have the message: the connection failed after the final dot, before its verdict."""

    detail: str
    reason: Reason = Reason.DELIVERY_UNKNOWN


Outcome = Sent | Refused | RetryLater | DeliveryUnknown
# Nothing reached the upstream: the limiter's token goes back, and a door may try elsewhere.
NOTHING_SENT = frozenset({Reason.POOL_SATURATED, Reason.SHUTTING_DOWN, Reason.UNKNOWN_ACCOUNT, Reason.NO_LOCAL_SHARE})
ACCOUNT_CHANGES = 3  # sends re-dispatched when the account's share changes while a message waits


def outcome_label(outcome: Outcome) -> str:
    """``sent`` or the reason slug: the ``outcome`` label of the messages counter."""
    return "sent" if isinstance(outcome, Sent) else outcome.reason.value


def classify_error(
    exc: BaseException, *, smtputf8: bool = False, eight_bit: bool = False
) -> Refused | RetryLater | DeliveryUnknown:
    """Map what the pool or the upstream raised to an outcome. Order matters: subclasses first."""
    if isinstance(exc, TransactionError):
        if exc.delivery_unknown:
            detail = describe_error(exc.cause)
            return DeliveryUnknown(
                f"the connection to the upstream failed after the message was sent, before its answer ({detail}); "
                "it may have been delivered"
            )
        exc = exc.cause
    detail = describe_error(exc)
    if isinstance(exc, PoolTimeout):
        return RetryLater(Reason.POOL_SATURATED, "no upstream connection became free in time", RETRY_POOL_SATURATED)
    if isinstance(exc, PoolClosed):
        return RetryLater(Reason.SHUTTING_DOWN, "the gateway is shutting down", RETRY_SHUTTING_DOWN)
    if isinstance(exc, UnknownAccount):
        return Refused(Reason.UNKNOWN_ACCOUNT, "the account was removed while the message waited")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        answer = (first.code, first.message) if first is not None else (550, "all recipients refused")
        if answer[0] == 421:
            return RetryLater(Reason.UPSTREAM_UNAVAILABLE, "the upstream is closing the session", RETRY_UPSTREAM_DOWN, answer)
        return Refused(Reason.UPSTREAM_REFUSED, "the upstream refused every recipient", 400 <= answer[0] < 500, answer)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        text = "the upstream refused the gateway's credentials"
        return RetryLater(Reason.UPSTREAM_AUTH_FAILED, text, RETRY_AUTH_FAILED, (exc.code, exc.message))
    if isinstance(exc, TokenUnavailable):  # str() names the token endpoint's refusal, never a token or secret
        return RetryLater(Reason.UPSTREAM_AUTH_FAILED, f"no OAuth2 access token for the upstream: {exc}", RETRY_AUTH_FAILED)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        upstream = (exc.code, exc.message)
        if exc.code == 421 or isinstance(exc, aiosmtplib.SMTPConnectResponseError):
            text = "the upstream is not accepting sessions"
            return RetryLater(Reason.UPSTREAM_UNAVAILABLE, text, RETRY_UPSTREAM_DOWN, upstream)
        return Refused(Reason.UPSTREAM_REFUSED, "the upstream refused the message", 400 <= exc.code < 500, upstream)
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and SMTPConnectTimeoutError included
        return Refused(Reason.UPSTREAM_TIMEOUT, f"the upstream did not answer in time ({detail})", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPNotSupported) and smtputf8 and "SMTPUTF8" in str(exc):
        return Refused(Reason.UPSTREAM_UNSUPPORTED, "the message needs SMTPUTF8, which the upstream does not support")
    if isinstance(exc, aiosmtplib.SMTPNotSupported) and eight_bit and "8BITMIME" in str(exc):
        text = "the message has 8-bit data, which needs 8BITMIME, which the upstream does not support"
        return Refused(Reason.UPSTREAM_UNSUPPORTED, text)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return RetryLater(Reason.UPSTREAM_UNAVAILABLE, f"the upstream is unreachable ({detail})", RETRY_UPSTREAM_DOWN)
    raise exc
