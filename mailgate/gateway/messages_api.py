"""The status API of queued messages: ``GET`` / ``DELETE /v1/messages/{id}``, ``GET /v1/accounts/{ns}/{name}/messages``,
``POST /v1/accounts/{ns}/{name}/messages/retry``.

A caller sees a message if it may send through the message's account (the
same authorization as sending). A message the caller may not see answers
404 like one that does not exist: message ids are not secrets, but whether a
message exists in somebody else's account is not the caller's business.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from aiohttp import web

from ..queue import MessageState, QueuedMessage, QueueError
from ..queue.wire import message_json
from ..relay.core import Relay
from ..relay.identity import Identity
from ..relay.outbox import Outbox
from ..relay.outcomes import Reason, Refused
from .auth import Authenticator
from .http_api import identify
from .middleware import request_id
from .problems import outcome_problem, problem

MESSAGE = "/v1/messages/{id}"
ACCOUNT_MESSAGES = "/v1/accounts/{namespace}/{name}/messages"
RETRY = ACCOUNT_MESSAGES + "/retry"
MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


class MessagesAPI:
    def __init__(self, relay: Relay, authenticator: Authenticator, outbox: Outbox | None) -> None:
        self.relay = relay
        self.authenticator = authenticator
        self.outbox = outbox

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(MESSAGE, self.get_message)
        app.router.add_delete(MESSAGE, self.cancel_message)
        app.router.add_get(ACCOUNT_MESSAGES, self.list_messages)
        app.router.add_post(RETRY, self.retry_messages)

    async def get_message(self, request: web.Request) -> web.StreamResponse:
        found = await self._visible(request)
        if isinstance(found, web.StreamResponse):
            return found
        return web.json_response(message_json(found), dumps=json.dumps)

    async def cancel_message(self, request: web.Request) -> web.StreamResponse:
        """204 once cancelled; 409 while a delivery holds it or once it finished (nothing can be taken back)."""
        found = await self._visible(request)
        if isinstance(found, web.StreamResponse):
            return found
        assert self.outbox is not None
        rid = request_id(request)
        try:
            cancelled = await self.outbox.cancel(found.id)
        except QueueError:
            return _queue_unavailable(rid)
        if cancelled:
            return web.Response(status=204)
        current = await self.outbox.get(found.id)
        state = current.state.value if current is not None else found.state.value
        return problem(
            "not-cancellable", f"message {found.id} is {state}: only queued or deferred messages can be cancelled", request_id=rid
        )

    async def list_messages(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        key = await self._usable_account(request, rid)
        if isinstance(key, web.StreamResponse):
            return key
        query = _page_query(request)
        if isinstance(query, InvalidQuery):
            detail = f"{query.field}: {query.message}"
            return problem("invalid-request", detail, request_id=rid, errors=[{"field": query.field, "message": query.message}])
        if self.outbox is None:
            return web.json_response({"items": [], "next": None})
        state, limit, after = query
        try:
            page = await self.outbox.list_messages(key, state=state, limit=limit, after_id=after)
        except QueueError:
            return _queue_unavailable(rid)
        return web.json_response({"items": [message_json(m) for m in page.items], "next": page.next_after}, dumps=json.dumps)

    async def retry_messages(self, request: web.Request) -> web.StreamResponse:
        """Every deferred message of the account is due now (Postfix's ``postqueue -f``, for one account): after an
        outage on the upstream's side, which the gateway cannot see end. 200 with how many."""
        rid = request_id(request)
        key = await self._usable_account(request, rid)
        if isinstance(key, web.StreamResponse):
            return key
        if self.outbox is None:
            return web.json_response({"retried": 0})
        try:
            retried = await self.outbox.retry_now(key)
        except QueueError:
            return _queue_unavailable(rid)
        return web.json_response({"retried": retried})

    async def _usable_account(self, request: web.Request, rid: str) -> str | web.StreamResponse:
        """The key of the account in the path if the caller may send through it; otherwise the response to give."""
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        identity = await identify(self.authenticator, request, key, rid)
        if isinstance(identity, web.StreamResponse):
            return identity
        account = self.relay.registry.get(key)
        if account is None:
            return outcome_problem(Refused(Reason.UNKNOWN_ACCOUNT, f"no account {key!r} on this gateway"), rid)
        if not identity.may_use(account.ref):
            return outcome_problem(Refused(Reason.FORBIDDEN, f"{identity.name} may not use account {key!r}"), rid)
        return key

    async def _visible(self, request: web.Request) -> QueuedMessage | web.StreamResponse:
        """The message named in the path if the caller may see it; otherwise the response to give."""
        rid = request_id(request)
        message_id = request.match_info["id"]
        identity = await identify(self.authenticator, request, "-", rid)
        if isinstance(identity, web.StreamResponse):
            return identity
        if self.outbox is None:
            return problem("not-found", "this gateway keeps no queue (it was started without --queue)", request_id=rid)
        if not MESSAGE_ID.match(message_id):
            return problem("not-found", f"no message {message_id!r}: ids are 32 lower-case hex digits", request_id=rid)
        try:
            message = await self.outbox.get(message_id)
        except QueueError:
            return _queue_unavailable(rid)
        if message is None or not self._may_see(identity, message):
            return problem("not-found", f"no message {message_id} that this caller may see", request_id=rid)
        return message

    def _may_see(self, identity: Identity, message: QueuedMessage) -> bool:
        account = self.relay.registry.get(message.account)
        return account is not None and identity.may_use(account.ref)


class InvalidQuery(NamedTuple):
    field: str
    message: str


def _page_query(request: web.Request) -> tuple[MessageState | None, int, str | None] | InvalidQuery:
    """``state``, ``limit`` and ``after`` from the query, or what is wrong with them."""
    query = request.query
    state: MessageState | None = None
    if "state" in query:
        try:
            state = MessageState(query["state"])
        except ValueError:
            return InvalidQuery("state", f"one of {', '.join(s.value for s in MessageState)}")
    limit = DEFAULT_PAGE
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
            return InvalidQuery("limit", f"an integer from 1 to {MAX_PAGE}")
        limit = int(text)
    after = query.get("after")
    if after is not None and not MESSAGE_ID.match(after):
        return InvalidQuery("after", "a message id (32 lower-case hex digits): the next value of the previous page")
    return state, limit, after


def _queue_unavailable(rid: str) -> web.Response:
    return problem("queue-unavailable", "the message queue cannot be reached; try again", request_id=rid, retry_after=5)
