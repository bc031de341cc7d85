"""The operator's in-memory state: accounts, their plans, gateway pods and their push loops.

Handlers and the Pod watch feed it; ``GatewaySyncer``s read what each pod
should have from it; the status writer reads what users should see. All
state changes are synchronous methods (no ``await`` between reading and
writing state), so concurrent handlers and push loops never see half an
update. The only awaits are credential hashing (under a per-account lock,
so two resolutions of one account cannot finish out of order) and waiting
for a deleted account to leave every gateway.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr, ValidationError

from ..oauth2.endpoint import AccessToken, TokenError
from ..oauth2.grants import GrantError
from ..snapshot import Credentials, config_digest
from ..spec import API_VERSION, KIND, EffectiveLimits, SmtpAccountSpec, SmtpAccountStatus
from ..validation import field_problems
from .admin import AdminClient, GatewayReport
from .conditions import (
    TOKEN_REASONS,
    TOKEN_REFUSED,
    TOKEN_UNAVAILABLE,
    GatewayHealth,
    StatusInputs,
    conflict_index,
    sender_conflicts,
)
from .credentials import CredentialProblem, LoginHasher, SecretLookup, resolve, secret_names
from .metrics import OperatorMetrics
from .plan import AccountPlan, GatewayPod, Hold, ResolvedAccount, cap, hold_of, plan_account, plan_all
from .queuestatus import NOTHING_PENDING, QueueCounts, QueueStatusPublisher
from .revisions import Revisions
from .syncer import Desired, GatewaySyncer
from .tokens import OperatorTokens

log = logging.getLogger(__name__)

_UNBOUNDED = Hold(1_000_000, None)

QUEUE_STATUS_RESYNCS = 2
"""An account's queued-message counts in its status change at most once per this many resync periods (60 s by
default): gateways are read once per period, so counts any fresher would only mean more status writes."""


class InvalidSpec(Exception):
    """The spec does not parse (the CRD schema should have prevented it); the message names fields, never values."""


@dataclass(frozen=True)
class PodInfo:
    """What the operator reads from a gateway Pod."""

    uid: str
    name: str
    ip: str | None
    running: bool
    ready: bool
    terminating: bool

    @property
    def receives_config(self) -> bool:
        """Running with an IP and not going away: it gets configuration (ready or not: it needs a snapshot to *become* ready)."""
        return self.running and bool(self.ip) and not self.terminating


@dataclass(frozen=True)
class CredentialChange:
    """The credential problem before and after a resolution, to post an Event on a change."""

    before: CredentialProblem | None
    after: CredentialProblem | None


@dataclass
class AccountEntry:
    namespace: str
    name: str
    generation: int | None = None
    spec: SmtpAccountSpec | None = None
    good: ResolvedAccount | None = None
    """The last configuration resolved completely: what gateways serve, even while the Secret is broken."""
    oauth2_base: ResolvedAccount | None = None
    """OAuth2 accounts: the resolved configuration without its access token, which ``good`` adds as tokens arrive."""
    problem: CredentialProblem | None = None
    deleting: bool = False
    uid: str | None = None
    seen_generation: int | None = None
    """The generation ``upsert`` last got, valid or not: what the resync compares the object with."""
    status: SmtpAccountStatus | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Engine:
    """State and decisions between the kopf handlers and the gateway push loops."""

    def __init__(
        self,
        *,
        client: AdminClient,
        send_port: int,
        resync_seconds: float,
        metrics: OperatorMetrics,
        hasher: LoginHasher | None = None,
        revisions: Revisions | None = None,
        on_status_change: Callable[[Iterable[str]], None] = lambda keys: None,
        tokens: OperatorTokens | None = None,
        token_refresh_url: str | None = None,
    ) -> None:
        self.revisions = revisions or Revisions()
        self._client = client
        self._send_port = send_port
        self._resync_seconds = resync_seconds
        self._metrics = metrics
        self._hasher = hasher or LoginHasher()
        self._on_status_change = on_status_change
        self._accounts: dict[str, AccountEntry] = {}
        self._by_secret: dict[tuple[str, str], set[str]] = {}
        self._plans: dict[str, AccountPlan] = {}
        self._conflicts: tuple[list[GatewayReport | None], dict[str, tuple[str, ...]]] = ([], {})
        self._syncers: dict[str, GatewaySyncer] = {}  # pod uid -> loop, for pods that receive config
        self._retired: dict[str, GatewaySyncer] = {}  # pods going away: their holds count until the Pod is gone
        self._unseen: set[str] | None = None
        self._primed = False
        self._changed = asyncio.Event()
        self.tokens = tokens or OperatorTokens()
        self.tokens.observers.append(self)
        self._token_refresh_url = token_refresh_url
        self.queue_status = QueueStatusPublisher(QUEUE_STATUS_RESYNCS * resync_seconds, self._queue_reports, on_status_change)
        """Run its ``run()`` beside the status writer: it publishes counts that had to wait for their interval."""

    # ------------------------------------------------------------------ accounts

    async def upsert(self, body: Any, lookup: SecretLookup) -> CredentialChange:
        """Create or update an account from its object; returns how its credential problem changed."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        uid, generation = meta.get("uid"), meta.get("generation")
        entry = self._accounts.get(key)
        if entry is not None and entry.uid == uid and _older(generation, entry.seen_generation):
            return CredentialChange(entry.problem, entry.problem)  # a resync's read lost a race with a handler
        if entry is None:
            entry = self._accounts[key] = AccountEntry(meta["namespace"], meta["name"])
            entry.status = _status_of(body)
            self.queue_status.seed(key, entry.status.delivery if entry.status is not None else None)
            self._metrics.accounts.set(len(self._accounts))
        self._seen(key)
        entry.uid, entry.seen_generation = uid, generation
        try:
            spec = SmtpAccountSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            problems = field_problems(error, whole="spec", within=("spec",))
            raise InvalidSpec("invalid spec: " + "; ".join(f"{p.field}: {p.message}" for p in problems)) from None
        entry.generation = generation
        self._index_secrets(entry, spec)
        entry.spec = spec
        return await self._resolve(entry, lookup)

    def behind(self, key: str, uid: str, generation: int | None) -> bool:
        """Whether object ``uid`` at ``generation`` is newer than what account ``key`` was last reconciled from.

        An account being deleted is never behind: kopf's delete handler owns it
        until it is forgotten (then it is unknown, hence behind, if an object of
        that name exists again).
        """
        entry = self._accounts.get(key)
        if entry is None:
            return True
        if entry.deleting:
            return False
        return entry.uid != uid or _older(entry.seen_generation, generation)

    def known(self) -> dict[str, str | None]:
        """Every account key with the uid of its object (None if none was reconciled yet)."""
        return {key: entry.uid for key, entry in self._accounts.items()}

    def knows(self, key: str, uid: str | None) -> bool:
        """Whether account ``key`` exists here, for object ``uid``."""
        entry = self._accounts.get(key)
        return entry is not None and entry.uid == uid

    def has(self, key: str) -> bool:
        """Whether account ``key`` exists here at all (a repair of it is then of a stale one, not a missing one)."""
        return key in self._accounts

    def referencing(self, namespace: str, secret: str) -> list[str]:
        """Accounts that read Secret ``namespace/secret``."""
        return sorted(self._by_secret.get((namespace, secret), ()))

    def _index_secrets(self, entry: AccountEntry, spec: SmtpAccountSpec | None) -> None:
        old = secret_names(entry.spec) if entry.spec is not None else set()
        new = secret_names(spec) if spec is not None else set()
        for name in old - new:
            keys = self._by_secret.get((entry.namespace, name), set())
            keys.discard(entry.key)
            if not keys:
                self._by_secret.pop((entry.namespace, name), None)
        for name in new - old:
            self._by_secret.setdefault((entry.namespace, name), set()).add(entry.key)

    async def refresh_credentials(self, key: str, lookup: SecretLookup) -> CredentialChange | None:
        """Re-read an account's Secrets (one of them changed); None if the account is gone."""
        entry = self._accounts.get(key)
        if entry is None or entry.spec is None or entry.deleting:
            return None
        return await self._resolve(entry, lookup)

    async def _resolve(self, entry: AccountEntry, lookup: SecretLookup) -> CredentialChange:
        async with entry.lock:
            before = entry.problem
            spec, generation = entry.spec, entry.generation
            assert spec is not None
            result = resolve(entry.namespace, spec, lookup)
            if isinstance(result, CredentialProblem):
                entry.problem = result
            else:
                clients = await self._hasher.hash_all(result.client_logins)
                if entry.deleting:
                    return CredentialChange(before, None)
                resolved = ResolvedAccount(entry.namespace, entry.name, generation, spec, result.credentials, clients)
                if result.credentials.oauth2_secret is not None:
                    self._resolve_oauth2(entry, resolved)
                else:
                    self.tokens.discard_soon(entry.key)
                    entry.problem, entry.oauth2_base, entry.good = None, None, resolved
                    self._replan(entry.key)
            self._on_status_change([entry.key])
            return CredentialChange(before, entry.problem)

    def _resolve_oauth2(self, entry: AccountEntry, resolved: ResolvedAccount) -> None:
        """Hand the credential to the account's token keeper; gateways get the configuration once a token is there."""
        oauth2, secret = resolved.spec.auth.oauth2, resolved.credentials.oauth2_secret
        assert oauth2 is not None and secret is not None
        try:
            self.tokens.configure(entry.key, oauth2, {key: value.get_secret_value() for key, value in secret.items()})
        except GrantError as error:  # names the Secret key, never its value
            ref = resolved.spec.auth.secret_ref
            where = f"Secret {entry.namespace}/{ref.name}" if ref is not None else "the Secret"
            entry.problem = CredentialProblem("CredentialInvalid", f"{where}: {error}")
            return
        entry.oauth2_base = resolved
        failure = self.tokens.last_error(entry.key)
        entry.problem = _token_problem(failure) if failure is not None else None
        token = self.tokens.current(entry.key)
        if token is not None:
            entry.good = self._with_token(resolved, token)
            self._replan(entry.key)

    def _with_token(self, resolved: ResolvedAccount, token: AccessToken) -> ResolvedAccount:
        credentials = Credentials(
            username=resolved.credentials.username,
            token=SecretStr(token.value),
            token_expires_at=token.expires_at,
            token_refresh_url=self._token_refresh_url,
        )
        return ResolvedAccount(resolved.namespace, resolved.name, resolved.generation, resolved.spec, credentials,
                               resolved.smtp_clients)  # fmt: skip

    # TokenObserver: the keepers run outside any handler, so these change state and mark the status themselves.
    def token_issued(self, key: str, token: AccessToken) -> None:
        entry = self._accounts.get(key)
        if entry is None or entry.deleting or entry.oauth2_base is None:
            return
        entry.good = self._with_token(entry.oauth2_base, token)
        if entry.problem is not None and entry.problem.reason in TOKEN_REASONS:
            entry.problem = None
        self._replan(key)
        self._on_status_change([key])

    def token_failed(self, key: str, error: TokenError, retry_in: float) -> None:
        entry = self._accounts.get(key)
        if entry is None or entry.deleting:
            return
        if entry.problem is None or entry.problem.reason in TOKEN_REASONS:
            entry.problem = _token_problem(error)
            self._on_status_change([key])

    async def refresh_token(self, key: str, rejected_fingerprint: str) -> bool:
        """A gateway's upstream refused the current token (535): one new token, pushed like any change."""
        entry = self._accounts.get(key)
        if entry is None or entry.deleting:
            return False
        return await self.tokens.refresh(key, rejected_fingerprint)

    def start_deleting(self, key: str) -> None:
        """Take an account off every gateway (the caller then waits with ``wait_removed``)."""
        entry = self._accounts.get(key)
        if entry is None:
            namespace, name = key.split("/", 1)
            entry = self._accounts[key] = AccountEntry(namespace, name)
        self._seen(key)
        if not entry.deleting:
            entry.deleting = True
            self.tokens.discard_soon(key)
            self._plans.pop(key, None)
            self._wake_all()

    async def wait_removed(self, key: str, timeout: float) -> list[str]:
        """Wait until no gateway may serve ``key``; returns the pods that still may at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            holding = sorted(syncer.name for syncer in self._syncers.values() if syncer.has(key))
            remaining = deadline - time.monotonic()
            if not holding or remaining <= 0:
                return holding
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass

    def forget(self, key: str) -> None:
        """The object is gone (its finalizer released)."""
        self.tokens.discard_soon(key)
        self.queue_status.forget(key)
        entry = self._accounts.pop(key, None)
        if entry is not None:
            self._index_secrets(entry, None)
        self._plans.pop(key, None)
        self._metrics.accounts.set(len(self._accounts))

    # ------------------------------------------------------------------ start-up

    def expect(self, keys: Iterable[str]) -> None:
        """The accounts that existed at start-up: until each is handled, nothing is deleted from gateways."""
        self._unseen = {key for key in keys if key not in self._accounts}
        self._check_primed()

    def prime_now(self) -> None:
        """Stop waiting for expected accounts (a fallback: one that vanished unhandled must not block forever)."""
        if self._unseen:
            log.warning("start-up: %d expected account(s) never handled; proceeding", len(self._unseen))
        self._unseen = set()
        self._check_primed()

    def _seen(self, key: str) -> None:
        if self._unseen is not None:
            self._unseen.discard(key)
            self._check_primed()

    def _check_primed(self) -> None:
        if not self._primed and self._unseen is not None and not self._unseen:
            self._primed = True
            log.info("all %d accounts read: gateways get full snapshots and deletions from now on", len(self._accounts))
            self._wake_all()

    @property
    def primed(self) -> bool:
        return self._primed

    # ------------------------------------------------------------------ gateway pods

    def set_pods(self, pods: Iterable[PodInfo]) -> None:
        """The current gateway Pods (a full list, after every watch event)."""
        pods = list(pods)
        targets = {pod.uid: pod for pod in pods if pod.receives_config}
        present = {pod.uid for pod in pods}
        changed = False
        recount: set[str] = set()
        for uid, syncer in list(self._syncers.items()):
            pod = targets.get(uid)
            if pod is None or pod.ip != syncer.gateway.ip:
                del self._syncers[uid]
                syncer.cancel()
                if pod is None and uid in present:
                    self._retired[uid] = syncer
                changed = True
                recount.update(_pending(syncer))
        for uid in list(self._retired):
            if uid not in present or uid in targets:
                del self._retired[uid]
                changed = True
        for uid, pod in targets.items():
            assert pod.ip is not None
            gateway = GatewayPod(pod.name, pod.ip, pod.ready)
            existing = self._syncers.get(uid)
            if existing is None:
                syncer = GatewaySyncer(self, self._client, gateway, resync_seconds=self._resync_seconds, metrics=self._metrics)
                self._syncers[uid] = syncer
                syncer.start()
                changed = True
                log.info("gateway %s (%s) discovered, ready=%s", pod.name, pod.ip, pod.ready)
            elif existing.gateway != gateway:
                existing.gateway = gateway
                existing.wake(status=True)  # readiness flipped: maybe a restarted container
                changed = True
        if changed:
            self._metrics.gateways.set(len(self._syncers))
            gateways = [syncer.gateway for syncer in self._syncers.values()]
            accounts = [entry.good for entry in self._accounts.values() if entry.good is not None and not entry.deleting]
            self._plans = plan_all(accounts, gateways, self._send_port)
            self._wake_all()
            self._on_status_change(list(self._accounts))
        if recount:
            self.queue_status.changed(recount)

    # ------------------------------------------------------------------ what syncers ask

    def desired_for(self, syncer: GatewaySyncer) -> Desired:
        desired: Desired = {}
        capped: set[str] = set()
        for key, plan in self._plans.items():
            config = plan.configs.get(syncer.name)
            if config is None:
                continue
            digest = plan.digests[syncer.name]
            share = config.share
            own = syncer.held(key)
            if share is not None and _raises(share.max_connections, share.messages_per_minute, own):
                others = [self._hold_of(other, key, plan) for other in self._all_syncers() if other is not syncer]
                limited = cap(config, own, others, self._serving_peers(plan, syncer, key))
                if limited is not config:
                    if limited.share is not None and limited.share.max_connections == 0 and not limited.share.peers:
                        continue  # nobody to forward to yet: leave the pod as it is (``has`` keeps it from deletion)
                    config, digest = limited, config_digest(limited)
                    capped.add(key)
            desired[key] = (config, digest)
        syncer.capped = capped
        return desired

    def _serving_peers(self, plan: AccountPlan, syncer: GatewaySyncer, key: str) -> list[str]:
        """Where a pod held back to zero forwards meanwhile: the planned holders and whoever holds a share now."""
        peers = plan.peers_for(syncer.name)
        for other in self._syncers.values():
            url = other.gateway.url(self._send_port)
            if other is not syncer and url not in peers and other.contacted and other.held(key).max_connections > 0:
                peers.append(url)
        return peers

    def keeps(self) -> Set[str]:
        return {key for key, entry in self._accounts.items() if entry.good is None and not entry.deleting}

    def deleting(self) -> Set[str]:
        return {key for key, entry in self._accounts.items() if entry.deleting}

    def planned(self) -> Set[str]:
        return self._plans.keys()

    def full_hold(self, key: str) -> Hold:
        entry = self._accounts.get(key)
        if entry is None or entry.spec is None:
            return _UNBOUNDED
        return Hold(entry.spec.pool.max_connections, entry.spec.rate_limit.messages_per_minute)

    def gateway_changed(self, syncer: GatewaySyncer, keys: Set[str], *, first_contact: bool = False) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for other in self._syncers.values():
            if other is not syncer and other.capped and (first_contact or other.capped & keys):
                other.wake()
        if keys:
            self._on_status_change(keys)

    def queues_changed(self, keys: Set[str]) -> None:
        self.queue_status.changed(keys)

    def _queue_reports(self, key: str) -> list[QueueCounts | None]:
        """Each gateway's counts for ``key``, from pods that receive configuration, answered and serve it."""
        entry = self._accounts.get(key)
        if entry is None or entry.deleting:
            return []
        reports = (syncer.report for syncer in self._syncers.values())
        return [report.queues[key] for report in reports if report is not None and key in report.queues]

    def _hold_of(self, syncer: GatewaySyncer, key: str, plan: AccountPlan) -> Hold:
        """What another pod may use of ``key``'s limits.

        A pod not asked yet may serve anything (e.g. after an operator restart):
        the whole limits, for the moment its first status read takes. A pod that
        could not be reached counts with its planned share, which is what a
        previous operator run gave it too: assuming more would let one dead pod
        take every share from the live ones.
        """
        if syncer.contacted:
            return syncer.held(key)
        if syncer.failures == 0:
            return self.full_hold(key)
        config = plan.configs.get(syncer.name)
        return syncer.held(key).union(hold_of(config)) if config is not None else syncer.held(key)

    def _all_syncers(self) -> Iterable[GatewaySyncer]:
        yield from self._syncers.values()
        yield from self._retired.values()

    # ------------------------------------------------------------------ status

    def status_inputs(self, key: str) -> StatusInputs | None:
        entry = self._accounts.get(key)
        if entry is None or entry.deleting or entry.spec is None:
            return None
        plan = self._plans.get(key)
        targets = list(self._syncers.values())
        reports = [syncer.report for syncer in targets]
        synced = sum(1 for syncer in targets if plan is not None and syncer.serves(key, plan.digests.get(syncer.name, "")))
        health = []
        for syncer in targets:
            report = syncer.report.accounts.get(key) if syncer.report is not None else None
            if report is not None:
                health.append(GatewayHealth(syncer.name, report.healthy, report.last_error))
        return StatusInputs(
            generation=entry.generation,
            suspended=entry.spec.suspend,
            problem=entry.problem,
            pushed_generation=plan.account.generation if plan is not None else None,
            synced=synced,
            total=len(targets),
            health=health,
            rejected=[(syncer.name, syncer.rejected[key][1]) for syncer in targets if key in syncer.rejected],
            effective=plan.effective if plan is not None else EffectiveLimits(),
            sender_conflicts=sender_conflicts(key, reports, self._conflict_index(reports)),
            delivery=self.queue_status.shown(key),
        )

    def _conflict_index(self, reports: list[GatewayReport | None]) -> dict[str, tuple[str, ...]]:
        """``conflict_index`` of these reports, rebuilt only when a gateway's report was replaced."""
        cached, index = self._conflicts
        if len(cached) != len(reports) or any(a is not b for a, b in zip(cached, reports, strict=True)):
            index = conflict_index(reports)
            self._conflicts = (reports, index)
        return index

    def previous_status(self, key: str) -> SmtpAccountStatus | None:
        entry = self._accounts.get(key)
        return entry.status if entry is not None else None

    def record_status(self, key: str, status: SmtpAccountStatus) -> None:
        entry = self._accounts.get(key)
        if entry is not None:
            entry.status = status

    def object_ref(self, key: str) -> dict[str, Any] | None:
        """Enough of the object to post an Event about it."""
        entry = self._accounts.get(key)
        if entry is None:
            return None
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"namespace": entry.namespace, "name": entry.name, "uid": entry.uid},
        }

    # ------------------------------------------------------------------ internals

    def _replan(self, key: str) -> None:
        entry = self._accounts.get(key)
        gateways = [syncer.gateway for syncer in self._syncers.values()]
        if entry is None or entry.good is None or entry.deleting:
            self._plans.pop(key, None)
        else:
            self._plans[key] = plan_account(entry.good, gateways, self._send_port)
        self._wake_all()

    def _wake_all(self) -> None:
        for syncer in self._syncers.values():
            syncer.wake()

    async def close(self) -> None:
        await self.tokens.close()
        syncers = [*self._syncers.values(), *self._retired.values()]
        self._syncers.clear()
        self._retired.clear()
        for syncer in syncers:
            syncer.cancel()
        await asyncio.gather(*(syncer.wait_stopped() for syncer in syncers))


