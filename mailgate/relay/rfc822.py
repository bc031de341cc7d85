"""A client's own RFC 5322 message, read the way the upstream will read it, or refused.

The raw ``message/rfc822`` body of the HTTP door and every SMTP ingress
message go through here: line endings become CRLF exactly as aiosmtplib
sends them (``crlf_text``), the header section is split into fields
(``read_header_section``) and the addresses of the originator fields (From,
Sender, Resent-From, Resent-Sender), which an account's ``senders``
restrict, are read by both of Python's parsers and refused where readers
could disagree (``field_addresses``). No protocol is involved: the doors
map ``MessageError`` to their own answers.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect
from email.headerregistry import AddressHeader, BaseHeader
from email.policy import default as default_policy
from email.utils import format_datetime, getaddresses

import idna
from aiosmtplib.protocol import normalize_message_line_endings

from .envelope import MessageError, OutgoingMessage, normalise_address, unique_addresses

# A field's first line: a name, optional WSP (RFC 5322 obs-optional, which the upstream may honour), a colon.
_RAW_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


# In a CRLF-normalised header section CR and LF only end lines and TAB is folding white space; the rest of C0
# and DEL make readers disagree (NUL ends a C string, some drop or keep what follows), so they are refused.
_RAW_HEADER_CTL_RE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# In a decoded address field: C1 controls, Unicode line separators, undecodable bytes (surrogate escapes).
_C1_OR_SEPARATOR_RE = re.compile(r"[\x80-\x9f\u2028\u2029\ud800-\udfff]")


# ``Name <local@domain>`` or ``local@domain`` with plain ASCII atoms: read without the email package (see
# ``field_addresses``). No ``=`` or ``?`` (encoded-word lookalikes), no dots in the name, no quotes or comments.
_FAST_ATOM = r"[A-Za-z0-9!#$%&'*+/^_`{|}~\-]+"


_FAST_ADDR = rf"{_FAST_ATOM}(?:\.{_FAST_ATOM})*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"


_FAST_MAILBOX_RE = re.compile(rf"[ \t]*(?:[A-Za-z0-9 '_+\-]*<({_FAST_ADDR})>|({_FAST_ADDR}))[ \t]*")


ORIGINATOR_FIELDS = ("from", "sender", "resent-from", "resent-sender")


class DateCache:
    """``Date:`` text changes once a second; formatting it per message is measurable."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.text = format_datetime(datetime.fromtimestamp(second, UTC))
            cls.second = second
        return cls.text


def crlf_text(data: bytes) -> bytes:
    """``data`` with the line endings the upstream will receive: every CRLF, lone CR and lone LF becomes CRLF.

    This is what aiosmtplib does to every message before DATA (the pool calls
    the very same function), so checking these bytes is checking what the
    upstream gets. Most messages already are CRLF text: three counting passes
    prove it without copying.
    """
    if not data:
        return data
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") == data.count(b"\n") and data.endswith(b"\r\n"):
        return data
    return normalize_message_line_endings(data)


def split_header_section(text: bytes) -> tuple[bytes, bytes]:
    """CRLF text -> (header lines, each ending in CRLF; the body after the empty line)."""
    if text.startswith(b"\r\n"):
        return b"", text[2:]
    split = text.find(b"\r\n\r\n")
    if split < 0:
        return (text if text.endswith(b"\r\n") or not text else text + b"\r\n"), b""
    return text[: split + 2], text[split + 4 :]


