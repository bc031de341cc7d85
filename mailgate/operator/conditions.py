"""An SmtpAccount's status, computed from what the operator knows: pure, so it is tested directly.

Conditions follow the Kubernetes API conventions (metav1.Condition): ``type``,
``status``, a CamelCase ``reason``, a ``message``, ``observedGeneration`` and a
``lastTransitionTime`` that changes only when ``status`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from ..spec import Condition, ConditionStatus, DeliveryStatus, EffectiveLimits, GatewaySync, SmtpAccountStatus
from .credentials import CredentialProblem

if TYPE_CHECKING:
    from .admin import GatewayReport

READY = "Ready"
CREDENTIALS_RESOLVED = "CredentialsResolved"
SYNCED = "Synced"
UPSTREAM_HEALTHY = "UpstreamHealthy"
SENDERS_UNIQUE = "SendersUnique"
SENDER_CONFLICT = "SenderConflict"

# CredentialsResolved reasons that come from the OAuth2 token endpoint rather than from the Secret.
TOKEN_REFUSED = "TokenRequestRefused"
TOKEN_UNAVAILABLE = "TokenEndpointUnavailable"
TOKEN_REASONS = (TOKEN_REFUSED, TOKEN_UNAVAILABLE)

_MAX_MESSAGE = 512


@dataclass(frozen=True)
class GatewayHealth:
    """One gateway's view of an account's upstream (``GET /v1/status``): ``healthy`` is None until checked."""

    gateway: str
    healthy: bool | None
    last_error: str | None = None


@dataclass(frozen=True)
class SenderConflict:
    """A sender pattern of this account that another account lists too (reported by the gateways)."""

    pattern: str
    accounts: tuple[str, ...] = ()
    """The first other accounts (namespace/name, sorted) reported with the same pattern; empty if none is known yet."""
    more: int = 0
    """How many other accounts list it beyond ``accounts`` (a manifest copied a thousand times names a few)."""


SHOWN_CONFLICTING_ACCOUNTS = 5  # other accounts named per pattern in a status; the rest are counted


def conflict_index(reports: Iterable[GatewayReport | None]) -> dict[str, tuple[str, ...]]:
    """Every account the gateways report with a conflicting pattern, by casefolded pattern, sorted: built once
    per round of status writes, so each account's conflicts cost its own patterns, not a scan of every
    report (10,000 accounts listing one pattern made each status round quadratic: seconds of a blocked loop)."""
    claimants: dict[str, set[str]] = {}
    for report in reports:
        for account, found in (report.conflicting if report is not None else {}).items():
            for pattern in found.sender_conflicts:
                claimants.setdefault(pattern.casefold(), set()).add(account)
    return {folded: tuple(sorted(accounts)) for folded, accounts in claimants.items()}


def sender_conflicts(
    key: str, reports: Iterable[GatewayReport | None], index: Mapping[str, tuple[str, ...]]
) -> list[SenderConflict]:
    """The patterns any gateway reports as conflicting for ``key`` (as ``key`` spells them), each with the
    other accounts reported with the same pattern (a gateway lists a conflict under every account involved)."""
    own: dict[str, str] = {}
    for report in reports:
        found = report.conflicting.get(key) if report is not None else None
        for pattern in found.sender_conflicts if found is not None else ():
            own.setdefault(pattern.casefold(), pattern)
    conflicts = []
    for folded, text in sorted(own.items()):
        claimants = index.get(folded, ())
        shown = tuple(itertools.islice((account for account in claimants if account != key), SHOWN_CONFLICTING_ACCOUNTS))
        conflicts.append(SenderConflict(text, shown, max(0, len(claimants) - 1 - len(shown))))
    return conflicts


@dataclass(frozen=True)
class StatusInputs:
    """Everything the status is made of."""

    generation: int | None
    suspended: bool = False
    problem: CredentialProblem | None = None
    pushed_generation: int | None = None
    """Generation of the configuration the gateways should serve; None when nothing could be pushed yet."""
    synced: int = 0
    total: int = 0
    health: Sequence[GatewayHealth] = ()
    rejected: Sequence[tuple[str, str]] = ()
    """(gateway, its reason) for gateways that refused the configuration as invalid."""
    effective: EffectiveLimits = field(default_factory=EffectiveLimits)
    sender_conflicts: Sequence[SenderConflict] = ()
    delivery: DeliveryStatus | None = None
    """Queued-message counts as published by ``queuestatus`` (already throttled); None: no block."""


def build_status(inputs: StatusInputs, previous: Sequence[Condition], now: datetime) -> SmtpAccountStatus:
    """The status for ``inputs``; ``previous`` conditions keep their transition times when unchanged."""
    earlier = {condition.type: condition for condition in previous}
    credentials = _credentials(inputs)
    synced = _synced(inputs)
    upstream = _upstream(inputs)
    ready = _ready(inputs, credentials, synced, upstream)
    senders = _senders(inputs)
    conditions = [
        _condition(kind, status, reason, message, inputs.generation, earlier.get(kind), now)
        for kind, (status, reason, message) in (
            (READY, ready),
            (CREDENTIALS_RESOLVED, credentials),
            (SYNCED, synced),
            (UPSTREAM_HEALTHY, upstream),
            (SENDERS_UNIQUE, senders),
        )
    ]
    return SmtpAccountStatus(
        observed_generation=inputs.generation,
        conditions=conditions,
        gateways=GatewaySync(synced=inputs.synced, total=inputs.total),
        effective=inputs.effective,
        delivery=inputs.delivery,
    )


_Verdict = tuple[ConditionStatus, str, str]


def _credentials(inputs: StatusInputs) -> _Verdict:
    if inputs.problem is not None and inputs.problem.reason in TOKEN_REASONS:
        return "False", inputs.problem.reason, inputs.problem.message + "; gateways keep the current token until it expires"
    if inputs.problem is not None:
        return "False", inputs.problem.reason, inputs.problem.message + "; gateways keep the last good configuration"
    return "True", "Resolved", "credentials resolved"


def _synced(inputs: StatusInputs) -> _Verdict:
    if inputs.total == 0:
        return "False", "NoGateways", "no gateway pod is running"
    if inputs.pushed_generation is None:
        return "False", "NotPushed", "nothing to push until the credentials resolve"
    message = f"{inputs.synced} of {inputs.total} gateways serve generation {inputs.pushed_generation}"
    if inputs.rejected:
        gateway, reason = inputs.rejected[0]
        return "False", "Rejected", f"{message}; gateway {gateway} refused it: {reason}"
    if inputs.synced >= inputs.total:
        return "True", "Synced", message
    return "False", "Syncing", message


def _upstream(inputs: StatusInputs) -> _Verdict:
    failing = [health for health in inputs.health if health.healthy is False]
    if failing:
        first = failing[0]
        detail = f"{first.gateway}: {first.last_error or 'upstream check failed'}"
        return "False", "UpstreamError", f"{len(failing)} gateway(s) report errors; {detail}"
    healthy = sum(1 for health in inputs.health if health.healthy)
    if healthy:
        return "True", "Healthy", f"{healthy} gateway(s) report the upstream healthy"
    return "Unknown", "NotChecked", "no gateway has talked to the upstream yet"


def _senders(inputs: StatusInputs) -> _Verdict:
    """A pattern two accounts claim cannot route (the gateways answer 451 for it); sending by
    account name still works, so this is its own condition and leaves ``Ready`` alone."""
    if not inputs.sender_conflicts:
        return "True", "Unique", "no other account lists these senders"
    parts = []
    for conflict in inputs.sender_conflicts:
        more = f" and {conflict.more} more" if conflict.more else ""
        others = f" (also listed by {', '.join(conflict.accounts)}{more})" if conflict.accounts else ""
        parts.append(f"{conflict.pattern}{others}")
    message = (
        f"sender pattern(s) claimed by more than one account: {'; '.join(parts)}; "
        "messages routed by sender to them are refused until only one account lists each"
    )
    return "False", SENDER_CONFLICT, message


def sender_conflict_event(previous: Sequence[Condition], current: Sequence[Condition]) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) to post when ``SendersUnique`` turns False, names other
    patterns while False, or turns True again; None when nothing about it changed."""
    before = next((c for c in previous if c.type == SENDERS_UNIQUE), None)
    after = next((c for c in current if c.type == SENDERS_UNIQUE), None)
    if after is None:
        return None
    if after.status == "False" and (before is None or before.status != "False" or before.message != after.message):
        return "Warning", SENDER_CONFLICT, after.message
    if after.status == "True" and before is not None and before.status == "False":
        return "Normal", "SenderConflictResolved", "no other account lists these senders any more"
    return None


