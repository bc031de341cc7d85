"""The OpenAPI 3.1 document of both gateway APIs, generated from the models that validate them.

Request schemas are the pydantic models the handlers validate with
(``SendRequest``, ``ConfigSnapshot``, ``AccountConfig``, ``RelayRequest``), so the document
cannot drift from the code; so is the admin status (``mailgate.adminstatus``,
which the gateway writes and the operator reads). The send API's response
models below exist for the document and for the tests, which validate real
responses against them. The error responses are derived from
``problems.PROBLEM_TYPES``.

``python -m mailgate.gateway.openapi > docs/openapi.json`` refreshes the
checked-in copy; a test proves it equal to what the gateway serves at
``/openapi.json``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ..adminstatus import GatewayStatus
from ..snapshot import AccountConfig, ConfigSnapshot
from ..spec import HOST_PATTERN
from .compose import BARE_ADDRESS_SCHEMA, RAW_MESSAGE_PATTERN, SendRequest
from .idempotency import MAX_KEY_LENGTH
from .problems import PROBLEM_TYPES, TYPE_BASE
from .relay_wire import RelayAnswer, RelayRequest

SEND_PORT = 8080
ADMIN_PORT = 8081


class _Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class UpstreamReply(_Doc):
    code: int = Field(description="SMTP reply code.")
    message: str = Field(description="SMTP reply text.")


class RejectedRecipient(_Doc):
    recipient: str
    code: int = Field(description="The upstream's reply code for this recipient.")
    message: str


class SendResponse(_Doc):
    """The upstream accepted the message for at least one recipient."""

    message_id: str = Field(description="The Message-ID header, angle brackets included.")
    accepted: list[str] = Field(description="Envelope recipients the upstream accepted.")
    rejected: list[RejectedRecipient] = Field(description="Envelope recipients the upstream refused.")
    upstream: UpstreamReply = Field(description="The upstream's reply to DATA.")


class QueuedResponse(_Doc):
    """The message is stored durably and will be delivered (202; its status at the Location header)."""

    id: str = Field(description="The queued message's id: GET /v1/messages/{id}.")
    message_id: str = Field(description="The Message-ID header, angle brackets included.")
    state: Literal["queued"]
    recipients: list[str] = Field(description="The envelope recipients, each delivered and tracked on its own.")


class Reply(_Doc):
    code: int | None = Field(description="SMTP reply code; null when no reply came (delivery unknown).")
    message: str


class QueuedRecipient(_Doc):
    address: str
    state: Literal["pending", "sent", "failed"]
    attempts: int
    reply: Reply | None = Field(description="The last reply for this recipient.")


class QueuedMessage(_Doc):
    """A queued message and each recipient's state (docs/api.md, "Queued messages")."""

    id: str
    account: str = Field(description="namespace/name")
    message_id: str
    sender: str = Field(alias="from", description="The envelope sender.")
    state: Literal["queued", "deferred", "sending", "sent", "failed", "cancelled"]
    size: int = Field(description="Bytes of the message as it will be sent.")
    created_at: str = Field(description="RFC 3339, UTC.")
    next_attempt_at: str | None = Field(description="When the next attempt is due (queued and deferred only).")
    expires_at: str = Field(description="When an undelivered message fails (spec.delivery.maxAgeSeconds).")
    finished_at: str | None
    attempts: int
    last_reply: Reply | None
    recipients: list[QueuedRecipient]


class MessagePage(_Doc):
    items: list[QueuedMessage] = Field(description="Oldest first.")
    next: str | None = Field(description="Pass as after= for the next page; null on the last page.")


class RetryStarted(_Doc):
    retried: int = Field(ge=0, description="Deferred messages of the account now due again (0: none was waiting).")


class FieldError(_Doc):
    field: str = Field(description="Where: from, to[1], attachments[0].content, headers.X-Foo, body...")
    message: str


