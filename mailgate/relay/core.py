"""The relay core: one envelope for one account in, one outcome out, whatever the front door.

Both doors (the HTTP send API, the SMTP ingress) turn their input into an
``OutgoingMessage`` and ask the relay; the relay checks access, suspension,
size, senders and the rate limit, sends through the pool and classifies what
happened as exactly one ``Outcome`` (``outcomes.py``: sent, refused, retry
later, delivery unknown). Each door maps it to its protocol
(``gateway/problems.py``, ``ingress/replies.py``), so limits, checks and
metrics exist once.

Where a message goes is decided here too (``Relay.deliver``): through this
gateway's pool, or, when this gateway holds no connection share of the
account (docs/admin-api.md, "Shares"), through a peer that holds one. How a
peer is reached is not the core's business (``Peers``; ``gateway/forward.py``
does it over the peers' admin API); the peer's outcome comes back as an
``Outcome``, so a door answers it as it would answer a local send. A message
whose account is removed while it waits is routed again (``rerouted``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from ..pool import SMTPPool
from .accounts import Account, AccountRegistry
from .envelope import OutgoingMessage
from .identity import Identity
from .outcomes import (
    ACCOUNT_CHANGES,
    MAX_RETRY_AFTER,
    NOTHING_SENT,
    RETRY_POOL_SATURATED,
    RETRY_SUSPENDED,
    Outcome,
    Reason,
    Refused,
    RetryLater,
    Sent,
    classify_error,
    outcome_label,
)


class Observer(Protocol):
    """Where outcomes are counted (``metrics.GatewayMetrics``); kept abstract so the core needs no Prometheus.

    ``duration`` and ``pool_wait`` are ``None`` for requests refused before a send was attempted.
    """

    def observe(self, account: str, outcome: str, duration: float | None, pool_wait: float | None) -> None: ...


class Peers(Protocol):
    """How a message reaches a peer gateway that holds a connection share of its account (``forward.Forwarder``).

    Tries ``peers`` in turn until one takes the message and returns that
    peer's outcome. Nothing sent when no peer could be reached
    (``RetryLater``, ``Reason.PEER_UNAVAILABLE``); ``DeliveryUnknown`` when a
    peer took the message and failed before its answer.
    """

    async def relay(self, key: str, peers: list[str], message: OutgoingMessage) -> Outcome: ...


class _NoObserver:
    def observe(self, account: str, outcome: str, duration: float | None, pool_wait: float | None) -> None:
        return None


Picked = TypeVar("Picked")
Result = TypeVar("Result")
REROUTES = 3  # routing decisions for one message, when the chosen account is removed before its send


async def rerouted(
    pick: Callable[[], Account | Picked], send: Callable[[Account], Awaitable[Result]], removed: Callable[[Result], bool]
) -> Picked | Result:
    """Send through the account routing picks now; pick again when it was removed before the message went out.

    A configuration push may remove the chosen account while the message
    waits (for a pooled connection, say): nothing reached an upstream, so the
    configuration now in force routes it again, as if it had just arrived.
    Both doors route a sender this way (the SMTP ingress, ``POST /v1/messages``);
    ``pick`` answers in the door's own terms when nothing routes it
    (``Picked``), ``send`` in the door's terms too, and ``removed`` tells
    which of its answers means "the account is gone".
    """
    for attempt in range(1, REROUTES + 1):
        account = pick()
        if not isinstance(account, Account):
            return account
        result = await send(account)
        if attempt == REROUTES or not removed(result):
            return result
    raise AssertionError("unreachable: the last attempt returns")


class Relay:
    """Access, limits and sending for every front door; holds no transport state."""

    def __init__(
        self,
        registry: AccountRegistry,
        pool: SMTPPool,
        observer: Observer | None = None,
        *,
        peers: Peers | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.observer: Observer = observer or _NoObserver()
        self.peers = peers  # None: no way to reach peers; a zero-share account's messages are then peer-unavailable
        self._clock = clock

    def admit(self, identity: Identity, key: str) -> Account | Refused | RetryLater:
        """The checks that need no message: known account, caller allowed, not suspended.

        A front door calls this before reading a body, so a refused caller
        costs nothing. The order keeps information from leaking: a caller not
        allowed on an account learns nothing about its state.
        """
        account = self.registry.get(key)
        refusal: Refused | RetryLater
        if account is None:
            refusal = Refused(Reason.UNKNOWN_ACCOUNT, f"no account {key!r} on this gateway")
        elif not identity.may_use(account.ref):
            refusal = Refused(Reason.FORBIDDEN, f"{identity.name} may not send through account {key!r}")
        elif account.config.spec.suspend:
            refusal = RetryLater(Reason.SUSPENDED, f"account {key!r} is suspended", RETRY_SUSPENDED)
        else:
            return account
        self.record(key, refusal.reason.value)
        return refusal

    @staticmethod
    def check_size(account: Account, size: int) -> Refused | None:
        limit = account.config.spec.max_message_bytes
        if size > limit:
            return Refused(Reason.TOO_LARGE, f"the message is {size} bytes; account {account.key!r} accepts at most {limit}")
        return None

    def check_message(self, account: Account, message: OutgoingMessage) -> Refused | None:
        """What makes a message unsendable through ``account`` whenever it is sent: its size and its senders.

        A door that queues a message runs this before it answers, so a message
        that can never go out is refused at once rather than accepted and failed later.
        """
        too_large = self.check_size(account, len(message.data))
        if too_large is not None:
            return too_large
        # The envelope sender and every originator field (From, Sender, Resent-From, Resent-Sender), as the
        # upstream will read them: a message may claim to be from no address the account's senders do not allow.
        for address in (message.sender, *message.originators):
            if not account.senders.allows(address):
                return Refused(Reason.SENDER_NOT_ALLOWED, f"{address!r} is not in the senders of account {account.key!r}")
        return None

    async def deliver(self, account: Account, message: OutgoingMessage, *, forwarded: bool = False) -> Outcome:
        """Send through this gateway's pool, or through a peer when this gateway holds no connection share.

        What can be checked here is checked here before a peer is asked (size,
        senders), so a refusal costs no hop and reads the same on every pod.
        A share that drops to 0 while the message waits for a connection sends
        it to a peer too: nothing was sent yet. ``forwarded`` is a message a
        peer passed on: a gateway that would pass it on again refuses instead,
        so that a stale peer list can never make a loop.
        """
        if not account.forward_peers:
            outcome = await self.send(account, message)
            if not (isinstance(outcome, RetryLater) and outcome.reason is Reason.NO_LOCAL_SHARE):
                return outcome
            current = self.registry.get(account.key)
            if current is None or not current.forward_peers:
                return outcome
            account = current
        else:
            refusal = self.check_message(account, message)
            if refusal is not None:
                self.observer.observe(account.key, refusal.reason.value, None, None)
                return refusal
        if forwarded or self.peers is None:
            why = "either" if forwarded else "and cannot reach its peers"
            text = f"this gateway holds no connection share of account {account.key} {why}"
            unavailable = RetryLater(Reason.PEER_UNAVAILABLE, text, RETRY_POOL_SATURATED)
            self.observer.observe(account.key, unavailable.reason.value, None, None)
            return unavailable
        return await self.peers.relay(account.key, account.forward_peers, message)

    async def send(self, account: Account, message: OutgoingMessage) -> Outcome:
        """Send through the account's pool; every upstream or pool failure becomes an outcome (bugs still raise).

        A configuration push may take the account's pool away while the
        message waits in it (its share here dropped to 0, or its settings were
        replaced): nothing was sent then, so the message follows the account
        as it is now, and is refused as unknown only if the account is gone.
        """
        for _ in range(ACCOUNT_CHANGES):
            outcome = await self._send_once(account, message)
            if not (isinstance(outcome, Refused) and outcome.reason is Reason.UNKNOWN_ACCOUNT):
                return outcome
            current = self.registry.get(account.key)
            if current is None:
                return outcome
            account = current
        return RetryLater(Reason.NO_LOCAL_SHARE, f"account {account.key!r} kept changing; try again", RETRY_POOL_SATURATED)

    async def _send_once(self, account: Account, message: OutgoingMessage) -> Outcome:
        refusal = self._precheck(account, message)
        if refusal is not None:
            self.observer.observe(account.key, refusal.reason.value, None, None)
            return refusal
        started = self._clock()
        wait: float | None = None
        outcome: Outcome
        # RFC 6152: 8-bit data must be declared, or a relay may mangle it; isascii() is one C-speed pass.
        eight_bit = not message.data.isascii()
        options = ("BODY=8BITMIME",) * eight_bit + ("SMTPUTF8",) * message.smtputf8
        try:
            result = await self.pool.send(account.key, message.sender, message.recipients, message.data, mail_options=options)
        except Exception as exc:
            outcome = classify_error(exc, smtputf8=message.smtputf8, eight_bit=eight_bit)
            if outcome.reason in NOTHING_SENT:
                account.limiter.give_back()
        else:
            wait = result.wait_seconds
            outcome = Sent(message.message_id, result.accepted, dict(result.refused), result.code, result.message)
        self.observer.observe(account.key, outcome_label(outcome), self._clock() - started, wait)
        return outcome

    def _precheck(self, account: Account, message: OutgoingMessage) -> Refused | RetryLater | None:
        if account.settings is None:  # forwarded to a peer before it gets here (``deliver``, the HTTP door)
            text = f"this gateway holds no connection share of account {account.key!r}; its peers do"
            return RetryLater(Reason.NO_LOCAL_SHARE, text, RETRY_POOL_SATURATED)
        refusal = self.check_message(account, message)
        if refusal is not None:
            return refusal
        wait = account.limiter.take()
        if wait > 0:
            retry_after = min(math.ceil(wait), MAX_RETRY_AFTER)
            return RetryLater(Reason.RATE_LIMITED, f"account {account.key!r} is over its rate limit", retry_after)
        return None

    def record(self, key: str, outcome: str) -> None:
        """Count a request refused before ``send`` (``invalid`` body, ``admit`` refusals).

        Unknown accounts are counted under ``-``: a label per made-up name
        would let any caller grow the metrics without bound.
        """
        label = key if self.registry.get(key) is not None else "-"
        self.observer.observe(label, outcome, None, None)
