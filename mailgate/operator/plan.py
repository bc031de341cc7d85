"""What each gateway should serve: a pure function of accounts, credentials and gateways.

No I/O and no clock here, so every rule about splitting limits is unit-tested
without an apiserver or a gateway.

Splitting. ``pool.maxConnections`` and ``rateLimit.messagesPerMinute`` are
cluster-wide. They are divided over the *shareholders*: the ready gateway pods
(all pods with an IP while none is ready yet, at first deployment), ordered by
pod name so that a share stays with its pod while others come and go. At most
``min(maxConnections, messagesPerMinute)`` of them hold a share, so every holder
gets at least one connection and one message per minute; the remainder of each
division goes to the first holders (3 connections over 2 gateways: [2, 1]; over
5: [1, 1, 1, 0, 0]). The sum of the shares never exceeds the spec.

Forwarding. A gateway without a share (not ready yet, or beyond the holders)
still serves the account: its ``AccountShare`` has ``maxConnections: 0`` and
``peers``, the send-API base URLs of the holders, and it forwards each send
request to one of them (docs/admin-api.md, "Shares").

Transitions. Shares change while gateways apply them one at a time, so a push
that *raises* a gateway's share is capped (``cap``) by what the other gateways
may still hold (what they acknowledged, or a push still in flight); it is raised
again once they confirmed their decrease. Decreases are never held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..snapshot import AccountConfig, AccountShare, Credentials, SmtpClientCredential, config_digest
from ..spec import EffectiveLimits, SmtpAccountSpec


@dataclass(frozen=True)
class GatewayPod:
    """A gateway pod that receives configuration: it runs and has an IP (ready or not yet)."""

    name: str
    ip: str
    ready: bool

    def url(self, port: int) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class ResolvedAccount:
    """An account with its credentials resolved: everything a gateway needs except its share."""

    namespace: str
    name: str
    generation: int | None
    spec: SmtpAccountSpec
    credentials: Credentials = field(default_factory=Credentials)
    smtp_clients: tuple[SmtpClientCredential, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Hold:
    """How much of an account's limits a gateway may be using; ``None`` rate means unlimited."""

    max_connections: int
    messages_per_minute: int | None

    def union(self, other: Hold) -> Hold:
        """The larger of two holds (a gateway that may run either config holds both)."""
        if self.messages_per_minute is None or other.messages_per_minute is None:
            rate = None
        else:
            rate = max(self.messages_per_minute, other.messages_per_minute)
        return Hold(max(self.max_connections, other.max_connections), rate)


NO_HOLD = Hold(0, 0)


@dataclass(frozen=True)
class AccountPlan:
    """One account's configuration for every gateway, in gateway order."""

    account: ResolvedAccount
    configs: Mapping[str, AccountConfig]
    digests: Mapping[str, str]
    holder_urls: Mapping[str, str]
    effective: EffectiveLimits

    def peers_for(self, gateway: str) -> list[str]:
        """Where ``gateway`` forwards when it holds no share: every holder but itself."""
        return [url for name, url in self.holder_urls.items() if name != gateway]


