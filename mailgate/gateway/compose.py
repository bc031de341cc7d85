"""Compose a message from the send API's JSON fields: the envelope and the bytes for DATA.

A raw RFC 5322 body is not composed but read (``relay/rfc822.py``); both give
the relay core's ``OutgoingMessage`` (``relay/envelope.py``).

Why bytes are formatted by hand: building each message through the standard
library's ``EmailMessage`` object model and its generator held a gateway
prototype to a quarter of raw SMTP throughput; writing the few headers and
MIME parts directly costs a small fraction of that (``bench/message.py``).
Correctness is proven the other way round: the tests parse every shape this
module produces back with the standard library parser (``policy.default``).

Choices a reader should know:

- An address is a string, ``"ops@example.com"`` or ``"Ops <ops@example.com>"``,
  or an object ``{"name": ..., "address": ...}``. Quoted local parts
  (``"a b"@example.com``) are refused: rare, and a classic source of parser
  disagreements.
- An address whose local part is ASCII gets its IDN domain converted to
  punycode (IDNA 2008, UTS 46), so it needs no SMTPUTF8. A non-ASCII local
  part keeps the Unicode domain and marks the message as needing SMTPUTF8.
  Envelope addresses (``sender``, ``recipients``, ``header_from``) are in that
  same wire form.
- Non-ASCII subjects, display names and extra header values are always RFC
  2047 encoded words (base64, whole characters per word), even in SMTPUTF8
  messages: every receiver decodes them, so one code path serves both cases.
- Header values (subject, names, extra headers, filenames) refuse CR, LF and
  other control characters (TAB too): no header injection, no ambiguity.
- The originator fields (From, Sender, Resent-From, Resent-Sender) are what
  an account's ``senders`` restrict; ``OutgoingMessage.originators`` lists
  every address in them. The JSON body sets From only (Sender and every
  Resent-* field are refused in ``headers``); a raw message and the SMTP
  ingress go through ``read_header_section``, which reads a client's header
  section the way the upstream will, or refuses it (``relay/rfc822.py``).
- Text bodies get CRLF line endings and a final line break. Transfer encoding:
  7bit when ASCII with lines of at most 78 characters, quoted-printable when
  mostly ASCII, base64 otherwise. Attachments are always base64 (76-character
  lines), so they round-trip byte for byte. Filenames that are not short plain
  ASCII use RFC 2231 (``filename*=utf-8''...``, continued when long).
- Attachments with a ``contentId`` are inline parts in a ``multipart/related``
  next to the HTML (``alternative(text, related(html, inline...))``); without
  an HTML body they are ordinary attachments that keep their Content-ID.
- The models' JSON schema (so ``docs/openapi.json``) states these rules as
  JSON Schema: patterns built here from the same pieces as the checks (an
  address, a header name, a Date, an attachment's fields), ``anyOf`` for the
  rules across fields. Where the two could differ the server was made to
  refuse what the schema refuses (an address is never trimmed, a Date is an
  RFC 5322 date-time, base64 may hold blanks and line breaks only), and
  ``tests/gateway/test_openapi.py`` proves them equal.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..relay.envelope import (
    ATEXT,
    LABEL_RE,
    OutgoingMessage,
    check_header_text,
    check_unicode,
    normalise_address,
    unique_addresses,
)
from ..relay.rfc822 import ORIGINATOR_FIELDS, DateCache
from ..validation import field_error, field_problems

__all__ = ["Attachment", "Mailbox", "SendRequest", "compose_message", "describe_validation_error"]


MAX_LINE = 78  # RFC 5322 "SHOULD" limit for header and 7bit body lines (the hard limit is 998)


MAX_NAME = 256  # display names; also bounds the memory of the formatted-mailbox cache


# Headers the request sets through its own fields, or the gateway sets itself; any Content-* too.
RESERVED_HEADERS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "reply-to", "subject", "mime-version", "return-path", "received"}
)


_ATOM_RE = re.compile(rf"[{ATEXT}]+\Z")


_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}\Z")


_7BIT_TEXT = bytes(range(0x20, 0x7F)) + b"\t\r\n"  # what a 7bit text body may hold


_QUOTABLE_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*\Z")  # printable ASCII without " and \


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"


_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'


_MEDIA_TYPE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*\Z")


_CONTENT_ID_RE = re.compile(rf"[{ATEXT}.@]{{1,250}}\Z")


_MSGID_RE = re.compile(rf"<[{ATEXT}.]+@[{ATEXT}.\[\]:]+>\Z")


_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")  # line breaks and blanks some encoders put in; nothing else


def _anycase(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


_RESERVED_PREFIXES = ("content-", "resent-")


NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # header text: what check_header_text allows


HEADER_NAME_PATTERN = (
    "^(?!(?:" + "|".join(map(_anycase, sorted(RESERVED_HEADERS))) + ")$|" + "|".join(map(_anycase, _RESERVED_PREFIXES))
    + r")[\x21-\x39\x3b-\x7e]{1,76}$"
)  # fmt: skip


MESSAGE_ID_NAME_PATTERN = f"^{_anycase('message-id')}$"


MESSAGE_ID_PATTERN = f"^{_MSGID_RE.pattern[:-2]}$"


DATE_NAME_PATTERN = f"^{_anycase('date')}$"


def _date_pattern() -> str:
    """RFC 5322 date-time, calendar-checked: 31 only in long months, 29 Feb only in leap years (4-digit years)."""
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    year = "[1-9][0-9]{3}"
    leap_year = "(?:[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26])00)"
    day_month_year = "|".join([
        f"(?:0?[1-9]|1[0-9]|2[0-8]) (?:{'|'.join(months)}) {year}",
        f"(?:29|30) (?:{'|'.join(m for m in months if m != 'Feb')}) {year}",
        f"31 (?:Jan|Mar|May|Jul|Aug|Oct|Dec) {year}",
        f"29 Feb {leap_year}",
    ])  # fmt: skip
    time_of_day = "(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9])?"
    zone = "(?:[+-](?:[01][0-9]|2[0-3])[0-5][0-9]|UT|GMT)"
    comment = r"(?: \([\x20-\x27\x2a-\x5b\x5d-\x7e]*\))?"  # a trailing (CEST), as many mailers write
    return f"^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(?:{day_month_year}) {time_of_day} {zone}{comment}$"


DATE_PATTERN = _date_pattern()


_DATE_RE = re.compile(DATE_PATTERN)


def _ipv6_pattern(ipv4: str) -> str:
    """Every IPv6 text form ``ipaddress`` reads (zone ids aside), spelled out by the groups before ``::``."""
    group = "[0-9A-Fa-f]{1,4}"
    forms = [f"(?:{group}:){{7}}{group}", f"(?:{group}:){{6}}{ipv4}"]
    for before in range(8):
        head = f"(?:{group}:){{{before}}}:" if before else "::"
        after = 7 - before  # explicit groups after "::", which stands for at least one
        if after:
            forms.append(f"{head}(?:{group}(?::{group}){{0,{after - 1}}})?" if after > 1 else f"{head}(?:{group})?")
        else:
            forms.append(head)
        if before <= 5:  # an embedded IPv4 address counts as two groups
            forms.append(f"{head}(?:{group}:){{0,{5 - before}}}{ipv4}" if before < 5 else head + ipv4)
    return "|".join(forms)


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"


_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"


_LABEL = LABEL_RE.pattern[:-2]


_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[(?:{_IPV4}|{_anycase('ipv6')}:(?:{_ipv6_pattern(_IPV4)}))\])"


# An ASCII address as normalise_address reads it: at most 64 characters before the @, 254 in all.
_ADDR = rf"(?![^@]{{65}})(?![^>]{{255}})[{ATEXT}]+(?:\.[{ATEXT}]+)*@{_DOMAIN}"


NAME_ADDRESS_PATTERN = rf"^[^\x00-\x1f\x7f]{{0,{MAX_NAME}}}<{_ADDR}>$"


# A filename str.strip() leaves something of: one character that is neither a control nor white space.
_KEPT_BY_STRIP = r"[^\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"  # str.isspace() is False


FILENAME_PATTERN = rf"^[^\x00-\x1f\x7f]*{_KEPT_BY_STRIP}[^\x00-\x1f\x7f]*$"


MEDIA_TYPE_PATTERN = f"^(?!{_anycase('multipart')}/|{_anycase('message')}/){_MEDIA_TYPE_RE.pattern[:-2]}$"


CONTENT_ID_PATTERN = f"^(?:<{_CONTENT_ID_RE.pattern[:-2]}>|{_CONTENT_ID_RE.pattern[:-2]})$"


# A message/rfc822 body parse_raw_message takes, in its simplest shape: ASCII fields of one line each, exactly one
# From, at least one To/Cc/Bcc, a blank line and the body; lines of at most 998 characters (RFC 5322), the most
# an upstream accepts. Addresses are plain (no = or ?, one per field), as every reader reads them alike.
_RAW_ATOM = r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+"


_RAW_ADDR = rf"(?![^@]{{65}})(?![^>\r\n]{{255}}){_RAW_ATOM}(?:\.{_RAW_ATOM})*@{_LABEL}(?:\.{_LABEL})*"


_RAW_MAILBOX = rf"(?:{_RAW_ADDR}|[A-Za-z0-9 '_+-]{{0,64}}<{_RAW_ADDR}>)"


_RAW_EOL = r"(?:\r\n|\n)"


_RAW_FIELD = (
    "(?!(?:" + "|".join(map(_anycase, (*ORIGINATOR_FIELDS, "to", "cc", "bcc"))) + "):)"
    + rf"[\x21-\x39\x3b-\x7e]{{1,76}}:[\t\x20-\x7e]{{0,900}}{_RAW_EOL}"
)  # fmt: skip


_RAW_LINE = r"[\t\x20-\x7e]{0,998}"


RAW_MESSAGE_PATTERN = (
    f"^(?:{_RAW_FIELD})*From: {_RAW_MAILBOX}{_RAW_EOL}(?:{_RAW_FIELD})*(?:(?:To|Cc|Bcc): {_RAW_MAILBOX}{_RAW_EOL})+"
    f"(?:{_RAW_FIELD})*{_RAW_EOL}(?:{_RAW_LINE}{_RAW_EOL})*{_RAW_LINE}$"
)


_B64, _B64_WSP = "[A-Za-z0-9+/]", r"[\t\n\r ]*"


# Standard alphabet, padded; blanks and line breaks anywhere (they are dropped before decoding).
BASE64_PATTERN = (
    f"^{_B64_WSP}(?:(?:{_B64}{_B64_WSP}){{4}})*"
    f"(?:(?:{_B64}{_B64_WSP}){{2}}={_B64_WSP}={_B64_WSP}|(?:{_B64}{_B64_WSP}){{3}}={_B64_WSP})?$"
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A validated address: optional display name, wire form, and whether it needs SMTPUTF8."""

    name: str | None
    address: str
    utf8: bool


