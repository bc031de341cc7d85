"""The relay core's outcomes as SMTP replies: the ingress's whole error contract in one place.

The rule the mapping serves: a client hears ``250`` only for what the
upstream accepted, ``4xx`` when the very same message can succeed later (the
client keeps it and retries), ``5xx`` when it cannot (the client bounces it).

- Sent to every recipient: ``250 2.0.0``.
- Sent to some recipients only (the upstream refused others at RCPT): a
  ``5xx`` that names who got it and who did not. The message was relayed
  after DATA as one transaction, so it already reached the accepted
  recipients; a ``4xx`` would make the client send it to them again, and a
  ``250`` would claim delivery to the refused ones.
- Upstream 5xx: the upstream's own code, enhanced code and text.
- Upstream 4xx (421 included), timeouts, pool saturation, rate limit, an
  unreachable upstream, no peer gateway to send it (this gateway holds no
  connection share of the account), shutting down: ``451`` with a ``4.x.x``
  code (the upstream's own when it gave a 4.x.x one).
- Delivery unknown (the connection to the upstream failed after the final
  dot, before its verdict): ``451 4.4.2`` saying it may have been delivered.
  The client will retry, so the recipients may get it twice; Postfix makes
  the same choice (a duplicate is better than a loss nobody hears of).

Upstream text is passed on, cleaned of anything that could break the reply
framing (control characters; non-ASCII unless the session uses SMTPUTF8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..relay.outcomes import DeliveryUnknown, Outcome, Reason, Refused, RetryLater, Sent
from ..relay.routing import NoRoute

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
MAX_LINE_TEXT = 400  # RFC 5321 allows 512 octets per reply line, code included

# Enhanced codes (RFC 3463) for conditions that have no upstream answer.
_TEMPORARY = {
    Reason.RATE_LIMITED: "4.7.0",
    Reason.POOL_SATURATED: "4.4.5",  # mail system congestion
    Reason.UPSTREAM_UNAVAILABLE: "4.4.1",  # no answer from host
    Reason.UPSTREAM_AUTH_FAILED: "4.7.0",
    Reason.UPSTREAM_TIMEOUT: "4.4.2",  # bad connection
    Reason.SUSPENDED: "4.3.2",  # system not accepting messages
    Reason.SHUTTING_DOWN: "4.3.2",
    Reason.NO_LOCAL_SHARE: "4.4.5",  # its connections are on other gateways: congestion here
    Reason.DELIVERY_UNKNOWN: "4.4.2",  # bad connection
    Reason.UNKNOWN_ACCOUNT: "4.3.0",  # removed while the message was being received: routing may differ next time
    Reason.UPSTREAM_REFUSED: "4.0.0",
    Reason.ROUTING_CONFLICT: "4.3.5",  # system incorrectly configured: an admin fix lets the retry through
    Reason.PEER_UNAVAILABLE: "4.4.1",  # no answer from host: the peer gateway that would send it
}
_PERMANENT = {
    Reason.SENDER_NOT_ALLOWED: (550, "5.7.1"),
    Reason.FORBIDDEN: (550, "5.7.1"),
    Reason.TOO_LARGE: (552, "5.3.4"),
    Reason.UPSTREAM_UNSUPPORTED: (553, "5.6.7"),
    Reason.UNKNOWN_ACCOUNT: (451, "4.3.0"),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply; ``str()`` is the wire form without the final CRLF (aiosmtpd adds it)."""

    code: int
    status: str  # enhanced status code
    lines: tuple[str, ...]

    def __str__(self) -> str:
        last = len(self.lines) - 1
        return "\r\n".join(f"{self.code}{' ' if i == last else '-'}{self.status} {line}" for i, line in enumerate(self.lines))

    @property
    def ok(self) -> bool:
        return self.code < 400


def reply(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, tuple(clean(line) for line in text.splitlines() or [""]))


def clean(text: str, *, utf8: bool = False) -> str:
    text = _UNSAFE.sub(" ", text)
    if not utf8:
        text = text.encode("ascii", "replace").decode("ascii")
    return text[:MAX_LINE_TEXT]


def split_enhanced(text: str) -> tuple[str | None, str]:
    """``"5.1.1 no such user"`` -> ``("5.1.1", "no such user")``; ``(None, text)`` without one."""
    match = _ENHANCED.match(text)
    if match is None:
        return None, text
    return match.group(0), text[match.end() :].lstrip()


def _upstream_reply(code: int, text: str, *, temporary: bool, fallback: str) -> Reply:
    """The upstream's answer passed on: its code and enhanced code for 5xx; 451 and a 4.x.x code for 4xx."""
    lines = text.splitlines() or [""]
    status, first = split_enhanced(lines[0])
    rest = [split_enhanced(line)[1] for line in lines[1:]]
    if temporary:
        status = status if status is not None and status.startswith("4.") else fallback
        return Reply(451, status, tuple(clean(line) for line in [f"upstream said {code}: {first}", *rest]))
    if status is None or not status.startswith("5."):
        status = "5.0.0"
    return Reply(code, status, tuple(clean(line) for line in [first, *rest]))


def for_outcome(outcome: Outcome, message_id: str) -> Reply:
    if isinstance(outcome, Sent):
        return _for_sent(outcome, message_id)
    if isinstance(outcome, RetryLater):
        if outcome.upstream is not None:
            return _upstream_reply(*outcome.upstream, temporary=True, fallback=_TEMPORARY.get(outcome.reason, "4.0.0"))
        retry = f" (retry after {int(outcome.retry_after)}s)" if outcome.retry_after >= 1 else ""
        return reply(451, _TEMPORARY.get(outcome.reason, "4.0.0"), outcome.detail + retry)
    if isinstance(outcome, DeliveryUnknown):
        return reply(451, _TEMPORARY[outcome.reason], outcome.detail)
    return _for_refused(outcome)


def _for_refused(outcome: Refused) -> Reply:
    if outcome.upstream is not None:
        code, text = outcome.upstream
        temporary = outcome.retryable or code < 500
        return _upstream_reply(code, text, temporary=temporary, fallback=_TEMPORARY.get(outcome.reason, "4.0.0"))
    if outcome.retryable:
        return reply(451, _TEMPORARY.get(outcome.reason, "4.0.0"), outcome.detail)
    code, status = _PERMANENT.get(outcome.reason, (554, "5.0.0"))
    return reply(code, status, outcome.detail)


def _for_sent(sent: Sent, message_id: str) -> Reply:
    if not sent.rejected:
        return reply(250, "2.0.0", f"OK {message_id} relayed")
    # Partial delivery: the first refusal's permanent code, and the whole story in the text.
    code, text = next(iter(sent.rejected.values()))
    status, _ = split_enhanced(text)
    if code < 500:  # a temporary refusal beside delivered recipients still cannot be a 4xx (see above)
        code, status = 550, None
    status = status if status is not None and status.startswith("5.") else "5.0.0"
    lines = [f"message {message_id} was relayed to {len(sent.accepted)} of {len(sent.accepted) + len(sent.rejected)} recipients"]
    lines += [f"delivered: {address}" for address in sent.accepted]
    lines += [f"refused: {address}: {rcode} {split_enhanced(rtext)[1]}" for address, (rcode, rtext) in sent.rejected.items()]
    lines.append("do not resend to the delivered recipients")
    return Reply(code, status, tuple(clean(line) for line in lines))


def for_no_route(decision: NoRoute) -> Reply:
    """Through the relay's outcome, so that both doors map a routing decision the same way."""
    return for_outcome(decision.as_outcome(), "-")
