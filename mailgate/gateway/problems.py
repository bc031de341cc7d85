"""RFC 9457 problem details: every error of both APIs, with a stable, documented mapping.

One table (``PROBLEM_TYPES``) says, for each problem type, its HTTP status,
its title and whether a retry of the same request can succeed; docs/api.md
lists the same table and a test keeps the two equal. The slugs of the relay's
``Reason`` values are problem types too, so the relay core decides *what*
happened and this module alone decides how HTTP says it.

Every body carries the standard members (``type``, ``title``, ``status``,
``detail``), plus ``retryable`` and ``requestId``; some add ``errors`` (one
``{field, message}`` per invalid field), ``upstream`` (the upstream's code
and text) or ``retryAfter`` (also sent as the ``Retry-After`` header).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..relay.outcomes import DeliveryUnknown, Reason, Refused, RetryLater

TYPE_BASE = "https://mailgate.dev/problems/"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    title: str
    retryable: bool


PROBLEM_TYPES: dict[str, ProblemType] = {
    "invalid-request": ProblemType(400, "The request is invalid", False),
    "unauthenticated": ProblemType(401, "Authentication required", False),
    Reason.FORBIDDEN.value: ProblemType(403, "Not allowed to use this account", False),
    Reason.SENDER_NOT_ALLOWED.value: ProblemType(403, "Sender not allowed for this account", False),
    Reason.UNKNOWN_ACCOUNT.value: ProblemType(404, "Unknown account", False),
    "not-found": ProblemType(404, "Not found", False),
    "method-not-allowed": ProblemType(405, "Method not allowed", False),
    "revision-conflict": ProblemType(409, "Revision is not newer than the gateway's", False),
    "not-cancellable": ProblemType(409, "The message can no longer be cancelled", False),
    Reason.TOO_LARGE.value: ProblemType(413, "Message too large", False),
    "idempotency-conflict": ProblemType(422, "Idempotency-Key reused with a different request", False),
    "invalid-configuration": ProblemType(422, "The configuration cannot be applied", False),
    "unsupported-media-type": ProblemType(415, "Unsupported media type", False),
    Reason.RATE_LIMITED.value: ProblemType(429, "Rate limit exceeded", True),
    "internal-error": ProblemType(500, "Internal error", True),
    Reason.UPSTREAM_REFUSED.value: ProblemType(502, "The upstream server refused the message", False),
    Reason.UPSTREAM_UNSUPPORTED.value: ProblemType(502, "The upstream server cannot take this message", False),
    Reason.DELIVERY_UNKNOWN.value: ProblemType(502, "The message may have been delivered", False),
    Reason.POOL_SATURATED.value: ProblemType(503, "No upstream connection available", True),
    Reason.UPSTREAM_UNAVAILABLE.value: ProblemType(503, "The upstream server is unavailable", True),
    Reason.UPSTREAM_AUTH_FAILED.value: ProblemType(503, "The upstream server refused the gateway's credentials", True),
    Reason.SUSPENDED.value: ProblemType(503, "The account is suspended", True),
    Reason.SHUTTING_DOWN.value: ProblemType(503, "The gateway is shutting down", True),
    Reason.NO_LOCAL_SHARE.value: ProblemType(503, "This gateway holds no connection share of the account", True),
    Reason.ROUTING_CONFLICT.value: ProblemType(503, "Several accounts claim this sender", True),
    "peer-unavailable": ProblemType(503, "No peer gateway could take the request", True),
    "auth-unavailable": ProblemType(503, "Callers cannot be authenticated right now", True),
    "queue-unavailable": ProblemType(503, "The message queue is unavailable", True),
    Reason.UPSTREAM_TIMEOUT.value: ProblemType(504, "The upstream server did not answer in time", True),
}


def problem_body(
    slug: str,
    detail: str,
    *,
    retryable: bool | None = None,
    retry_after: float | None = None,
    request_id: str | None = None,
    **members: Any,
) -> dict[str, Any]:
    kind = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "retryable": kind.retryable if retryable is None else retryable,
    }
    if retry_after is not None:
        body["retryAfter"] = math.ceil(retry_after)
    if request_id is not None:
        body["requestId"] = request_id
    body.update({k: v for k, v in members.items() if v is not None})
    return body


def problem(
    slug: str,
    detail: str,
    *,
    retryable: bool | None = None,
    retry_after: float | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    **members: Any,
) -> web.Response:
    """A problem+json response; ``retry_after`` also becomes the ``Retry-After`` header (whole seconds)."""
    body = problem_body(slug, detail, retryable=retryable, retry_after=retry_after, request_id=request_id, **members)
    out_headers = dict(headers or {})
    if retry_after is not None:
        out_headers["Retry-After"] = str(body["retryAfter"])
    return web.Response(status=body["status"], body=json.dumps(body).encode(), content_type=CONTENT_TYPE, headers=out_headers)


def outcome_problem(outcome: Refused | RetryLater | DeliveryUnknown, request_id: str | None) -> web.Response:
    if isinstance(outcome, DeliveryUnknown):
        return problem(outcome.reason.value, outcome.detail, request_id=request_id)
    upstream = None if outcome.upstream is None else {"code": outcome.upstream[0], "message": outcome.upstream[1]}
    if isinstance(outcome, RetryLater):
        return problem(
            outcome.reason.value, outcome.detail, retry_after=outcome.retry_after, request_id=request_id, upstream=upstream
        )
    return problem(outcome.reason.value, outcome.detail, retryable=outcome.retryable, request_id=request_id, upstream=upstream)