def _split_mailbox(value: str) -> tuple[str | None, str]:
    """``Name <addr>`` / ``"Name" <addr>`` / ``addr`` -> (name, addr).

    Exactly what the schema's two string forms say: nothing around the
    address or inside the angle brackets is trimmed, only the display name
    (at most ``MAX_NAME`` characters as written) loses its outer spaces.
    """
    if not value.endswith(">"):
        return None, value
    lt = value.rfind("<")
    if lt < 0:
        raise ValueError("unbalanced angle brackets")
    if lt > MAX_NAME:
        raise ValueError(f"display name longer than {MAX_NAME} characters")
    name = value[:lt].strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name or None, value[lt + 1 : -1]


def _to_mailbox(value: Any) -> Mailbox:
    if isinstance(value, Mailbox):
        return value
    if isinstance(value, str):
        check_header_text(value)
        name, addr = _split_mailbox(value)
    elif isinstance(value, dict):
        if set(value) - {"name", "address"}:
            raise ValueError("an address object has only the keys name and address")
        name, address = value.get("name"), value.get("address")
        if not isinstance(address, str) or not (name is None or isinstance(name, str)):
            raise ValueError("address (and name, when given) must be strings")
        check_header_text(name or "")
        addr = address
    else:
        raise ValueError('an address is a string ("a@example.com", "Name <a@example.com>") or {name, address}')
    if name is not None and len(name) > MAX_NAME:
        raise ValueError(f"display name longer than {MAX_NAME} characters")
    wire, utf8 = normalise_address(addr)
    return Mailbox(name or None, wire, utf8)