class Problem(_Doc):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description=f"{TYPE_BASE}<slug>; the slugs are listed in docs/api.md.")
    title: str
    status: int
    detail: str
    retryable: bool = Field(description="Whether the same request can succeed later, unchanged.")
    request_id: str | None = Field(default=None, description="Also in the X-Request-Id response header and the logs.")
    retry_after: int | None = Field(default=None, description="Seconds; also the Retry-After header.")
    errors: list[FieldError] | None = Field(default=None, description="Invalid fields (400).")
    upstream: UpstreamReply | None = Field(default=None, description="The upstream's answer, when it gave one.")
    current_revision: int | None = Field(default=None, description="The gateway's revision (409).")


class ConfigApplied(_Doc):
    revision: int
    applied: bool = Field(description="False when the revision was the gateway's already (a no-op).")


class AccountApplied(_Doc):
    revision: int


_REQUEST_MODELS: list[type[BaseModel]] = [SendRequest, ConfigSnapshot, AccountConfig, RelayRequest]
_RESPONSE_MODELS: list[type[BaseModel]] = [
    SendResponse,
    QueuedResponse,
    QueuedMessage,
    MessagePage,
    RetryStarted,
    Problem,
    ConfigApplied,
    AccountApplied,
    GatewayStatus,
    RelayAnswer,
]
_SEND_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)
# putAccount's 404: a path that is no account route (an empty name), answered before the handler.
_ADMIN_ERRORS = {"put": (400, 401, 409, 422), "putAccount": (400, 401, 404, 409, 422), "delete": (400, 401, 404, 409),
                 "get": (401,), "relay": (400, 401, 404)}  # fmt: skip
# Problem types only one of the two APIs answers with; every other type may come from either.
_ONLY_IN = {
    "revision-conflict": "admin",
    "invalid-configuration": "admin",
    "idempotency-conflict": "send",
    "not-cancellable": "send",
    "queue-unavailable": "send",
}


# What pydantic's regex engine (Rust's regex crate) reads as \s: Unicode White_Space. ECMA-262's \s differs (it
# has U+FEFF, not U+0085), so the document spells the set out; it only ever appears inside a class.
_WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _spell_out_white_space(node: Any) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            node["pattern"] = node["pattern"].replace(r"\s", _WHITE_SPACE)
        for value in node.values():
            _spell_out_white_space(value)
    elif isinstance(node, list):
        for value in node:
            _spell_out_white_space(value)


def _present(name: str, kind: str = "string") -> dict[str, Any]:
    """``name`` is there and of ``kind`` (not null: the models read null as absent)."""
    return {"required": [name], "properties": {name: {"type": kind}}}


def _provider(name: str) -> dict[str, Any]:
    return {"properties": {"provider": {"const": name}}}


