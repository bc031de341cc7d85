"""Hostile header sections for property tests of the senders check, shared by the SMTP and HTTP doors.

``header_section`` generates what an attacker (or a sloppy client) may send:
random line endings (CRLF, bare LF, bare CR), folding (with and without a
whitespace-only line), random case and white space before the colon,
duplicate fields, obsolete syntax (route addresses, empty list elements,
quoted local parts, nested comments), groups, encoded words in display names
and inside addresses, stray lines and control characters, and a forbidden
From after the empty line. ``originators_python_finds`` is the oracle: every
originator address Python's ``email`` package finds in the bytes, with both
its modern and its legacy reading.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.utils import getaddresses

from hypothesis import strategies as st

from mailgate.relay.senders import SenderMatcher

ORIGINATOR_FIELDS = ("from", "sender", "resent-from", "resent-sender")
SENDERS = ["*@shop.example", "boss@corp.example"]
# Allowed by SENDERS, in several spellings of the same mailboxes.
ALLOWED_ADDRESSES = ["app@shop.example", "b@shop.example", "App@SHOP.example", "boss@corp.example", "BOSS@Corp.Example"]
FORBIDDEN_ADDRESSES = [
    "ceo@bank.example",
    "app@shop.example.evil",
    "x@sub.shop.example",
    "boss2@corp.example",
    "boss@corp.example.evil",
]
NAMES = ["from", "sender", "resent-from", "resent-sender", "subject", "to", "x-from", "reply-to", "resent-to"]
LINE_ENDINGS = st.sampled_from([b"\r\n", b"\n", b"\r"])
STRAY_LINES = [b"garbage", b" cont", b"From ceo@bank.example", b"From:", b":x", b"\t"]
CONTROLS = [b"\x00", b"\x01", b"\x1b", b"\x7f", b"\x0c", b"\x0b"]


def matcher() -> SenderMatcher:
    return SenderMatcher(SENDERS)


def canonical(address: str) -> str:
    """One spelling per mailbox: quotes around a local part dropped, case folded (as ``senders`` compare)."""
    local, at, domain = address.rpartition("@")
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return f"{local}{at}{domain}".lower()


@st.composite
def field_name(draw: st.DrawFn) -> bytes:
    """A field name in random case, sometimes with white space before the colon (obsolete syntax)."""
    name = draw(st.sampled_from(NAMES))
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    return cased.encode() + draw(st.sampled_from([b"", b"", b"", b" ", b"\t"]))


@st.composite
def mailbox(draw: st.DrawFn) -> bytes:
    address = draw(st.sampled_from(ALLOWED_ADDRESSES + FORBIDDEN_ADDRESSES)).encode()
    local, _, domain = address.rpartition(b"@")
    form = draw(
        st.sampled_from(
            [
                "bare", "angle", "named", "quoted-name", "comment", "nested-comment", "encoded-name",
                "route", "quoted-local", "encoded-local", "encoded-domain", "spaced",
            ]
        )
    )  # fmt: skip
    return {
        "bare": address,
        "angle": b"<" + address + b">",
        "named": b"Some One <" + address + b">",
        "quoted-name": b'"x@shop.example, y" <' + address + b">",
        "comment": address + b" (ceo@bank.example)",
        "nested-comment": b"(a (b@shop.example) c) " + address + b" (d)",
        "encoded-name": b"=?utf-8?q?ceo=40bank.example?= <" + address + b">",
        "route": b"<@relay.example,@other.example:" + address + b">",
        "quoted-local": b'"' + local + b'"@' + domain,
        "encoded-local": b"=?utf-8?q?" + local + b"?=@" + domain,
        "encoded-domain": local + b"@=?utf-8?q?" + domain + b"?=",
        "spaced": local + b" @ " + domain,
    }[form]


@st.composite
def field_value(draw: st.DrawFn) -> bytes:
    """An address list: 0 to 3 mailboxes, odd separators (empty elements are obsolete syntax), maybe a group."""
    mailboxes = draw(st.lists(mailbox(), min_size=0, max_size=3))
    separator = draw(st.sampled_from([b", ", b",", b" , ", b", , "]))
    value = separator.join(mailboxes)
    if draw(st.booleans()):
        value = draw(st.sampled_from([b"group: ", b"undisclosed-recipients:", b"=?utf-8?q?a=40b?=: "])) + value + b";"
    return value


@st.composite
def header_section(draw: st.DrawFn) -> bytes:
    """Fields with random line endings and folding; sometimes a stray line, a control character or no end."""
    lines: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        value = draw(field_value())
        fold = draw(st.sampled_from([b"", b"", b"\t", b" ", b" \r\n "]))
        if fold and b"," in value:
            value = value.replace(b",", b"," + draw(LINE_ENDINGS) + fold, 1)
        lines.append(draw(field_name()) + b":" + draw(st.sampled_from([b" ", b"", b"  "])) + value)
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(STRAY_LINES)))
    if draw(st.integers(0, 8)) == 0:
        index = draw(st.integers(0, len(lines) - 1))
        lines[index] += draw(st.sampled_from(CONTROLS))
    text = b"".join(line + draw(LINE_ENDINGS) for line in lines)
    if draw(st.booleans()):
        text += draw(LINE_ENDINGS) + b"From: ceo@bank.example" + draw(LINE_ENDINGS) + b"body"
    return text


def originators_python_finds(data: bytes) -> list[str]:
    """Every originator address Python's parser finds, under the modern policy and under compat32."""
    found: list[str] = []
    modern = email.message_from_bytes(data, policy=email.policy.default)
    legacy = email.message_from_bytes(data, policy=email.policy.compat32)
    for name in ORIGINATOR_FIELDS:
        found += _modern_addresses(modern, name)
        found += [address for _, address in getaddresses([str(v) for v in legacy.get_all(name) or []]) if address]
    return found


def _modern_addresses(message: email.message.EmailMessage, name: str) -> list[str]:
    """The modern policy's addresses of ``name``; none where CPython's header registry itself crashes (it
    builds an Address from every item of ``all_mailboxes``, and some malformed groups put a Group there:
    AttributeError 'local_part'). compat32's reading of the same fields still counts."""
    try:
        headers = message.get_all(name) or []
    except AttributeError:
        return []
    return [mailbox.addr_spec for header in headers for mailbox in header.addresses]