def _decode_base64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("content must be a base64 string")
    try:
        return binascii.a2b_base64(value.translate(_BASE64_WHITESPACE), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("content is not valid base64 (standard alphabet, padded)") from None


def _check_header_name(name: str) -> str:
    if not _FIELD_NAME_RE.match(name):
        raise ValueError("not an RFC 5322 field name (printable ASCII without colon or space, at most 76)")
    lowered = name.lower()
    # Resent-* fields say who re-sent the message (Resent-From/Sender are originators ``senders`` would have to
    # check, Resent-Bcc would leak recipients): a message built from JSON is new, never re-sent.
    if lowered in RESERVED_HEADERS or lowered.startswith(_RESERVED_PREFIXES):
        raise ValueError("reserved header: set it through the request's own fields, or let the gateway set it")
    return name


def _check_filename(name: str) -> str:
    """Whitespace at either end is dropped: receivers strip it anyway (the stdlib's get_filename does)."""
    check_header_text(name)
    if not name.strip():
        raise ValueError("filename must not be empty")
    return name.strip()


def _check_media_type(value: str) -> str:
    if not _MEDIA_TYPE_RE.match(value):
        raise ValueError("not a media type (type/subtype, optional ; name=value parameters)")
    if value.split("/", 1)[0].lower() in ("multipart", "message"):
        raise ValueError("multipart/* and message/* are built by the gateway; attach files as application/octet-stream")
    return value


def _check_content_id(value: str) -> str:
    bare = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if not _CONTENT_ID_RE.match(bare):
        raise ValueError("a content id is ASCII atext, dots and @ (the cid: URL the HTML refers to)")
    return bare


_HEADER_TEXT_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NO_CONTROL_PATTERN}


