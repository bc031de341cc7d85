"""The kopf layer: handlers only feed the engine and report; the decisions live elsewhere.

- SmtpAccount create/update(spec): resolve and push; delete: remove from
  every gateway, then let kopf release the finalizer. Status-only and
  metadata-only changes call nothing (``field="spec"``). kopf's diff base is
  in memory (``bookkeeping``), so every account is new to a starting
  operator: create, not resume, handles it then.
- Secrets: the ``SecretCache`` (``memo.secrets``) holds the keys the
  operator reads of every Secret it may see, filled by a listing at start-up
  that account handlers wait for; an event updates it and, if the values
  changed, re-resolves exactly the accounts that reference the Secret (the
  engine keeps that reverse map). The periodic resync applies a Secret whose
  event was lost through the same code (``apply_secret``).
- Events on the SmtpAccount when its credentials break or recover; messages
  name Secrets and keys, never values.

The registry is built per run (``build_registry``), not kopf's global one, so
an embedding process or a test gets exactly these handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from ..spec import GROUP, PLURAL, VERSION
from .bookkeeping import RetryProgress, SpecDiffBase
from .engine import CredentialChange, Engine, InvalidSpec
from .login import BoundedLogin
from .metrics import OperatorMetrics
from .secrets import SecretCache

FINALIZER = "mailgate.dev/operator"
ANNOTATION_PREFIX = "operator.mailgate.dev"
DELETE_WAIT_SECONDS = 20.0
DELETE_RETRY_SECONDS = 5.0
SECRETS_WAIT_SECONDS = 60.0  # for the start-up listing of Secrets, before an account handler retries
SECRETS_RETRY_SECONDS = 5.0


def operator_settings(diffbase: SpecDiffBase) -> kopf.OperatorSettings:
    """kopf settings: our finalizer, no write per account for bookkeeping (``bookkeeping``), quiet Events.

    ``diffbase`` also goes to the memo: the delete handler drops the account from it.
    """
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = RetryProgress(prefix=ANNOTATION_PREFIX)  # the status schema is ours
    settings.persistence.diffbase_storage = diffbase
    settings.posting.level = logging.WARNING  # no Event per successful handler run
    # Resources and namespaces are resolved once at start-up (the CRD is installed first, namespaces are
    # listed by name): no cluster-wide watch of Namespaces and CRDs, which the chart's RBAC does not grant.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    return settings


def build_registry(login: BoundedLogin) -> kopf.OperatorRegistry:
    """``login`` makes kopf's apiserver session; its owner closes it once kopf has returned."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry, id="login")(login.login)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(_handler(reconcile))
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)(_handler(reconcile))
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)(_handler(remove))
    kopf.on.event("v1", "secrets", registry=registry)(_handler(secret_changed))
    kopf.on.cleanup(registry=registry)(_handler(cleanup))
    return registry


def _handler(fn: Callable[..., Any]) -> Any:
    """kopf's handler protocols spell out every keyword; ours take what they use."""
    return fn


async def reconcile(body: kopf.Body, reason: str, memo: kopf.Memo, **_: Any) -> None:
    """Resolve and push, once the Secrets are listed: before that, a missing Secret may only be not listed yet."""
    _announce(body, await apply_account(body, reason, memo))


async def apply_account(body: Any, reason: str, memo: kopf.Memo) -> CredentialChange:
    """What a reconcile does whoever asks (kopf's handlers, the resync); the caller posts ``credential_event``.

    Raises kopf's errors, which kopf turns into retries (``TemporaryError``) or
    a failed handler (``PermanentError``); the resync tries again next period.
    """
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    secrets: SecretCache = memo.secrets
    if not await secrets.wait_filled(SECRETS_WAIT_SECONDS):
        metrics.reconciles.labels(trigger=reason, result="waiting").inc()
        raise kopf.TemporaryError("the start-up listing of Secrets is not done yet", delay=SECRETS_RETRY_SECONDS)
    try:
        change = await engine.upsert(body, secrets.lookup)
    except InvalidSpec as error:
        metrics.reconciles.labels(trigger=reason, result="invalid").inc()
        raise kopf.PermanentError(str(error)) from None
    metrics.reconciles.labels(trigger=reason, result="ok").inc()
    return change


async def remove(namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    key = f"{namespace}/{name}"
    engine.start_deleting(key)
    remaining = await engine.wait_removed(key, DELETE_WAIT_SECONDS)
    if remaining:
        metrics.reconciles.labels(trigger="delete", result="waiting").inc()
        raise kopf.TemporaryError(f"still served by gateway(s) {', '.join(remaining)}", delay=DELETE_RETRY_SECONDS)
    engine.forget(key)
    diffbase: SpecDiffBase = memo.diffbase
    diffbase.forget(uid)
    metrics.reconciles.labels(trigger="delete", result="ok").inc()


async def secret_changed(
    namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Update the cache; if the values changed, re-resolve the accounts that read this Secret.

    kopf's own listings (``type`` None, at start-up and after a lost watch)
    update the cache too: they may be newer than the start-up listing.
    """
    engine: Engine = memo.engine
    for key, change in await apply_secret(namespace, name, None if type == "DELETED" else body, "secret", memo):
        ref = engine.object_ref(key)
        if ref is not None:
            _announce(ref, change)


async def apply_secret(
    namespace: str, name: str, body: Mapping[str, Any] | None, trigger: str, memo: kopf.Memo
) -> list[tuple[str, CredentialChange]]:
    """What a Secret event does whoever asks (the Secret handler, the resync); ``body`` None: the Secret is gone.

    Updates the cache (values and ``resourceVersion``); if the values changed,
    re-resolves the accounts that read the Secret: gateways get the new
    credentials, OAuth2 token keepers the new grant. Before the cache is
    filled no account has been resolved, so there is nothing to re-resolve.
    Returns each re-resolved account's credential change; the caller posts
    ``credential_event``.
    """
    secrets: SecretCache = memo.secrets
    if body is None:
        changed = secrets.remove(namespace, name)
    else:
        version = (body.get("metadata") or {}).get("resourceVersion")
        changed = secrets.update(namespace, name, body.get("data"), version)
    if not changed or not secrets.filled:
        return []
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    changes = []
    for key in engine.referencing(namespace, name):
        change = await engine.refresh_credentials(key, secrets.lookup)
        if change is not None:
            changes.append((key, change))
            metrics.reconciles.labels(trigger=trigger, result="ok").inc()
    return changes


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the push loops with kopf, not after it: kopf waits for stray tasks before giving up on them."""
    await memo.shutdown()


def credential_event(change: CredentialChange) -> tuple[str, str, str] | None:
    """The Event (type, reason, message) to post when the credential problem appears, changes or goes away."""
    if change.after is not None and change.after != change.before:
        return "Warning", change.after.reason, change.after.message
    if change.after is None and change.before is not None:
        return "Normal", "CredentialsResolved", "credentials resolved again"
    return None


def _announce(obj: Any, change: CredentialChange) -> None:
    """Post ``credential_event`` from inside a kopf handler."""
    event = credential_event(change)
    if event is not None:
        kopf.event(obj, type=event[0], reason=event[1], message=event[2])