def read_header_section(block: bytes, *, headerless: bool = False) -> list[tuple[str, bytes]]:
    """Split CRLF header lines into (name as written, raw field bytes incl. continuation lines and CRLFs).

    Refused, because readers would disagree about them: a control character
    other than TAB (NUL, ESC, DEL...), a first line that is a continuation
    (the upstream would fold it into the header above, our Received), and a
    line that is neither a field nor a continuation (some readers end the
    header section there, others skip the line and read on). With
    ``headerless``, lines none of which is a field are the first paragraph of
    a message without a header section, as every reader sees them.
    """
    control = _RAW_HEADER_CTL_RE.search(block)
    if control is not None:
        number = block.count(b"\r\n", 0, control.start()) + 1
        raise MessageError("body", f"header line {number} holds the control character 0x{block[control.start()]:02x}")
    fields: list[tuple[str, bytes]] = []
    lines = block.split(b"\r\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MessageError("body", "the header section starts with a continuation line")
            fields[-1] = (fields[-1][0], fields[-1][1] + line + b"\r\n")
            continue
        match = _RAW_FIELD_RE.match(line)
        if match is None:
            if headerless and not fields and not any(map(_RAW_FIELD_RE.match, lines)):
                return []
            raise MessageError("body", f"header line {number} is not a 'Name: value' field")
        fields.append((match.group(1).decode("ascii"), line + b"\r\n"))
    return fields


def _field_text(name: str, raw: bytes) -> str:
    """The value as written after the colon, folds (CRLF + WSP) included; only UTF-8 is read (RFC 6532)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError(f"headers.{name}", "not valid UTF-8") from None
    return text.split(":", 1)[1].strip(" \t\r\n")


def _field_value(name: str, raw: bytes) -> str:
    """The unfolded value (CRLFs removed, as RFC 5322 unfolds), without the name and the colon."""
    return _field_text(name, raw).replace("\r\n", "").strip()


def _comparable(address: str) -> str:
    """``"app"@x`` and ``app@x`` are one mailbox: quotes and quoted-pairs dropped, case folded."""
    local, at, domain = address.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return f"{local}{at}{domain}".lower()


def field_addresses(name: str, raw: bytes) -> list[str]:
    """Every address in one address field (its addr-specs, as Python's modern parser reads them), or refused.

    A one-line plain ``Name <local@domain>`` is read by a regex; anything
    else is read by the modern parser (RFC 5322 with the obsolete syntax) and
    by the legacy one (``getaddresses``, the reading of older tools), the
    latter on the unfolded value and, for a folded field, also on the value
    with its folds (as compat32 hands it over: a quoted string or a comment
    there ends at the line break). It is refused when the modern reading
    reports a defect (the parser skips what it cannot read: a missing comma
    hides the next address) or the readings find different addresses (an
    encoded word inside an address decodes in one and not in another). So no
    reader finds an originator the sender check did not see.
    """
    text = _field_text(name, raw)
    folded = "\r\n" in text
    value = text.replace("\r\n", "").strip() if folded else text
    fast = None if folded else _FAST_MAILBOX_RE.fullmatch(value)
    if fast is not None:
        return [fast.group(1) or fast.group(2)]
    odd = _C1_OR_SEPARATOR_RE.search(value)
    if odd is not None:
        raise MessageError(f"headers.{name}", f"the control or separator character U+{ord(odd.group()):04X}")
    try:
        header = default_policy.header_factory(name, value)
        modern = [address.addr_spec for address in header.addresses]
        legacy_readings = [getaddresses([reading]) for reading in ((value, text) if folded else (value,))]
    except Exception as exc:  # the parsers fail on some hostile input (3.11: "g:; x" raises AttributeError)
        raise MessageError(f"headers.{name}", f"unreadable address list (the parser failed: {type(exc).__name__})") from None
    if not (isinstance(header, AddressHeader) and isinstance(header, BaseHeader)):  # the registry guarantees it
        raise MessageError(f"headers.{name}", "not an address field")
    # Obsolete-but-readable syntax and RFC 6532 UTF-8 local parts are fine.
    broken = [d for d in header.defects if not isinstance(d, ObsoleteHeaderDefect | NonASCIILocalPartDefect)]
    if broken:
        raise MessageError(f"headers.{name}", f"unreadable address list ({broken[0]})")
    expected = sorted(map(_comparable, modern))
    for reading in legacy_readings:
        legacy = [address for _, address in reading if address]
        if sorted(map(_comparable, legacy)) != expected:
            raise MessageError(
                f"headers.{name}",
                f"ambiguous address list: mail readers disagree on its addresses ({', '.join(modern) or 'none'} or "
                f"{', '.join(legacy) or 'none'}); encoded words (=?...?=) belong in display names only, "
                "and a line may not be folded inside a quoted string, a comment or <...>",
            )
    return modern


def _header_addresses(fields: list[tuple[str, bytes]], wanted: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for name, raw in fields:
        if name.lower() != wanted:
            continue
        for address in field_addresses(name, raw):
            try:
                out.append(normalise_address(address))
            except ValueError as exc:
                raise MessageError(f"headers.{name}", str(exc)) from None
    return out


def _override(address: str, field: str) -> tuple[str, bool]:
    try:
        return normalise_address(address)
    except ValueError as exc:
        raise MessageError(field, str(exc)) from None


def parse_raw_message(body: bytes, *, mail_from: str | None, rcpt_to: list[str] | None) -> OutgoingMessage:
    """Take a client's own RFC 5322 message: derive the envelope, strip Bcc, add Message-ID/Date if absent.

    Line endings become CRLF; every other byte is kept (the client may have
    signed it). The envelope sender is ``mail_from``, else the Sender, else the
    first From address; recipients are ``rcpt_to``, else To, Cc and Bcc.
    ``originators`` holds the addresses of From, Sender, Resent-From and
    Resent-Sender, for the relay's ``senders`` check; a header section no
    reader may read differently is refused (``read_header_section``).
    ``smtputf8`` is also set when the header section itself holds UTF-8 (RFC 6532).
    """
    data = crlf_text(body)
    if not data.strip():
        raise MessageError("body", "the message is empty")
    block, rest = split_header_section(data)
    fields = read_header_section(block)
    names = [name.lower() for name, _ in fields]
    if names.count("from") != 1:
        raise MessageError("headers.From", "a message needs exactly one From header")
    header_from = _header_addresses(fields, "from")
    if not header_from:
        raise MessageError("headers.From", "the From header holds no address")
    originators = [a for kind in ORIGINATOR_FIELDS for a in (header_from if kind == "from" else _header_addresses(fields, kind))]
    if mail_from is not None:
        sender = _override(mail_from, "from")
    else:
        sender = (_header_addresses(fields, "sender") or header_from)[0]
    if rcpt_to is not None:
        recipients = [_override(address, f"to[{i}]") for i, address in enumerate(rcpt_to)]
    else:
        recipients = [a for kind in ("to", "cc", "bcc") for a in _header_addresses(fields, kind)]
    if not recipients:
        raise MessageError("to", "no recipients: no To, Cc or Bcc address in the message and no to parameter")
    kept = [raw for name, raw in fields if name.lower() != "bcc"]
    if "message-id" in names:
        message_id = _field_value("Message-ID", fields[names.index("message-id")][1])
    else:
        domain = header_from[0][0].rpartition("@")[2]
        if not domain.isascii():
            domain = idna.encode(domain, uts46=True).decode("ascii")
        message_id = f"<{os.urandom(16).hex()}@{domain}>"
        kept.append(f"Message-ID: {message_id}\r\n".encode())
    if "date" not in names:
        kept.append(f"Date: {DateCache.now()}\r\n".encode("ascii"))
    everyone = [sender, *recipients, *originators]
    out = b"".join(kept) + b"\r\n" + rest
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return OutgoingMessage(
        sender=sender[0],
        recipients=unique_addresses([address for address, _ in recipients]),
        header_from=[address for address, _ in header_from],
        originators=[address for address, _ in originators],
        data=out,
        message_id=message_id,
        smtputf8=not block.isascii() or any(utf8 for _, utf8 in everyone),
    )
