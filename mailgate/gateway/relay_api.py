"""``POST /v1/relay/accounts/{namespace}/{name}``, on the admin API: send a message a peer gateway hands over.

A gateway that holds no connection share of an account sends the SMTP
messages for it through a gateway that holds one (``Relay.deliver``,
``forward.Forwarder.relay``). The SMTP client's login or trusted network was
checked there, and so were the sender and the size; the only credential that
crosses is the admin token every gateway of the deployment holds (checked by
the admin app's middleware), so this endpoint trusts the forwarding gateway
as the admin API trusts the operator. It runs the relay as a door would,
bar the forwarding (``forwarded=True``: a gateway that would pass the message
on again refuses it), and answers with the relay's outcome (``relay_wire``),
200 whatever it is; only a request that is not a relay request is a problem.
"""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import ValidationError

from ..relay.accounts import Account
from ..relay.core import Relay
from ..relay.identity import Identity
from ..relay.outcomes import Outcome, Reason, Refused, outcome_label
from .compose import describe_validation_error
from .http_api import BodyTooLarge, read_limited
from .middleware import request_id
from .problems import problem
from .relay_wire import RelayAnswer, RelayRequest

ROUTE = "/v1/relay/accounts/{namespace}/{name}"
BASE64_GROWTH = 4 / 3
ENVELOPE_ROOM = 1024 * 1024  # recipients, originators and JSON around the message's base64
_PEER = Identity(name="peer-gateway", may_use=lambda account: True)  # a holder of the admin token

log = logging.getLogger("mailgate.gateway.relay_api")


class RelayAPI:
    """The relay endpoint's handler; one instance per gateway, on the admin application."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.post_relay)

    async def post_relay(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        try:
            body = await read_limited(request, self._body_limit(key))
        except BodyTooLarge:
            self.relay.record(key, Reason.TOO_LARGE.value)
            return _answer(Refused(Reason.TOO_LARGE, f"the message is larger than account {key!r} accepts"))
        try:
            relayed = RelayRequest.model_validate_json(body)
        except ValidationError as exc:  # the body is read first, so that a malformed request is refused on any path
            errors = describe_validation_error(exc)
            first = errors[0]
            return problem("invalid-request", f"{first['field']}: {first['message']}", request_id=request_id(request),
                           errors=errors)  # fmt: skip
        admitted = self.relay.admit(_PEER, key)
        if not isinstance(admitted, Account):
            return _answer(admitted)
        message = relayed.message()
        outcome = await self.relay.deliver(admitted, message, forwarded=True)
        log.info("relayed %s for a peer via %s to %d recipient(s): %s", message.message_id, key, len(message.recipients),
                 outcome_label(outcome))  # fmt: skip
        return _answer(outcome)

    def _body_limit(self, key: str) -> int:
        """The account's message limit in base64, plus room for the envelope (the largest limit for an unknown account)."""
        account = self.relay.registry.get(key)
        if account is not None:
            largest = account.config.spec.max_message_bytes
        else:
            largest = max((a.config.spec.max_message_bytes for a in self.relay.registry.accounts().values()), default=0)
        return int(largest * BASE64_GROWTH) + ENVELOPE_ROOM


def _answer(outcome: Outcome) -> web.Response:
    return web.Response(body=RelayAnswer.of(outcome).model_dump_json(by_alias=True), content_type="application/json")