def split(total: int, parts: int) -> list[int]:
    """``total`` over ``parts`` as evenly as possible, larger shares first; the sum is ``total``."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + 1 if index < extra else base for index in range(parts)]


def ordered(gateways: Iterable[GatewayPod]) -> list[GatewayPod]:
    """The stable order every list in the plan follows: by pod name."""
    return sorted(gateways, key=lambda gateway: gateway.name)


def shareholders(gateways: Iterable[GatewayPod]) -> list[GatewayPod]:
    """Ready gateways in order; all of them while none is ready (a fresh deployment must bootstrap)."""
    everyone = ordered(gateways)
    ready = [gateway for gateway in everyone if gateway.ready]
    return ready or everyone


def plan_account(account: ResolvedAccount, gateways: Iterable[GatewayPod], send_port: int) -> AccountPlan:
    """Each gateway's ``AccountConfig`` for ``account``, with its share of the limits."""
    everyone = ordered(gateways)
    candidates = shareholders(everyone)
    connections = account.spec.pool.max_connections
    rate = account.spec.rate_limit.messages_per_minute
    count = min(len(candidates), connections, rate if rate is not None else connections)
    holders = candidates[:count]
    connection_shares = dict(zip((g.name for g in holders), split(connections, count), strict=True))
    rate_shares = dict(zip((g.name for g in holders), split(rate, count), strict=True)) if rate is not None else {}
    holder_urls = {gateway.name: gateway.url(send_port) for gateway in holders}
    configs: dict[str, AccountConfig] = {}
    for gateway in everyone:
        held = connection_shares.get(gateway.name, 0)
        if held:
            share = AccountShare(max_connections=held, messages_per_minute=rate_shares.get(gateway.name))
        else:
            peers = [url for name, url in holder_urls.items() if name != gateway.name]
            share = AccountShare(max_connections=0, messages_per_minute=0 if rate is not None else None, peers=peers)
        configs[gateway.name] = _config(account, share)
    effective = EffectiveLimits(
        max_connections_per_gateway=[connection_shares.get(g.name, 0) for g in everyone],
        messages_per_minute_per_gateway=[rate_shares.get(g.name, 0) for g in everyone] if rate is not None else [],
    )
    return AccountPlan(
        account=account,
        configs=configs,
        digests={name: config_digest(config) for name, config in configs.items()},
        holder_urls=holder_urls,
        effective=effective,
    )


def _config(account: ResolvedAccount, share: AccountShare | None) -> AccountConfig:
    return AccountConfig(
        namespace=account.namespace,
        name=account.name,
        generation=account.generation,
        spec=account.spec,
        credentials=account.credentials,
        share=share,
        smtp_clients=list(account.smtp_clients),
    )


def hold_of(config: AccountConfig) -> Hold:
    """What a gateway serving ``config`` may use; no share means the whole limits (standalone)."""
    if config.share is None:
        return Hold(config.spec.pool.max_connections, config.spec.rate_limit.messages_per_minute)
    rate = config.share.messages_per_minute
    if rate is None and config.spec.rate_limit.messages_per_minute is not None:
        rate = config.spec.rate_limit.messages_per_minute
    return Hold(config.share.max_connections, rate)


def cap(config: AccountConfig, own: Hold, others: Iterable[Hold], peers: Sequence[str]) -> AccountConfig:
    """``config`` with any *increase* of its share limited to what the other gateways leave free.

    ``own`` is what this gateway may already use, ``others`` what every other
    gateway may use. A share at or below ``own`` passes unchanged (decreases are
    always safe). A capped share of zero connections or messages forwards to
    ``peers``. Returns ``config`` itself when nothing is capped.
    """
    share = config.share
    if share is None:
        return config
    others = list(others)
    connections = share.max_connections
    if connections > own.max_connections:
        room = config.spec.pool.max_connections - sum(hold.max_connections for hold in others)
        connections = min(connections, max(own.max_connections, room))
    rate = share.messages_per_minute
    limit = config.spec.rate_limit.messages_per_minute
    if rate is not None and limit is not None and own.messages_per_minute is not None and rate > own.messages_per_minute:
        used = sum(limit if hold.messages_per_minute is None else hold.messages_per_minute for hold in others)
        rate = min(rate, max(own.messages_per_minute, limit - used))
    if connections == share.max_connections and rate == share.messages_per_minute:
        return config
    if connections <= 0 or rate == 0:
        capped = AccountShare(max_connections=0, messages_per_minute=0 if limit is not None else None, peers=list(peers))
    else:
        capped = AccountShare(max_connections=connections, messages_per_minute=rate)
    return config.model_copy(update={"share": capped})


def plan_all(accounts: Iterable[ResolvedAccount], gateways: Iterable[GatewayPod], send_port: int) -> dict[str, AccountPlan]:
    """Plans for many accounts, by account key."""
    gateways = list(gateways)
    return {account.key: plan_account(account, gateways, send_port) for account in accounts}