def token_event(previous: Sequence[Condition], current: Sequence[Condition]) -> tuple[str, str, str] | None:
    """The Event to post when the token endpoint starts refusing (or says something new), and when it issues again.

    Token requests run in the background, outside any handler, so their
    Events come from the status, like ``sender_conflict_event``.
    """
    before = next((c for c in previous if c.type == CREDENTIALS_RESOLVED), None)
    after = next((c for c in current if c.type == CREDENTIALS_RESOLVED), None)
    if after is None:
        return None
    if after.reason in TOKEN_REASONS and (before is None or (before.reason, before.message) != (after.reason, after.message)):
        return "Warning", after.reason, after.message
    if after.status == "True" and before is not None and before.reason in TOKEN_REASONS:
        return "Normal", "TokenIssued", "the token endpoint issues access tokens again"
    return None


def _ready(inputs: StatusInputs, credentials: _Verdict, synced: _Verdict, upstream: _Verdict) -> _Verdict:
    if inputs.suspended:
        return "False", "Suspended", "spec.suspend is set: gateways answer 503"
    if credentials[0] != "True":
        return "False", "CredentialsNotResolved", credentials[2]
    if synced[0] != "True":
        return "False", synced[1], synced[2]
    if upstream[0] == "False":
        return "False", "UpstreamUnhealthy", upstream[2]
    return "True", "Ready", "served by every gateway"


def _condition(
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    earlier: Condition | None,
    now: datetime,
) -> Condition:
    if earlier is not None and earlier.status == status and earlier.last_transition_time is not None:
        since = earlier.last_transition_time
    else:
        since = now.replace(microsecond=0)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def status_body(status: SmtpAccountStatus) -> dict:
    """The JSON the status subresource receives (camelCase, RFC 3339 times, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_patch(status: SmtpAccountStatus, previous: SmtpAccountStatus | None) -> dict:
    """``status_body`` as a merge patch over ``previous``: a key it no longer has, at any depth, is sent as null.

    A merge patch (RFC 7396) leaves keys it does not mention alone, so without the null a field
    that goes away would stay in the object for good: ``delivery.oldestMessageTime`` once the
    queue is drained, the whole ``delivery`` once no gateway runs a queue.
    """
    body = status_body(status)
    return _with_removals(status_body(previous), body) if previous is not None else body


def _with_removals(before: dict, after: dict) -> dict:
    patch = dict(after)
    for key, value in before.items():
        if key not in after:
            patch[key] = None
        elif isinstance(value, dict) and isinstance(after[key], dict):
            patch[key] = _with_removals(value, after[key])
    return patch
