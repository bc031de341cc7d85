"""``send`` for the delivery loop over ``SMTPPool``: the pool's results and exceptions as ``SendOutcome``.

The same pool, connection shares and sessions as synchronous sends; only the reading of the
result differs from ``relay/outcomes.py``'s ``classify_error``: the queue needs each recipient's
reply (an "every recipient refused" error is a per-recipient verdict here, not one refusal),
and "try later" is the loop's decision, not the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import aiosmtplib

from mailgate.oauth2.keeper import TokenUnavailable
from mailgate.pool import PoolClosed, PoolTimeout, SMTPPool, TransactionError, UnknownAccount, describe_error
from mailgate.queue.delivery import Send, SendError, SendOutcome
from mailgate.queue.model import Reply


def pool_send(pool: SMTPPool, *, acquire_timeout: float | None = 30.0) -> Send:
    """A ``Send`` relaying through ``pool`` (accounts are the pool's account names)."""

    async def send(account: str, sender: str, recipients: Sequence[str], data: bytes, smtputf8: bool) -> SendOutcome:
        # RFC 6152: 8-bit data must be declared, as the relay does for synchronous sends.
        options = ("BODY=8BITMIME",) * (not data.isascii()) + ("SMTPUTF8",) * smtputf8
        try:
            result = await pool.send(account, sender, recipients, data, mail_options=options, timeout=acquire_timeout)
        except Exception as exc:
            return outcome_of_error(exc)
        refused = {address: Reply(*answer) for address, answer in result.refused.items()}
        return SendOutcome(accepted=tuple(result.accepted), refused=refused, reply=Reply(result.code, result.message))

    return send


_NO_SESSION = (SendError.UNREACHABLE, SendError.TIMEOUT, SendError.AUTH)


def outcome_of_error(exc: BaseException) -> SendOutcome:
    """Map what ``SMTPPool.send`` raised. A failure outside a transaction (``TransactionError`` wraps those
    inside one) to connect, secure or log in is the account's upstream, not the message (``no_session``)."""
    outcome = _outcome_of_error(exc)
    if outcome.error in _NO_SESSION and not isinstance(exc, TransactionError):
        return replace(outcome, no_session=True)
    return outcome


def _outcome_of_error(exc: BaseException) -> SendOutcome:
    """Order matters: subclasses first (PoolTimeout is a TimeoutError)."""
    if isinstance(exc, TransactionError):
        if exc.delivery_unknown:
            return SendOutcome(error=SendError.UNKNOWN, detail=describe_error(exc.cause))
        exc = exc.cause
    detail = describe_error(exc)
    if isinstance(exc, PoolTimeout | PoolClosed | UnknownAccount):
        return SendOutcome(error=SendError.BUSY, detail=type(exc).__name__)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = {r.recipient: Reply(r.code, r.message) for r in exc.recipients}
        closing = next((reply for reply in refused.values() if reply.code == 421), None)
        if closing is not None:  # the server is closing the session, not refusing the recipients
            return SendOutcome(error=SendError.REPLY, reply=closing, detail=detail)
        return SendOutcome(refused=refused)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return SendOutcome(error=SendError.AUTH, reply=Reply(454, f"4.7.0 {exc.code} {exc.message}"), detail=detail)
    if isinstance(exc, TokenUnavailable):
        return SendOutcome(error=SendError.AUTH, detail=str(exc))
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError) and exc.code != 421:
        # A greeting refusal says nothing about this message: retry, do not fail it.
        return SendOutcome(error=SendError.UNREACHABLE, detail=detail)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendOutcome(error=SendError.REPLY, reply=Reply(exc.code, exc.message), detail=detail)
    if isinstance(exc, TimeoutError):
        return SendOutcome(error=SendError.TIMEOUT, detail=detail)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):  # SMTPUTF8 or 8BITMIME needed and missing: permanent
        return SendOutcome(error=SendError.REPLY, reply=Reply(554, f"5.6.7 {exc}"), detail=detail)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return SendOutcome(error=SendError.UNREACHABLE, detail=detail)
    raise exc
