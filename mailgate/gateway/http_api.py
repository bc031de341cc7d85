"""The send API: ``POST /v1/accounts/{namespace}/{name}/messages`` (docs/api.md).

The handler is a thin front door: authenticate, ``Relay.admit``, read the
body within the account's size limit, turn it into an ``OutgoingMessage``
(``message.py``), ``Relay.send``, and map the outcome to HTTP. Everything
that decides anything lives in the relay and the message builder.

Checks that need no body run before the body is read, so an unauthenticated
or refused caller never makes the gateway read (or buffer) a large upload.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ..queue import QueueError
from ..relay.accounts import Account
from ..relay.core import Relay, rerouted
from ..relay.envelope import MessageError, OutgoingMessage
from ..relay.identity import Identity
from ..relay.outbox import Outbox
from ..relay.outcomes import Reason, Refused, Sent
from ..relay.rfc822 import parse_raw_message
from ..relay.routing import NoRoute, Router
from ..spec import DeliveryMode
from .auth import Authenticator
from .compose import SendRequest, compose_message, describe_validation_error
from .forward import Forwarder
from .idempotency import MAX_KEY_LENGTH, IdempotencyConflict, IdempotencyStore, StoredResponse, fingerprint
from .middleware import request_id
from .problems import PROBLEM_TYPES, outcome_problem, problem

ROUTE = "/v1/accounts/{namespace}/{name}/messages"
ROUTED = "/v1/messages"
JSON = "application/json"
RFC822 = "message/rfc822"
# A JSON body carries attachments base64-encoded (4/3 of their size) plus field names and quoting.
JSON_OVERHEAD = 4 / 3
JSON_SLACK = 64 * 1024

log = logging.getLogger("mailgate.gateway.send")


class BodyTooLarge(Exception):
    pass


async def read_limited(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; more (declared or actually sent) raises ``BodyTooLarge``."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def sent_body(outcome: Sent) -> dict[str, Any]:
    return {
        "messageId": outcome.message_id,
        "accepted": outcome.accepted,
        "rejected": [{"recipient": r, "code": code, "message": text} for r, (code, text) in outcome.rejected.items()],
        "upstream": {"code": outcome.code, "message": outcome.reply},
    }


async def identify(authenticator: Authenticator, request: web.Request, key: str, rid: str) -> Identity | web.Response:
    """The caller, or the response that refuses it (401; 503 when the authenticator itself failed)."""
    try:
        identity = await authenticator.authenticate(request)
    except Exception as exc:  # the authenticator failed (apiserver down), not the caller: never a false 401
        log.warning("authentication failed for %s: %s", key, type(exc).__name__)
        return problem("auth-unavailable", "the caller's token could not be checked", request_id=rid, retry_after=5)
    if identity is None:
        return problem(
            "unauthenticated",
            "a valid bearer token is required",
            request_id=rid,
            headers={"WWW-Authenticate": 'Bearer realm="mailgate"'},
        )
    return identity


def prefers_async(request: web.Request) -> bool:
    """RFC 7240 ``Prefer: respond-async`` (preferences are comma-separated, names case-insensitive)."""
    for header in request.headers.getall("Prefer", ()):
        for preference in header.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


class SendAPI:
    """Holds the collaborators of the handler; one instance per gateway."""

    def __init__(
        self,
        relay: Relay,
        authenticator: Authenticator,
        forwarder: Forwarder,
        router: Router,
        *,
        hostname: str,
        idempotency: IdempotencyStore | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.relay = relay
        self.outbox = outbox
        self.authenticator = authenticator
        self.forwarder = forwarder
        self.router = router  # shared with the SMTP ingress: one default account, one conflict warning
        self.hostname = hostname
        self.idempotency = idempotency or IdempotencyStore()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.post_message)
        app.router.add_post(ROUTED, self.post_routed_message)

    async def post_message(self, request: web.Request) -> web.Response:
        """The account is named in the path: every check that needs no body runs before reading it."""
        rid = request_id(request)
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        identity = await identify(self.authenticator, request, key, rid)
        if isinstance(identity, web.Response):
            return identity
        admitted = self.relay.admit(identity, key)
        if not isinstance(admitted, Account):
            return outcome_problem(admitted, rid)
        body = await self._read_body(request, key, admitted.config.spec.max_message_bytes, rid)
        if isinstance(body, web.Response):
            return body
        return await self._respond(request, admitted, body, rid)

    async def post_routed_message(self, request: web.Request) -> web.Response:
        """No account in the path: the sender picks it, by the same routing as the SMTP ingress.

        The body has to be read (within the largest account limit) to learn the
        sender; then the chosen account's access, size and sender checks apply
        exactly as on the per-account path.
        """
        rid = request_id(request)
        identity = await identify(self.authenticator, request, "-", rid)
        if isinstance(identity, web.Response):
            return identity
        largest = max((a.config.spec.max_message_bytes for a in self.relay.registry.accounts().values()), default=0)
        body = await self._read_body(request, "-", largest, rid)
        if isinstance(body, web.Response):
            return body
        try:
            sender = self._message(request.content_type, body, request).sender
        except ValidationError as exc:
            return self._invalid("-", describe_validation_error(exc), rid)
        except MessageError as exc:
            return self._invalid("-", [{"field": exc.field, "message": exc.detail}], rid)

        def pick() -> Account | web.Response:
            decision = self.router.route(sender)
            if isinstance(decision, NoRoute):
                return outcome_problem(decision.as_outcome(), rid)
            admitted = self.relay.admit(identity, decision.account.key)
            return admitted if isinstance(admitted, Account) else outcome_problem(admitted, rid)

        async def send(account: Account) -> web.Response:
            too_large = self.relay.check_size(account, len(body))
            if request.content_type == RFC822 and too_large is not None:
                return outcome_problem(too_large, rid)
            return await self._respond(request, account, body, rid)

        # Routed again, like an SMTP message, when the account is removed while the message waits.
        return await rerouted(pick, send, _unknown_account)

    async def _read_body(self, request: web.Request, key: str, max_message_bytes: int, rid: str) -> bytes | web.Response:
        content_type = request.content_type
        if content_type not in (JSON, RFC822):
            self.relay.record(key, "unsupported-media-type")
            return problem("unsupported-media-type", f"send {JSON} or {RFC822}, not {content_type!r}", request_id=rid)
        limit = max_message_bytes
        if content_type == JSON:
            limit = int(limit * JSON_OVERHEAD) + JSON_SLACK
        try:
            return await read_limited(request, limit)
        except BodyTooLarge:
            self.relay.record(key, Reason.TOO_LARGE.value)
            refusal = Refused(Reason.TOO_LARGE, f"the body is larger than account {key!r} accepts ({limit} bytes)")
            return outcome_problem(refusal, rid)

    async def _respond(self, request: web.Request, account: Account, body: bytes, rid: str) -> web.Response:
        """Deliver, once per Idempotency-Key when the caller sent one."""
        key = account.key
        content_type = request.content_type
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is None:
            return await self._deliver(request, account, content_type, body, rid)
        if not 0 < len(idempotency_key) <= MAX_KEY_LENGTH or not idempotency_key.isprintable():
            detail = f"Idempotency-Key: at most {MAX_KEY_LENGTH} printable characters"
            return self._invalid(key, [{"field": "Idempotency-Key", "message": detail}], rid)
        request_fingerprint = fingerprint(f"{content_type}?{request.query_string}", body)

        async def deliver() -> StoredResponse:
            response = await self._deliver(request, account, content_type, body, rid)
            assert isinstance(response.body, bytes)
            kept = {name: response.headers[name] for name in ("Retry-After",) if name in response.headers}
            return StoredResponse(response.status, response.body, response.content_type, kept)

        try:
            stored = await self.idempotency.run(key, idempotency_key, request_fingerprint, deliver)
        except IdempotencyConflict:
            self.relay.record(key, "idempotency-conflict")
            return problem(
                "idempotency-conflict",
                "this Idempotency-Key was used with a different request body",
                request_id=rid,
            )
        headers = dict(stored.headers)
        if stored.replayed:
            headers["Idempotent-Replayed"] = "true"
        return web.Response(status=stored.status, body=stored.body, content_type=stored.content_type, headers=headers)

    async def _deliver(self, request: web.Request, account: Account, content_type: str, body: bytes, rid: str) -> web.Response:
        """Queue, forward to a peer, or build and send: the part an Idempotency-Key protects from running twice."""
        key = account.config.key
        queued = account.config.spec.delivery.mode is DeliveryMode.queue or (self.outbox is not None and prefers_async(request))
        if queued:
            return await self._enqueue(request, account, content_type, body, rid)
        if account.forward_peers:
            return await self.forwarder.forward(request, body, account.forward_peers, rid)
        try:
            message = self._message(content_type, body, request)
        except ValidationError as exc:
            return self._invalid(key, describe_validation_error(exc), rid)
        except MessageError as exc:
            return self._invalid(key, [{"field": exc.field, "message": exc.detail}], rid)
        outcome = await self.relay.send(account, message)
        if isinstance(outcome, Sent):
            log.info("sent %s via %s to %d recipient(s)", outcome.message_id, key, len(outcome.accepted))
            return web.json_response(sent_body(outcome), dumps=json.dumps)
        if outcome.reason is Reason.NO_LOCAL_SHARE:
            # The share here went to 0 while the message waited; nothing was sent, so a peer may take it.
            current = self.relay.registry.get(key)
            if current is not None and current.forward_peers:
                return await self.forwarder.forward(request, body, current.forward_peers, rid)
        log.info("not sent via %s: %s (%s)", key, outcome.reason.value, outcome.detail)
        return outcome_problem(outcome, rid)

    async def _enqueue(self, request: web.Request, account: Account, content_type: str, body: bytes, rid: str) -> web.Response:
        """202 once the message is stored durably; every check that can fail now answers now, as a send would."""
        key = account.key
        if self.outbox is None:
            detail = f"account {key!r} queues its messages, but this gateway has no queue (start it with --queue)"
            self.relay.record(key, "queue-unavailable")
            return problem("queue-unavailable", detail, request_id=rid, retry_after=30)
        try:
            message = self._message(content_type, body, request)
        except ValidationError as exc:
            return self._invalid(key, describe_validation_error(exc), rid)
        except MessageError as exc:
            return self._invalid(key, [{"field": exc.field, "message": exc.detail}], rid)
        refusal = self.relay.check_message(account, message)
        if refusal is not None:
            self.relay.record(key, refusal.reason.value)
            return outcome_problem(refusal, rid)
        try:
            queue_id = await self.outbox.enqueue(account, message, idempotency_key=request.headers.get("Idempotency-Key"))
        except QueueError as exc:
            log.warning("could not queue a message for %s: %s", key, type(exc).__name__)
            self.relay.record(key, "queue-unavailable")
            return problem(
                "queue-unavailable",
                "the message queue cannot store the message; nothing was kept, try again",
                request_id=rid,
                retry_after=5,
            )
        self.relay.record(key, "queued")
        log.info("queued %s (%s) via %s for %d recipient(s)", queue_id, message.message_id, key, len(message.recipients))
        headers = {"Location": f"/v1/messages/{queue_id}"}
        if prefers_async(request):
            headers["Preference-Applied"] = "respond-async"
        body_out = {"id": queue_id, "messageId": message.message_id, "state": "queued", "recipients": message.recipients}
        return web.json_response(body_out, status=202, headers=headers, dumps=json.dumps)

    def _message(self, content_type: str, body: bytes, request: web.Request) -> OutgoingMessage:
        if content_type == JSON:
            return compose_message(SendRequest.model_validate_json(body), hostname=self.hostname)
        query = request.query
        return parse_raw_message(body, mail_from=query.get("from"), rcpt_to=query.getall("to", []) or None)

    def _invalid(self, key: str, errors: list[dict[str, str]], rid: str) -> web.Response:
        self.relay.record(key, "invalid-request")
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        detail = f"{first['field']}: {first['message']}"
        return problem("invalid-request", detail, request_id=rid, errors=errors)


def _unknown_account(response: web.Response) -> bool:
    """The send found its account gone (the only 404 once the account was admitted)."""
    return response.status == PROBLEM_TYPES[Reason.UNKNOWN_ACCOUNT.value].status