def _state_the_model_rules(schemas: dict[str, Any]) -> None:
    """The rules the config models check in code (CEL rules for the apiserver), as JSON Schema where it can.

    ``ServerSpec.host`` carries its pattern in a CEL rule (for a short apiserver
    message); the ``AuthSpec`` and ``OAuth2Spec`` rules are about which fields
    go together. ``PoolSpec``'s (healthCheckAfterIdleSeconds below ttlSeconds)
    compares two fields, which JSON Schema cannot: its description says it.
    """
    _spell_out_white_space(schemas)
    schemas["ServerSpec"]["properties"]["host"]["pattern"] = HOST_PATTERN
    oauth2_method = {"required": ["method"], "properties": {"method": {"const": "oauth2"}}}
    schemas["AuthSpec"]["allOf"] = [
        {"anyOf": [{"properties": {"method": {"const": "none"}}}, _present("secretRef", "object")]},
        {
            "anyOf": [
                {"allOf": [oauth2_method, _present("oauth2", "object")]},
                {"properties": {"method": {"not": {"const": "oauth2"}}, "oauth2": {"type": "null"}}},
            ]
        },
    ]
    google_identity = {"anyOf": [{"required": ["clientId"]}, {"required": ["clientAuthentication"]}]}
    schemas["OAuth2Spec"]["anyOf"] = [
        {"allOf": [_provider("microsoft"), _present("clientId"), {"anyOf": [_present("tenantId"), _present("tokenUrl")]}]},
        {"allOf": [_provider("google"), {"not": google_identity}]},
        {"allOf": [_provider("generic"), _present("clientId"), _present("tokenUrl")]},
    ]
    pool = schemas["PoolSpec"]
    pool["description"] += " healthCheckAfterIdleSeconds must be below ttlSeconds (400 otherwise)."


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem_responses(statuses: tuple[int, ...], *, admin: bool = False) -> dict[str, Any]:
    api = "admin" if admin else "send"
    out: dict[str, Any] = {}
    for status in statuses:
        slugs = sorted(slug for slug, kind in PROBLEM_TYPES.items() if kind.status == status and _ONLY_IN.get(slug, api) == api)
        response: dict[str, Any] = {
            "description": "Problem types: " + ", ".join(slugs),
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        if status == 400:  # aiohttp's HTTP parser answers before any handler does, in plain text
            response["description"] += "; text/plain when the request line or a header is over 8190 bytes"
            response["content"]["text/plain"] = {"schema": {"type": "string"}}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
        out[str(status)] = response
    return out


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _admin(operation: dict[str, Any], tag: str = "admin") -> dict[str, Any]:
    return {"tags": [tag], "security": [{"adminToken": []}], **operation}


def _send_paths() -> dict[str, Any]:
    raw_params = [
        {"name": "from", "in": "query", "required": False, "schema": BARE_ADDRESS_SCHEMA,
         "description": "message/rfc822 only (a JSON body carries its own envelope; this is ignored): "
                        "envelope sender instead of the body's Sender/From."},
        {"name": "to", "in": "query", "required": False, "schema": {"type": "array", "items": BARE_ADDRESS_SCHEMA},
         "style": "form", "explode": True,
         "description": "message/rfc822 only (ignored with a JSON body): envelope recipients instead of the "
                        "body's To/Cc/Bcc (repeatable)."},
    ]
    raw_message = {
        "type": "string",
        "contentMediaType": "message/rfc822",
        "pattern": RAW_MESSAGE_PATTERN,
        "description": "An RFC 5322 message, sent as it is apart from line endings (CRLF), Bcc (removed) and Message-ID "
        "and Date (added when absent). Exactly one From; recipients from To/Cc/Bcc unless the to parameter is "
        "given. The pattern spells out the simplest such message; folded fields, any address syntax the stdlib "
        "parsers agree on and UTF-8 (RFC 6532, sent with SMTPUTF8) are accepted too. A field no mail reader may "
        "read differently is refused: control characters, a first line that is a continuation, a line that is "
        "neither a field nor a continuation, an ambiguous address list.",
    }
    send: dict[str, Any] = {
        "post": {
            "tags": ["send"],
            "summary": "Send one message through an account",
            "operationId": "sendMessage",
            "security": [{"bearer": []}],
            "parameters": _path_params("namespace", "name") + raw_params,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("SendRequest")},
                    "message/rfc822": {"schema": raw_message},
                },
            },
            "responses": {
                "200": {"description": "Sent", "content": {"application/json": {"schema": _ref("SendResponse")}}},
                "202": {
                    "description": "Queued: stored durably, to be delivered with retries (an account with "
                    "delivery.mode queue, or Prefer: respond-async on a gateway with a queue)",
                    "headers": {
                        "Location": {"description": "/v1/messages/{id}", "schema": {"type": "string"}},
                        "Preference-Applied": {"description": "respond-async, when asked for", "schema": {"type": "string"}},
                    },
                    "content": {"application/json": {"schema": _ref("QueuedResponse")}},
                },
                **_problem_responses(_SEND_ERRORS),
            },
        }
    }
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
                              "pattern": r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$"},
                   "description": "A retried request with the same key returns the first answer; the same key "
                                  "with another request is refused (422 idempotency-conflict). See docs/api.md."}
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "respond-async (RFC 7240): queue the message and answer 202 at once, on a gateway with a queue.",
    }
    send["post"]["parameters"] += [idempotency, prefer]
    routed = {"post": {**send["post"], "operationId": "sendMessageRouted",
                       "summary": "Send one message through the account its sender routes to (as the SMTP ingress does)",
                       "description": "403 sender-not-allowed when no account's senders claim the sender.",
                       "parameters": [*raw_params, idempotency, prefer]}}
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/v1/messages": routed,
        "/v1/accounts/{namespace}/{name}/messages": {**send, "get": _list_operation()},
        "/v1/messages/{id}": _message_operations(),
        "/v1/accounts/{namespace}/{name}/messages/retry": {"post": _retry_operation()},
        "/livez": {
            "get": {"tags": ["probes"], "summary": "The event loop answers", "responses": {"200": {"description": "OK", **text}}}
        },
        "/readyz": {
            "get": {
                "tags": ["probes"],
                "summary": "A configuration was received and shutdown has not begun (upstream health is not considered)",
                "responses": {"200": {"description": "Ready", **text}, "503": {"description": "Not ready", **text}},
            }
        },
        "/metrics": {
            "get": {"tags": ["probes"], "summary": "Prometheus metrics", "responses": {"200": {"description": "Metrics", **text}}}
        },
        "/openapi.json": {
            "get": {"tags": ["probes"], "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}}
        },
    }


