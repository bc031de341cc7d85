"""The kopf layer: handlers only feed the engine and report; the decisions live elsewhere.

- SmtpAccount create/update(spec)/resume: resolve and push; delete: remove
  from every gateway, then let kopf release the finalizer. Status-only and
  metadata-only changes call nothing (``field="spec"``).
- Secrets: ``secret_values`` indexes the keys the operator reads of every
  Secret it may see; an event on one re-resolves exactly the accounts that
  reference it (the engine keeps that reverse map).
- Events on the SmtpAccount when its credentials break or recover; messages
  name Secrets and keys, never values.

The registry is built per run (``build_registry``), not kopf's global one, so
an embedding process or a test gets exactly these handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from ..spec import GROUP, PLURAL, VERSION
from .credentials import SecretLookup, SecretValues, secret_values
from .engine import CredentialChange, Engine, InvalidSpec
from .login import BoundedLogin
from .metrics import OperatorMetrics

FINALIZER = "mailgate.dev/operator"
ANNOTATION_PREFIX = "operator.mailgate.dev"
DELETE_WAIT_SECONDS = 20.0
DELETE_RETRY_SECONDS = 5.0


def operator_settings() -> kopf.OperatorSettings:
    """kopf settings: our finalizer, bookkeeping in annotations (the status schema is ours), quiet Events."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
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
    kopf.index("v1", "secrets", id="secret_values", registry=registry)(_handler(index_secret))
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(_handler(reconcile))
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(_handler(reconcile))
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)(_handler(reconcile))
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)(_handler(remove))
    kopf.on.event("v1", "secrets", registry=registry)(_handler(secret_changed))
    kopf.on.cleanup(registry=registry)(_handler(cleanup))
    return registry


def _handler(fn: Callable[..., Any]) -> Any:
    """kopf's handler protocols spell out every keyword; ours take what they use plus the Secret index."""
    return fn


def index_secret(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], SecretValues]:
    return {(namespace, name): secret_values(body.get("data"))}


def lookup_in(index: kopf.Index) -> SecretLookup:
    def lookup(namespace: str, name: str) -> SecretValues | None:
        store = index.get((namespace, name))
        return next(iter(store), None) if store else None

    return lookup


async def reconcile(body: kopf.Body, reason: str, memo: kopf.Memo, secret_values: kopf.Index, **_: Any) -> None:
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    try:
        change = await engine.upsert(body, lookup_in(secret_values))
    except InvalidSpec as error:
        metrics.reconciles.labels(trigger=reason, result="invalid").inc()
        raise kopf.PermanentError(str(error)) from None
    _announce(body, change)
    metrics.reconciles.labels(trigger=reason, result="ok").inc()


async def remove(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    key = f"{namespace}/{name}"
    engine.start_deleting(key)
    remaining = await engine.wait_removed(key, DELETE_WAIT_SECONDS)
    if remaining:
        metrics.reconciles.labels(trigger="delete", result="waiting").inc()
        raise kopf.TemporaryError(f"still served by gateway(s) {', '.join(remaining)}", delay=DELETE_RETRY_SECONDS)
    engine.forget(key)
    metrics.reconciles.labels(trigger="delete", result="ok").inc()


async def secret_changed(
    namespace: str, name: str, type: str | None, memo: kopf.Memo, secret_values: kopf.Index, **_: Any
) -> None:
    """Re-resolve the accounts that read this Secret (start-up listings are left to the resume handlers)."""
    if type is None:
        return
    engine: Engine = memo.engine
    metrics: OperatorMetrics = memo.metrics
    for key in engine.referencing(namespace, name):
        change = await engine.refresh_credentials(key, lookup_in(secret_values))
        ref = engine.object_ref(key)
        if change is not None and ref is not None:
            _announce(ref, change)
            metrics.reconciles.labels(trigger="secret", result="ok").inc()


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the push loops with kopf, not after it: kopf waits for stray tasks before giving up on them."""
    await memo.shutdown()


def _announce(obj: Any, change: CredentialChange) -> None:
    """An Event when the credential problem appears, changes or goes away."""
    if change.after is not None and change.after != change.before:
        kopf.event(obj, type="Warning", reason=change.after.reason, message=change.after.message)
    elif change.after is None and change.before is not None:
        kopf.event(obj, type="Normal", reason="CredentialsResolved", message="credentials resolved again")
