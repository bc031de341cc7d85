"""Which account sends a message: sender-dependent routing, for the SMTP ingress and for HTTP callers.

The rules, in order (Postfix users know them as ``sender_dependent_relayhost_maps``):

1. A client that logged in (SMTP AUTH) sends through the account its login
   belongs to, and only as a sender that account's ``senders`` allow.
2. Otherwise the envelope sender is matched against every account's
   ``senders``: an exact address beats ``*@domain``, which beats
   ``*@*.domain`` (the longer suffix winning between those). Accounts with an
   empty ``senders`` list allow any sender but claim none, so they are never
   picked here (they would capture everything).
3. Otherwise the optional default account, if its own ``senders`` allow the
   address (an empty list allows all: the usual catch-all).
4. Otherwise nothing: the caller is told that no account may send for that address.

Two accounts claiming the same pattern is a configuration error. A sender
whose best match is such a pattern is never given to one of them at random:
it is refused as a temporary failure naming both accounts, so that fixing the
configuration lets the client's retry through.

The ``Router`` is a plain object over the gateway's live ``AccountRegistry``
(which keeps the sender index current on every push), so a routing decision
always reflects the configuration in force when it is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .accounts import Account
from .outcomes import RETRY_ROUTING_CONFLICT, Reason, Refused, RetryLater

log = logging.getLogger("mailgate.relay.routing")


class Via(str, Enum):
    """How an account was chosen; logged and counted, so operators see which rule fired."""

    CLIENT = "client"
    SENDER = "sender"
    DEFAULT = "default"


class Why(str, Enum):
    """Why no account was chosen."""

    UNMATCHED = "unmatched"  # no account claims the sender and no default account takes it
    CONFLICT = "conflict"  # the best match is a pattern that several accounts claim
    NOT_ALLOWED = "not-allowed"  # a logged-in client used a sender its account does not allow
    UNKNOWN_ACCOUNT = "unknown-account"  # the client's account was removed since it logged in


@dataclass(frozen=True, slots=True)
class Route:
    account: Account
    via: Via


@dataclass(frozen=True, slots=True)
class NoRoute:
    sender: str
    why: Why
    accounts: tuple[str, ...] = ()  # the accounts involved (CONFLICT: the claimants)

    @property
    def detail(self) -> str:
        """A sentence for the client: names accounts and the sender, never anything secret."""
        if self.why is Why.CONFLICT:
            return (
                f"sender {self.sender} is claimed by several accounts ({', '.join(self.accounts)}); "
                "the gateway's configuration must be fixed"
            )
        if self.why is Why.NOT_ALLOWED:
            return f"sender {self.sender} is not allowed for account {self.accounts[0]}"
        if self.why is Why.UNKNOWN_ACCOUNT:
            return f"account {self.accounts[0]} is no longer configured"
        return f"no account may send for {self.sender}"

    def as_outcome(self) -> Refused | RetryLater:
        """The relay's outcome type, which each door maps to its protocol (problems, SMTP replies) like any other.

        A conflict is the gateway's configuration at fault, not the caller: temporary in both doors
        (HTTP 503, SMTP 451), so a fix lets the retry through.
        """
        if self.why is Why.UNKNOWN_ACCOUNT:
            return Refused(Reason.UNKNOWN_ACCOUNT, self.detail, retryable=True)
        if self.why is Why.CONFLICT:
            return RetryLater(Reason.ROUTING_CONFLICT, self.detail, RETRY_ROUTING_CONFLICT)
        return Refused(Reason.SENDER_NOT_ALLOWED, self.detail)


class Accounts(Protocol):
    """What routing needs from the registry (``relay.accounts.AccountRegistry``)."""

    def get(self, key: str) -> Account | None: ...

    def route(self, sender: str) -> list[str]: ...


class Router:
    """Routing decisions over the live registry; holds no state of its own beyond the default account."""

    def __init__(self, accounts: Accounts, default_account: str | None = None) -> None:
        self.accounts = accounts
        self.default_account = default_account
        self._reported: set[tuple[str, ...]] = set()

    def route(self, sender: str, *, client_account: str | None = None) -> Route | NoRoute:
        """The account for a message from ``sender``; ``client_account`` is the logged-in client's account."""
        if client_account is not None:
            account = self.accounts.get(client_account)
            if account is None:
                return NoRoute(sender, Why.UNKNOWN_ACCOUNT, (client_account,))
            if not account.senders.allows(sender):
                return NoRoute(sender, Why.NOT_ALLOWED, (client_account,))
            return Route(account, Via.CLIENT)
        claimants = self.accounts.route(sender)
        if len(claimants) > 1:
            self._report_conflict(sender, claimants)
            return NoRoute(sender, Why.CONFLICT, tuple(claimants))
        if claimants:
            account = self.accounts.get(claimants[0])
            if account is not None:
                return Route(account, Via.SENDER)
        if self.default_account is not None:
            account = self.accounts.get(self.default_account)
            if account is not None and account.senders.allows(sender):
                return Route(account, Via.DEFAULT)
        return NoRoute(sender, Why.UNMATCHED)

    def _report_conflict(self, sender: str, claimants: list[str]) -> None:
        """One warning per set of claimants (not per message), so a busy sender cannot flood the log."""
        key = tuple(claimants)
        if key in self._reported:
            return
        self._reported.add(key)
        log.warning(
            "sender routing conflict: accounts %s claim the same sender pattern (first seen for %s); "
            "messages whose best match is that pattern are refused until the configuration is fixed",
            ", ".join(claimants),
            sender,
        )