# idn-email is RFC 6531's Mailbox; the pattern rules out what the gateway never takes in a bare address (and some
# format checkers let through): white space, controls, quotes, comments, angle brackets and list separators.
BARE_ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "idn-email",
    "maxLength": 254,
    "pattern": r'^[^\x00-\x20\x7f"(),;<>\\]+$',
}


_ADDRESS_SCHEMA: dict[str, Any] = {
    "description": 'An address: "a@example.com", "Name <a@example.com>" or {"name", "address"}. The address is '
    "an RFC 6531 addr-spec without quoted local parts or comments, at most 64 octets before the @ and 254 in all. "
    "International addresses (IDN domains, sent as punycode; UTF-8 local parts, sent with SMTPUTF8) are accepted in "
    "all three forms, though the pattern of the Name <address> form spells out ASCII addresses only (IDNA is no "
    "regular language). Nothing around the address is trimmed.",
    "anyOf": [
        {**BARE_ADDRESS_SCHEMA, "examples": ["ops@example.com"]},
        {"type": "string", "pattern": NAME_ADDRESS_PATTERN, "examples": ["Ops Team <ops@example.com>"]},
        {
            "type": "object",
            "properties": {
                "name": {"type": ["string", "null"], "maxLength": MAX_NAME, "pattern": NO_CONTROL_PATTERN},
                "address": BARE_ADDRESS_SCHEMA,
            },
            "required": ["address"],
            "additionalProperties": False,
        },
    ],
}


