"""The relay core's message: an envelope and the bytes for DATA, whatever door it came through.

Addresses are in wire form: an address whose local part is ASCII gets its
IDN domain converted to punycode (IDNA 2008, UTS 46), so it needs no
SMTPUTF8; a non-ASCII local part keeps the Unicode domain and marks the
message as needing SMTPUTF8. Quoted local parts are refused: rare, and a
classic source of parser disagreements. Both doors and the JSON composer
(``gateway/compose.py``) validate addresses here, so they agree on them.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import idna

ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"


_LOCAL_RE = re.compile(rf"[{ATEXT}\u0080-\U0010ffff]+(?:\.[{ATEXT}\u0080-\U0010ffff]+)*\Z")


LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


_HEADER_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")


_BAD_LOCAL_CATEGORIES = frozenset({"Cc", "Cs", "Zs", "Zl", "Zp"})


class MessageError(Exception):
    """A request that cannot become a message; ``field`` names where (``to[1]``, ``headers.X-Foo``)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(slots=True)
class OutgoingMessage:
    """What the relay core sends: the envelope plus the bytes for DATA (CRLF line endings)."""

    sender: str
    recipients: list[str]
    header_from: list[str]
    originators: list[str]  # every address in From, Sender, Resent-From and Resent-Sender: what ``senders`` check
    data: bytes
    message_id: str
    smtputf8: bool


def check_header_text(value: str) -> str:
    """Refuse what could end a header line or confuse a parser; lone surrogates cannot be encoded."""
    if "\r" in value or "\n" in value:
        raise ValueError("CR and LF are not allowed here (header injection)")
    if _HEADER_CTL_RE.search(value):
        raise ValueError("control characters (TAB included) are not allowed here")
    return check_unicode(value)


def check_unicode(value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not valid Unicode text (lone surrogate)") from None
    return value


def _normalise_domain(domain: str, keep_unicode: bool) -> str:
    if domain.startswith("["):
        literal = domain[1:-1] if domain.endswith("]") else ""
        try:
            if literal[:5].lower() == "ipv6:":
                if "%" in literal:  # a zone id (fe80::1%eth0) names an interface of one host: meaningless in mail
                    raise ValueError
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise ValueError("invalid address literal in the domain") from None
        return domain
    if domain.isascii():
        if len(domain) > 253 or not all(LABEL_RE.match(label) for label in domain.split(".")):
            raise ValueError("invalid domain")
        return domain
    try:
        alabel = idna.encode(domain, uts46=True).decode("ascii")
        return idna.decode(alabel) if keep_unicode else alabel
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"invalid international domain name ({exc})") from None


@lru_cache(maxsize=4096)
def normalise_address(addr: str) -> tuple[str, bool]:
    """Validate a bare ``local@domain``; return its wire form and whether it needs SMTPUTF8.

    Cached because the same senders and recipients come back request after
    request; only valid addresses are cached (errors are raised, not stored).
    """
    check_header_text(addr)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("not an e-mail address (local@domain expected)")
    if local.startswith('"'):
        raise ValueError("quoted local parts are not supported")
    if not _LOCAL_RE.match(local):
        raise ValueError("invalid local part")
    utf8 = not local.isascii()
    if utf8 and any(unicodedata.category(c) in _BAD_LOCAL_CATEGORIES for c in local):
        raise ValueError("invalid character in the local part")
    if len(local.encode("utf-8")) > 64:
        raise ValueError("local part longer than 64 octets")
    wire = f"{local}@{_normalise_domain(domain, keep_unicode=utf8)}"
    if len(wire.encode("utf-8")) > 254:
        raise ValueError("address longer than 254 octets")
    return wire, utf8


def unique_addresses(addresses: list[str]) -> list[str]:
    """Drop repeats (domains compare case-insensitively), keeping the first occurrence's order."""
    seen: set[str] = set()
    out = []
    for address in addresses:
        local, _, domain = address.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key not in seen:
            seen.add(key)
            out.append(address)
    return out
