"""From an SMTP transaction to the relay core's ``OutgoingMessage``, touching the client's bytes once.

The message goes upstream as the client sent it (after SMTP's own
dot-unstuffing), with one ``Received`` header prepended: no re-encoding, no
added Message-ID or Date, so signatures made by the client stay valid. One
change: lone CR and lone LF become CRLF, as aiosmtplib would make them on the
way out anyway, so that the header section read here is the one the upstream
reads. It is read for the originator addresses (From, Sender, Resent-From,
Resent-Sender) the relay checks against the account's ``senders``, and the
Message-ID for the logs.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from datetime import UTC, datetime
from email.utils import format_datetime

from ..relay.envelope import OutgoingMessage
from ..relay.rfc822 import ORIGINATOR_FIELDS, crlf_text, field_addresses, read_header_section, split_header_section

_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")


def transaction_id() -> str:
    """A short random id for one message: in the Received header, the 250 reply and every log line."""
    return secrets.token_hex(8)


def protocol_name(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The ``with`` keyword of RFC 3848 and RFC 6531 (ESMTPSA, UTF8SMTPS, ...)."""
    if not extended:
        return "SMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + suffix


def received_header(
    *, helo: str, peer_ip: str, hostname: str, protocol: str, message_id: str, now: datetime | None = None
) -> bytes:
    """``Received: from helo ([ip]) by host (mailgate) with ESMTPS id x; date``, folded, CRLF-terminated.

    The HELO name is the client's claim and is reduced to safe characters;
    no reverse DNS lookup is made (it would cost a round trip per session).
    """
    helo = _HELO_UNSAFE.sub("?", helo)[:200] or "unknown"
    date = format_datetime(now) if now is not None else _date_of(int(time.time()))
    return (
        f"Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (mailgate) with {protocol} id {message_id};\r\n\t{date}\r\n"
    ).encode("ascii", "replace")


@functools.lru_cache(maxsize=1)
def _date_of(second: int) -> str:
    """The RFC 5322 date of a whole second: formatted once per second, not once per message."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def transaction_message(
    *, sender: str, recipients: list[str], data: bytes, received: bytes, smtputf8: bool, fallback_id: str
) -> OutgoingMessage:
    """The relay's message for one transaction: the envelope, the originators, the bytes with Received.

    Raises ``MessageError`` for a header section that cannot be read with
    confidence (control characters, stray lines, ambiguous address fields):
    the gateway will not relay what it cannot check.
    """
    text = crlf_text(data)
    block, _ = split_header_section(text)
    header_from: list[str] = []
    originators: list[str] = []
    message_id = ""
    for name, raw in read_header_section(block, headerless=True):
        lowered = name.lower()
        if lowered in ORIGINATOR_FIELDS:
            addresses = field_addresses(name, raw)
            originators += addresses
            if lowered == "from":
                header_from += addresses
        elif lowered == "message-id" and not message_id:
            message_id = raw.decode("utf-8", "replace").split(":", 1)[1].replace("\r\n", "").strip()
    return OutgoingMessage(
        sender=sender,
        recipients=list(recipients),
        header_from=header_from,
        originators=originators,
        data=received + text,
        message_id=message_id or f"<{fallback_id}>",
        smtputf8=smtputf8,
    )