_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": HEADER_NAME_PATTERN},
    "patternProperties": {
        MESSAGE_ID_NAME_PATTERN: {"type": "string", "pattern": MESSAGE_ID_PATTERN},
        DATE_NAME_PATTERN: {"type": "string", "pattern": DATE_PATTERN},
    },
    "additionalProperties": _HEADER_TEXT_SCHEMA,
}


# The rules across fields, as the model validator below applies them.
_SENDABLE_SCHEMA: dict[str, Any] = {
    "allOf": [
        {"anyOf": [{"required": [f], "properties": {f: {"minItems": 1}}} for f in ("to", "cc", "bcc")]},
        {
            "anyOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["html"], "properties": {"html": {"type": "string"}}},
                {"required": ["attachments"], "properties": {"attachments": {"minItems": 1}}},
            ]
        },
    ]
}


Address = Annotated[
    Mailbox,
    PlainValidator(_to_mailbox),
    PlainSerializer(lambda m: {"name": m.name, "address": m.address}),
    WithJsonSchema(_ADDRESS_SCHEMA),
]


HeaderText = Annotated[str, AfterValidator(check_header_text), WithJsonSchema(_HEADER_TEXT_SCHEMA)]


BodyText = Annotated[str, AfterValidator(check_unicode)]


HeaderName = Annotated[str, AfterValidator(_check_header_name)]