_MESSAGE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}


def _queue_operation(
    summary: str, operation_id: str, parameters: list[dict[str, Any]], responses: dict[str, Any]
) -> dict[str, Any]:
    return {
        "tags": ["queue"],
        "summary": summary,
        "operationId": operation_id,
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": responses,
    }


def _list_operation() -> dict[str, Any]:
    states = ["queued", "deferred", "sending", "sent", "failed", "cancelled"]
    query = [
        {"name": "state", "in": "query", "required": False, "schema": {"type": "string", "enum": states}},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "after", "in": "query", "required": False, "schema": _MESSAGE_ID, "description": "next of the previous page"},
    ]
    page = {"description": "One page, oldest first", "content": {"application/json": {"schema": _ref("MessagePage")}}}
    return _queue_operation(
        "List an account's queued messages (the same authorization as sending through it)",
        "listMessages",
        _path_params("namespace", "name") + query,
        {"200": page, **_problem_responses((400, 401, 403, 404, 503))},
    )


def _retry_operation() -> dict[str, Any]:
    started = {"description": "Due now", "content": {"application/json": {"schema": _ref("RetryStarted")}}}
    return _queue_operation(
        "Retry an account's deferred messages now instead of after their backoff (the same authorization as sending)",
        "retryMessages",
        _path_params("namespace", "name"),
        {"200": started, **_problem_responses((401, 403, 404, 503))},
    )


def _message_operations() -> dict[str, Any]:
    path = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    shown = {"description": "The message", "content": {"application/json": {"schema": _ref("QueuedMessage")}}}
    return {
        "get": _queue_operation(
            "A queued message and each recipient's state (404 also when the caller may not use its account)",
            "getMessage",
            path,
            {"200": shown, **_problem_responses((401, 404, 503))},
        ),
        "delete": _queue_operation(
            "Cancel a queued or deferred message (409 once a delivery holds it or it finished)",
            "cancelMessage",
            path,
            {"204": {"description": "Cancelled"}, **_problem_responses((401, 404, 409, 503))},
        ),
    }


