"""The peer relay's wire format: the relay core's message and outcome as JSON.

A gateway that holds no connection share of an account hands an SMTP message
for it to a peer that holds one (``forward.Forwarder.relay``, answered by
``relay_api``). What crosses is the core's own types, nothing of SMTP: the
``OutgoingMessage`` the forwarding gateway built and checked (its bytes,
Received header included, base64), and the ``Outcome`` the peer's relay came
to, which the forwarding door answers exactly as it answers a local send.

Both sides read and write these models, and the OpenAPI document is
generated from them. ``strict``: a JSON ``1`` is not ``true`` and ``"5"`` is
not 5, so what the document calls invalid is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, RootModel, WithJsonSchema
from pydantic.alias_generators import to_camel

from ..relay.envelope import OutgoingMessage
from ..relay.outcomes import DeliveryUnknown, Outcome, Reason, Refused, RetryLater, Sent

_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# What a MAIL or RCPT path never holds (the SMTP door refuses these at MAIL and RCPT): C0, DEL and C1 controls.
_PATH_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _decode(value: Any) -> bytes:
    if isinstance(value, bytes):  # built from an OutgoingMessage, not read from JSON
        return value
    if not isinstance(value, str):
        raise ValueError("data must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise ValueError("data is not base64 (standard alphabet, padded, no line breaks)") from None


MessageBytes = Annotated[
    bytes,
    PlainValidator(_decode),
    PlainSerializer(lambda data: base64.b64encode(data).decode("ascii")),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "message/rfc822",
            "pattern": _BASE64,
            "description": "The message as the upstream will receive it (CRLF lines, the forwarding gateway's "
            "Received header first), base64 without line breaks.",
        }
    ),
]
SmtpPath = Annotated[str, Field(pattern=_PATH_PATTERN)]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class RelayRequest(_Wire):
    """A message for a peer to send through its share of the account, as the forwarding gateway built and checked it."""

    mail_from: SmtpPath = Field(description="The envelope sender (MAIL FROM); empty for the null sender.")
    rcpt_to: list[Annotated[SmtpPath, Field(min_length=1)]] = Field(min_length=1, description="The envelope recipients.")
    header_from: list[str] = Field(description="The addresses of the From field.")
    originators: list[str] = Field(
        description="Every address of From, Sender, Resent-From and Resent-Sender: what the account's senders must allow."
    )
    message_id: str = Field(description="The Message-ID (or the transaction id), for the logs and the answer.")
    smtputf8: bool = Field(description="Send with SMTPUTF8 (the client asked for it).")
    data: MessageBytes

    @classmethod
    def of(cls, message: OutgoingMessage) -> RelayRequest:
        return cls(
            mail_from=message.sender,
            rcpt_to=message.recipients,
            header_from=message.header_from,
            originators=message.originators,
            message_id=message.message_id,
            smtputf8=message.smtputf8,
            data=message.data,
        )

    def message(self) -> OutgoingMessage:
        return OutgoingMessage(
            sender=self.mail_from,
            recipients=self.rcpt_to,
            header_from=self.header_from,
            originators=self.originators,
            data=self.data,
            message_id=self.message_id,
            smtputf8=self.smtputf8,
        )


class UpstreamAnswer(_Wire):
    code: int = Field(description="SMTP reply code.")
    message: str = Field(description="SMTP reply text.")


class RefusedRecipient(_Wire):
    recipient: str
    code: int = Field(description="The upstream's reply code for this recipient.")
    message: str


class SentAnswer(_Wire):
    """The upstream accepted the message for at least one recipient."""

    outcome: Literal["sent"]
    message_id: str
    accepted: list[str]
    rejected: list[RefusedRecipient]
    upstream: UpstreamAnswer = Field(description="The upstream's reply to the message text.")


class RefusedAnswer(_Wire):
    """It will not be sent as it is; retryable: the same message can succeed later."""

    outcome: Literal["refused"]
    reason: Reason
    detail: str
    retryable: bool
    upstream: UpstreamAnswer | None = Field(description="The upstream's answer, when it gave one.")


class RetryLaterAnswer(_Wire):
    """A temporary condition; nothing reached the upstream."""

    outcome: Literal["retryLater"]
    reason: Reason
    detail: str
    retry_after: float = Field(ge=0, description="Seconds.")
    upstream: UpstreamAnswer | None = Field(description="The upstream's answer, when it gave one.")


class DeliveryUnknownAnswer(_Wire):
    """The upstream connection failed after the message text, before its verdict: it may have been delivered."""

    outcome: Literal["deliveryUnknown"]
    detail: str


class RelayAnswer(RootModel[SentAnswer | RefusedAnswer | RetryLaterAnswer | DeliveryUnknownAnswer]):
    """What the peer's relay came to, whatever it is (HTTP 200): sent, refused, retry later or delivery unknown."""

    root: Annotated[SentAnswer | RefusedAnswer | RetryLaterAnswer | DeliveryUnknownAnswer, Field(discriminator="outcome")]

    @classmethod
    def of(cls, outcome: Outcome) -> RelayAnswer:
        if isinstance(outcome, Sent):
            rejected = [RefusedRecipient(recipient=r, code=code, message=text) for r, (code, text) in outcome.rejected.items()]
            upstream = UpstreamAnswer(code=outcome.code, message=outcome.reply)
            return cls(SentAnswer(outcome="sent", message_id=outcome.message_id, accepted=outcome.accepted,
                                  rejected=rejected, upstream=upstream))  # fmt: skip
        if isinstance(outcome, DeliveryUnknown):
            return cls(DeliveryUnknownAnswer(outcome="deliveryUnknown", detail=outcome.detail))
        answer = None if outcome.upstream is None else UpstreamAnswer(code=outcome.upstream[0], message=outcome.upstream[1])
        if isinstance(outcome, Refused):
            return cls(RefusedAnswer(outcome="refused", reason=outcome.reason, detail=outcome.detail,
                                     retryable=outcome.retryable, upstream=answer))  # fmt: skip
        return cls(RetryLaterAnswer(outcome="retryLater", reason=outcome.reason, detail=outcome.detail,
                                    retry_after=outcome.retry_after, upstream=answer))  # fmt: skip

    def outcome(self) -> Outcome:
        answer = self.root
        if isinstance(answer, SentAnswer):
            rejected = {r.recipient: (r.code, r.message) for r in answer.rejected}
            return Sent(answer.message_id, answer.accepted, rejected, answer.upstream.code, answer.upstream.message)
        if isinstance(answer, DeliveryUnknownAnswer):
            return DeliveryUnknown(answer.detail)
        upstream = None if answer.upstream is None else (answer.upstream.code, answer.upstream.message)
        if isinstance(answer, RefusedAnswer):
            return Refused(answer.reason, answer.detail, answer.retryable, upstream)
        return RetryLater(answer.reason, answer.detail, answer.retry_after, upstream)