Base64Content = Annotated[
    bytes,
    PlainValidator(_decode_base64),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii")),
    WithJsonSchema(
        {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN, "description": "The file's bytes, base64."}
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Attachment(_Model):
    """A file: its bytes travel base64 in JSON and base64 in the message, so they arrive unchanged."""

    filename: Annotated[
        str,
        Field(max_length=255, description="Spaces at either end are dropped.", json_schema_extra={"pattern": FILENAME_PATTERN}),
        AfterValidator(_check_filename),
    ]
    content_type: Annotated[
        str,
        Field(
            max_length=255,
            description="A media type with optional parameters; multipart/* and message/* are the gateway's to build.",
            json_schema_extra={"pattern": MEDIA_TYPE_PATTERN},
        ),
        AfterValidator(_check_media_type),
    ] = "application/octet-stream"
    content: Base64Content
    content_id: Annotated[
        str | None,
        AfterValidator(lambda v: v if v is None else _check_content_id(v)),
        WithJsonSchema({"anyOf": [{"type": "string", "pattern": CONTENT_ID_PATTERN}, {"type": "null"}]}),
    ] = Field(default=None, description="Makes the part inline; the HTML refers to it as cid:<contentId>.")


class SendRequest(_Model):
    """The JSON body of ``POST /v1/accounts/{namespace}/{name}/messages``."""

    model_config = ConfigDict(json_schema_extra=_SENDABLE_SCHEMA)

    from_: Address = Field(alias="from", description="The From header and the envelope sender (MAIL FROM).")
    to: list[Address] = Field(default_factory=list)
    cc: list[Address] = Field(default_factory=list)
    bcc: list[Address] = Field(default_factory=list, description="Envelope recipients only; never in a header.")
    reply_to: list[Address] = Field(default_factory=list)
    subject: HeaderText | None = None
    text: BodyText | None = None
    html: BodyText | None = None
    headers: Annotated[dict[HeaderName, HeaderText], WithJsonSchema(_HEADERS_SCHEMA)] = Field(
        default_factory=dict,
        description="Extra header fields. From/To/Cc/Bcc/Reply-To/Subject/Sender/MIME-Version/Return-Path/Received/"
        "Content-*/Resent-* are refused; Message-ID (<unique@domain>) and Date (RFC 5322) are generated unless "
        "given here. Names are case-insensitive: the same name twice (X-Tag and x-tag) is refused.",
    )
    attachments: list[Attachment] = Field(default_factory=list)

    @field_validator("headers")
    @classmethod
    def _headers_are_consistent(cls, headers: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in seen:
                raise field_error(name, "duplicate header (names are case-insensitive)")
            seen.add(lowered)
            if lowered == "message-id" and not _MSGID_RE.match(value):
                raise field_error(name, "a Message-ID looks like <unique@domain>")
            if lowered == "date" and not _DATE_RE.fullmatch(value):
                raise field_error(name, "not an RFC 5322 date (Tue, 1 Jul 2025 10:00:00 +0000)")
        return headers

    @model_validator(mode="after")
    def _is_sendable(self) -> SendRequest:
        if not (self.to or self.cc or self.bcc):
            raise field_error("to", "at least one recipient in to, cc or bcc is required")
        if self.text is None and self.html is None and not self.attachments:
            raise field_error("text", "a message needs text, html or attachments")
        return self


def describe_validation_error(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{field, message}`` per problem, for the 400 problem+json (``body`` means the whole body)."""
    return [{"field": problem.field, "message": problem.message} for problem in field_problems(exc, whole="body")]


def _fold(name: str, tokens: list[str]) -> str:
    """``name: tok tok ...`` folded at the spaces between tokens so lines stay within 78 when tokens allow."""
    line = name + ":"
    if not tokens:
        return line
    if len(line) + len(tokens) + sum(map(len, tokens)) <= MAX_LINE:
        return line + " " + " ".join(tokens)
    lines = []
    line += " " + tokens[0]
    for token in tokens[1:]:
        if len(line) + 1 + len(token) > MAX_LINE:
            lines.append(line)
            line = " " + token
        else:
            line += " " + token
    lines.append(line)
    return "\r\n".join(lines)


def _encoded_words(value: str, first: int = 64) -> list[str]:
    """RFC 2047 base64 words of whole characters: 64 characters each, the first at most ``first`` long."""
    raw = value.encode("utf-8")
    words = []
    start, end = 0, len(raw)
    budget = max(first - 12, 4) // 4 * 3  # octets that encode into the room left after "=?utf-8?b?" and "?="
    while start < end:
        stop = min(start + budget, end)
        while stop < end and raw[stop] & 0xC0 == 0x80:  # back off to a character boundary
            stop -= 1
        if stop == start:  # the room is smaller than this one character: take it whole
            stop += 1
            while stop < end and raw[stop] & 0xC0 == 0x80:
                stop += 1
        words.append("=?utf-8?b?" + base64.b64encode(raw[start:stop]).decode("ascii") + "?=")
        start, budget = stop, 39
    return words


def _unstructured(name: str, value: str) -> list[str]:
    """Tokens for an unstructured value; plain ASCII stays readable, anything else is encoded."""
    if value == "":
        return []
    if value.isascii() and value.isprintable() and "=?" not in value and value[0] != " " and value[-1] != " ":
        if len(name) + 2 + len(value) <= MAX_LINE:
            return [value]
        words = value.split(" ")
        tokens = [words[0]]
        pending = ""
        for word in words[1:]:
            if word:
                tokens.append(pending + word)
                pending = ""
            else:
                pending += " "  # runs of spaces stay inside the next token, so folding keeps them exact
        if max(map(len, tokens)) <= 900:
            return tokens
    return _encoded_words(value, first=max(MAX_LINE - len(name) - 2, 16))


def _phrase(name: str) -> list[str]:
    """A display name: atoms when possible, a quoted string when short ASCII, encoded words otherwise."""
    if name.isascii() and "=?" not in name:
        words = name.split(" ")
        if all(_ATOM_RE.match(w) and len(w) <= 70 for w in words):
            return words
        if len(name) <= 70 and name.isprintable():
            return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(name)


@lru_cache(maxsize=4096)
def _mailbox_tokens(mailbox: Mailbox) -> tuple[str, ...]:
    """Cached: the same senders recur on every request."""
    if mailbox.name is None:
        return (mailbox.address,)
    return (*_phrase(mailbox.name), f"<{mailbox.address}>")


def _address_field(name: str, mailboxes: list[Mailbox]) -> str:
    if len(mailboxes) == 1:
        return _fold(name, list(_mailbox_tokens(mailboxes[0])))
    tokens: list[str] = []
    for mailbox in mailboxes:
        tokens.extend(_mailbox_tokens(mailbox))
        tokens[-1] += ","
    tokens[-1] = tokens[-1][:-1]
    return _fold(name, tokens)


def _parameter(attribute: str, value: str) -> list[str]:
    """``attr="value"`` when short plain ASCII, else RFC 2231 ``attr*=utf-8''..`` (continued past 60 chars)."""
    if len(value) <= 60 and _QUOTABLE_RE.match(value):
        return [f'{attribute}="{value}"']
    encoded = quote(value, safe="")
    if len(encoded) <= 60:
        return [f"{attribute}*=utf-8''{encoded}"]
    # RFC 2231 continuations; the stdlib decodes each section alone, so a section holds whole characters.
    size = MAX_LINE - 22 - len(attribute)  # ' attr*NN*=' + "utf-8''" + ';' fit on the folded line
    pieces = [""]
    for char in value:
        quoted = quote(char, safe="")
        if len(pieces[-1]) + len(quoted) > size:
            pieces.append("")
        pieces[-1] += quoted
    charset = "utf-8''"
    tokens = [f"{attribute}*{i}*={'' if i else charset}{piece};" for i, piece in enumerate(pieces)]
    tokens[-1] = tokens[-1][:-1]
    return tokens


_Part = tuple[list[str], bytes]  # header lines (ASCII, no CRLF at the end) and the body


def _base64_lines(raw: bytes) -> bytes:
    encoded = base64.b64encode(raw)
    if len(encoded) <= 76:
        return encoded
    return b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)])


def _text_part(subtype: str, text: str, plain_bodies: list[bytes]) -> _Part:
    """A text/* leaf; 7bit bodies are remembered so a boundary can be proven absent from them."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    crlf = text.replace("\n", "\r\n")
    content_type = f"Content-Type: text/{subtype}; charset=utf-8"
    if text.isascii():
        raw = crlf.encode("ascii")
        short_lines = len(text) <= MAX_LINE or max(map(len, text.split("\n"))) <= MAX_LINE
        if short_lines and not raw.translate(None, _7BIT_TEXT):  # nothing left once the allowed bytes are deleted
            plain_bodies.append(raw)
            return [content_type, "Content-Transfer-Encoding: 7bit"], raw
    else:
        raw = crlf.encode("utf-8")
    if (len(raw) - len(crlf)) * 6 < len(raw):  # few multi-byte characters: quoted-printable stays smaller
        return [content_type, "Content-Transfer-Encoding: quoted-printable"], binascii.b2a_qp(raw, istext=True)
    return [content_type, "Content-Transfer-Encoding: base64"], _base64_lines(raw)


def _attachment_part(attachment: Attachment, inline: bool) -> _Part:
    headers = [
        _fold("Content-Type", [attachment.content_type + ";", *_parameter("name", attachment.filename)]),
        _fold("Content-Disposition", ["inline;" if inline else "attachment;", *_parameter("filename", attachment.filename)]),
        "Content-Transfer-Encoding: base64",
    ]
    if attachment.content_id is not None:
        headers.append(f"Content-ID: <{attachment.content_id}>")
    return headers, _base64_lines(attachment.content)


def _entity(part: _Part) -> bytes:
    return "\r\n".join(part[0]).encode("ascii") + b"\r\n\r\n" + part[1]


def _multipart(subtype: str, parts: list[_Part], plain_bodies: list[bytes], param: str | None = None) -> _Part:
    boundary = "=_" + os.urandom(16).hex()
    # QP and base64 can never contain "=_"; only 7bit text could, so only it is checked.
    while any(boundary.encode("ascii") in body for body in plain_bodies):
        boundary = "=_" + os.urandom(16).hex()
    delimiter = b"--" + boundary.encode("ascii")
    body = delimiter + b"\r\n" + (b"\r\n" + delimiter + b"\r\n").join(map(_entity, parts)) + b"\r\n" + delimiter + b"--"
    tokens = [f"multipart/{subtype};", f'boundary="{boundary}"']
    if param is not None:
        tokens[-1] += ";"
        tokens.append(param)
    return [_fold("Content-Type", tokens)], body


def _body(req: SendRequest) -> _Part:
    plain: list[bytes] = []
    html_part = None if req.html is None else _text_part("html", req.html, plain)
    inline = [a for a in req.attachments if a.content_id is not None] if html_part is not None else []
    files = [a for a in req.attachments if a.content_id is None] if inline else list(req.attachments)
    if html_part is not None and inline:
        parts = [html_part, *(_attachment_part(a, inline=True) for a in inline)]
        html_part = _multipart("related", parts, plain, 'type="text/html"')
    text_part = None if req.text is None else _text_part("plain", req.text, plain)
    if text_part is not None and html_part is not None:
        node: _Part | None = _multipart("alternative", [text_part, html_part], plain)
    else:
        node = text_part or html_part
    if not files:
        assert node is not None  # SendRequest guarantees text, html or attachments
        return node
    leaves = [node] if node is not None else []
    return _multipart("mixed", [*leaves, *(_attachment_part(a, inline=False) for a in files)], plain)


def compose_message(req: SendRequest, *, hostname: str) -> OutgoingMessage:
    """Format the message bytes directly; Message-ID is ``<128 random bits in hex@hostname>`` unless given."""
    lines = [_address_field("From", [req.from_])]
    if req.to:
        lines.append(_address_field("To", req.to))
    if req.cc:
        lines.append(_address_field("Cc", req.cc))
    if not req.to and not req.cc:
        lines.append("To: undisclosed-recipients:;")
    if req.reply_to:
        lines.append(_address_field("Reply-To", req.reply_to))
    if req.subject is not None:
        lines.append(_fold("Subject", _unstructured("Subject", req.subject)))
    given = {name.lower(): value for name, value in req.headers.items()} if req.headers else {}
    if "date" not in given:
        lines.append("Date: " + DateCache.now())
    message_id = given.get("message-id") or f"<{os.urandom(16).hex()}@{hostname}>"
    if "message-id" not in given:
        lines.append("Message-ID: " + message_id)
    lines.append("MIME-Version: 1.0")
    if req.headers:
        lines.extend(_fold(name, _unstructured(name, value)) for name, value in req.headers.items())
    part_headers, body = _body(req)
    lines.extend(part_headers)
    lines.append("\r\n")
    data = "\r\n".join(lines).encode("utf-8") + body
    if not body.endswith(b"\r\n"):
        data += b"\r\n"
    recipients = [m.address for m in (*req.to, *req.cc, *req.bcc)]
    return OutgoingMessage(
        sender=req.from_.address,
        recipients=recipients if len(recipients) == 1 else unique_addresses(recipients),
        header_from=[req.from_.address],
        originators=[req.from_.address],
        data=data,
        message_id=message_id,
        smtputf8=any(m.utf8 for m in (req.from_, *req.to, *req.cc, *req.bcc, *req.reply_to)),
    )