def _admin_paths() -> dict[str, Any]:
    revision = {"name": "revision", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0},
                "description": "Must be newer than the gateway's revision (else 409)."}
    account_params = [*_path_params("namespace", "name"), revision]
    return {
        "/v1/config": {
            "put": _admin({
                "summary": "Replace the whole configuration (same revision: no-op; older: 409)",
                "operationId": "putConfig",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ConfigSnapshot")}}},
                "responses": {
                    "200": {
                        "description": "Applied or no-op",
                        "content": {"application/json": {"schema": _ref("ConfigApplied")}},
                    },
                    **_problem_responses(_ADMIN_ERRORS["put"], admin=True),
                },
            })
        },
        "/v1/config/accounts/{namespace}/{name}": {
            "put": _admin({
                "summary": "Add or replace one account",
                "description": "The body's namespace and name are the path's (400 otherwise).",
                "operationId": "putAccount",
                "parameters": account_params,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AccountConfig")}}},
                "responses": {
                    "200": {"description": "Applied", "content": {"application/json": {"schema": _ref("AccountApplied")}}},
                    **_problem_responses(_ADMIN_ERRORS["putAccount"], admin=True),
                },
            }),
            "delete": _admin({
                "summary": "Remove one account",
                "operationId": "deleteAccount",
                "parameters": account_params,
                "responses": {"204": {"description": "Removed"}, **_problem_responses(_ADMIN_ERRORS["delete"], admin=True)},
            }),
        },
        "/v1/relay/accounts/{namespace}/{name}": {
            "post": _admin({
                "summary": "Send a message a peer gateway hands over (its share of the account is 0)",
                "description": "Gateway to gateway: a gateway holding no connection share of an account passes the "
                "SMTP messages it received for it here, already checked (docs/admin-api.md, \"Peer relay\"). The "
                "answer is the relay's outcome, 200 whatever it is; an unknown account is an outcome too. A gateway "
                "that holds no share either refuses (retryLater, peer-unavailable) rather than pass the message on.",
                "operationId": "relayMessage",
                "parameters": _path_params("namespace", "name"),
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RelayRequest")}}},
                "responses": {
                    "200": {"description": "The outcome", "content": {"application/json": {"schema": _ref("RelayAnswer")}}},
                    **_problem_responses(_ADMIN_ERRORS["relay"], admin=True),
                },
            }, tag="peer")
        },
        "/v1/status": {
            "get": _admin({
                "summary": "Revision, readiness and per-account pool state, health and digest (never a credential)",
                "operationId": "getStatus",
                "responses": {
                    "200": {"description": "Status", "content": {"application/json": {"schema": _ref("GatewayStatus")}}},
                    **_problem_responses(_ADMIN_ERRORS["get"], admin=True),
                },
            })
        },
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _REQUEST_MODELS]
    pairs += [(m, "serialization") for m in _RESPONSE_MODELS]
    _, defs = models_json_schema(pairs, by_alias=True, ref_template="#/components/schemas/{model}")
    _state_the_model_rules(defs["$defs"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailgate gateway",
            "version": "v1",
            "description": f"Send API on port {SEND_PORT} (tags send, queue, probes); admin (config) API on its own port "
            f"{ADMIN_PORT} (tag admin), used by the operator; the peer relay on the admin port (tag peer), used by "
            "other gateways. Errors are RFC 9457 problem+json; see docs/api.md and docs/admin-api.md.",
        },
        "tags": [
            {"name": "send", "description": f"Send API (port {SEND_PORT})."},
            {"name": "queue", "description": f"Queued messages: status, listing, cancelling (port {SEND_PORT})."},
            {"name": "probes", "description": f"Probes, metrics and this document (port {SEND_PORT})."},
            {"name": "admin", "description": f"Admin API (port {ADMIN_PORT}, admin bearer token)."},
            {"name": "peer", "description": f"Gateway to gateway, on the admin API (port {ADMIN_PORT}, admin bearer token)."},
        ],
        "paths": {**_send_paths(), **_admin_paths()},
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A Kubernetes ServiceAccount token (in cluster) or an API key (standalone)."},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The gateway's admin token."},
            },
        },
    }


def openapi_json() -> bytes:
    """The document as served and as checked in (stable key order, trailing newline)."""
    return (json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n").encode()


if __name__ == "__main__":
    import sys

    sys.stdout.write(openapi_json().decode())
