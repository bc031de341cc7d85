"""From an SMTP transaction to the relay core's ``OutgoingMessage``, touching the client's bytes once.

The message goes upstream exactly as the client sent it (after SMTP's own
dot-unstuffing), with one ``Received`` header prepended: no re-encoding, no
added Message-ID or Date, so signatures made by the client stay valid. The
header section is only read, to find the From addresses the relay must check
against the account's ``senders`` and the Message-ID for the logs.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses

from ..gateway.message import OutgoingMessage

_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
# One plain mailbox, ``a@b`` or ``Name <a@b>``: parsed without the email package, which costs a tenth of a
# millisecond per message; anything else (groups, comments, quoting, lists) takes the general parser.
_ONE_MAILBOX = re.compile(r'\s*(?:[\w .\-\']*<([^\s<>()",;:@]+@[^\s<>()",;:@]+)>|([^\s<>()",;:@]+@[^\s<>()",;:@]+))\s*')


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
    date = format_datetime(now or datetime.now(UTC))
    return (
        f"Received: from {helo} ([{peer_ip}])\r\n"
        f"\tby {hostname} (mailgate) with {protocol} id {message_id};\r\n"
        f"\t{date}\r\n"
    ).encode("ascii", "replace")


def _header_fields(data: bytes, wanted: set[bytes]) -> dict[bytes, list[str]]:
    """Unfolded values of the wanted fields (lower-case names) from the header section only."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[: end + 2]
    found: dict[bytes, list[list[bytes]]] = {}
    current: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        current = None
        match = _FIELD.match(line)
        if match is not None and match.group(1).lower() in wanted:
            current = [line[match.end() :]]
            found.setdefault(match.group(1).lower(), []).append(current)
    return {
        name: [b" ".join(part.strip() for part in value).decode("utf-8", "replace") for value in values]
        for name, values in found.items()
    }


def _addresses(value: str) -> list[str]:
    match = _ONE_MAILBOX.fullmatch(value)
    if match is not None:
        return [match.group(1) or match.group(2)]
    return [address for _, address in getaddresses([value]) if address]


def build_message(
    *, sender: str, recipients: list[str], data: bytes, received: bytes, smtputf8: bool, fallback_id: str
) -> OutgoingMessage:
    """The relay's message for one transaction: the envelope, the From addresses, the bytes with Received."""
    fields = _header_fields(data, {b"from", b"message-id"})
    header_from = [address for value in fields.get(b"from", []) for address in _addresses(value)]
    message_ids = fields.get(b"message-id", [])
    return OutgoingMessage(
        sender=sender,
        recipients=list(recipients),
        header_from=header_from,
        data=received + data,
        message_id=message_ids[0].strip() if message_ids else f"<{fallback_id}>",
        smtputf8=smtputf8,
    )