def _pending(syncer: GatewaySyncer) -> list[str]:
    """Accounts a pod reported messages pending for: without that pod, their combined counts may be lower."""
    queues = syncer.report.queues if syncer.report is not None else {}
    return [key for key, counts in queues.items() if counts is not None and counts != NOTHING_PENDING]


def _token_problem(error: TokenError) -> CredentialProblem:
    """The token endpoint's refusal as a condition: its error code and description, which hold no secret.

    Without the per-request identifiers Entra ID appends (Trace ID, Correlation
    ID, Timestamp): they change on every retry, and would make every retry a
    new status write and a new Event. The log keeps them for support tickets.
    """
    message = _PER_REQUEST.sub("", str(error)).rstrip()
    return CredentialProblem(TOKEN_UNAVAILABLE if error.retryable else TOKEN_REFUSED, message)


_LABELS = "(Trace ID|Correlation ID|Timestamp)"
_PER_REQUEST = re.compile(rf"\s*{_LABELS}:\s*\S+(\s+\S+)?(?=\s*{_LABELS}:|\s*$)")


def _raises(connections: int, rate: int | None, own: Hold) -> bool:
    """Whether a share asks for more than the pod may already use (only then can it need a cap)."""
    if connections > own.max_connections:
        return True
    return rate is not None and own.messages_per_minute is not None and rate > own.messages_per_minute


def _older(generation: int | None, than: int | None) -> bool:
    """``generation`` is known to precede ``than`` (an unknown one precedes any known one)."""
    if than is None:
        return False
    return generation is None or generation < than


def _status_of(body: Any) -> SmtpAccountStatus | None:
    """The object's current status, so transition times survive an operator restart."""
    raw = body.get("status")
    if not raw:
        return None
    try:
        return SmtpAccountStatus.model_validate(dict(raw))
    except ValidationError:
        return None
