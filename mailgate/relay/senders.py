"""Sender patterns: which originator addresses an account may send as, and which account a sender routes to.

Patterns come from ``spec.senders`` (validated by ``spec.SENDER_PATTERN``):

- ``local@domain``: exactly that address;
- ``*@domain``: any address at that domain (not its subdomains);
- ``*@*.domain``: any address at any subdomain of that domain (not the domain itself).

When several patterns match, the more specific one wins: exact beats domain,
domain beats subdomain wildcard, and between subdomain wildcards the longer
suffix wins. The HTTP API only asks "does this account allow this sender";
a later SMTP front door asks "which account serves this sender", and both
answers come from the same ranking here.

Addresses compare case-insensitively (local parts too: providers treat them
so, and a case trick must not slip past a sender check), quoted local parts
compare unquoted (``"app"@x`` is ``app@x``), and international domains
compare in their ASCII (punycode) form, whichever form the pattern or the
address uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

import idna

_QUOTED_PAIR = re.compile(r"\\(.)")


class Specificity(IntEnum):
    """How closely a pattern matched; higher wins."""

    SUBDOMAIN = 1
    DOMAIN = 2
    EXACT = 3


def _ascii_domain(domain: str) -> str:
    domain = domain.lower().rstrip(".")
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return domain  # cannot match an ASCII pattern; compared as is


def _canonical(address: str) -> tuple[str, str] | None:
    """(local part, ASCII domain), case folded; ``"app"@x`` is ``app@x`` (RFC 5321 4.1.2: the same mailbox).

    A quoted local part is unquoted, so that header readers that keep the
    quotes and readers that drop them get the same answer from a pattern.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return local.lower(), _ascii_domain(domain)


@dataclass(frozen=True, slots=True)
class SenderPattern:
    """One parsed pattern; ``text`` is kept as written, for status and error messages."""

    text: str
    local: str | None  # None: any local part
    domain: str  # ASCII, lower case; for SUBDOMAIN the suffix without "*."
    kind: Specificity

    @classmethod
    def parse(cls, text: str) -> SenderPattern:
        local, _, domain = text.rpartition("@")
        if domain.startswith("*."):
            return cls(text, None, _ascii_domain(domain[2:]), Specificity.SUBDOMAIN)
        if local == "*":
            return cls(text, None, _ascii_domain(domain), Specificity.DOMAIN)
        return cls(text, local.lower(), _ascii_domain(domain), Specificity.EXACT)

    @property
    def meaning(self) -> tuple[str | None, str, Specificity]:
        """What the pattern matches, whatever its spelling (``*@X.example`` means ``*@x.example``)."""
        return self.local, self.domain, self.kind

    def rank(self, local: str, domain: str) -> tuple[int, int] | None:
        """``None`` when the canonical address does not match, else a sortable (kind, suffix length)."""
        if self.kind is Specificity.EXACT:
            return (self.kind, 0) if local == self.local and domain == self.domain else None
        if self.kind is Specificity.DOMAIN:
            return (self.kind, 0) if domain == self.domain else None
        return (self.kind, len(self.domain)) if domain.endswith("." + self.domain) else None


class SenderMatcher:
    """One account's ``senders``; an empty list allows any sender (the spec's documented meaning)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(SenderPattern.parse(p) for p in patterns)

    def best(self, address: str) -> tuple[int, int] | None:
        """The rank of the most specific matching pattern, or ``None``."""
        canonical = _canonical(address)
        if canonical is None:
            return None
        ranks = [r for p in self.patterns if (r := p.rank(*canonical)) is not None]
        return max(ranks) if ranks else None

    def allows(self, address: str) -> bool:
        return not self.patterns or self.best(address) is not None


class SenderIndex:
    """All accounts' patterns: routing a sender to the account with the most specific match.

    Accounts without patterns are not routing candidates (they accept any
    sender, so they would capture everything). Patterns are indexed by their
    domain, so routing one address looks at the accounts whose patterns name
    its domain or one of its parent domains, not at every account: with
    10,000 accounts a scan cost ~28 ms per routed message.
    """

    def __init__(self, matchers: dict[str, SenderMatcher]) -> None:
        self._matchers: dict[str, SenderMatcher] = {}
        self._by_domain: dict[str, set[str]] = {}
        # The accounts listing each pattern (by meaning): a status report asks every account for its conflicts.
        self._by_pattern: dict[tuple[str | None, str, Specificity], set[str]] = {}
        for key, matcher in matchers.items():
            self.update(key, matcher)

    def update(self, key: str, matcher: SenderMatcher | None) -> None:
        """One account's patterns changed (``None``: it is gone): a change costs one entry, not a rebuild."""
        old = self._matchers.pop(key, None)
        if old is not None:
            for pattern in old.patterns:
                _forget(self._by_domain, pattern.domain, key)
                _forget(self._by_pattern, pattern.meaning, key)
        if matcher is None or not matcher.patterns:
            return
        self._matchers[key] = matcher
        for pattern in matcher.patterns:
            self._by_domain.setdefault(pattern.domain, set()).add(key)
            self._by_pattern.setdefault(pattern.meaning, set()).add(key)

    def route(self, address: str) -> list[str]:
        """Account keys whose best match is the most specific one; more than one means a conflict."""
        canonical = _canonical(address)
        if canonical is None:
            return []
        candidates: set[str] = set()
        labels = canonical[1].split(".")
        for start in range(len(labels)):  # the domain itself (exact, *@domain), then each parent (*@*.parent)
            candidates.update(self._by_domain.get(".".join(labels[start:]), ()))
        ranked = [(rank, key) for key in candidates if (rank := self._matchers[key].best(address)) is not None]
        if not ranked:
            return []
        top = max(rank for rank, _ in ranked)
        return sorted(key for rank, key in ranked if rank == top)

    def conflicts(self, key: str) -> list[str]:
        """Patterns of ``key`` that another account also lists (same meaning), so routing by them is ambiguous."""
        own = self._matchers.get(key)
        if own is None:
            return []
        return [p.text for p in own.patterns if len(self._by_pattern.get(p.meaning, ())) > 1]


_K = TypeVar("_K")


def _forget(index: dict[_K, set[str]], entry: _K, key: str) -> None:
    holders = index.get(entry)
    if holders is not None:
        holders.discard(key)
        if not holders:
            del index[entry]
