"""The kopf handlers with the Secret cache, against an in-process engine: waiting for the listing, re-resolving on events."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, cast

import kopf
import pytest

from mailgate.operator import handlers
from mailgate.operator.handlers import reconcile, secret_changed
from mailgate.operator.secrets import SecretCache
from tests.k8s.operator import test_engine
from tests.k8s.operator.test_engine import Cluster, body, until

cluster = test_engine.cluster  # the fixture: an Engine pushing to in-process gateways

WAITING = "SmtpAccount handlers wait for the start-up listing of Secrets"


def data(**values: str) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


def as_body(raw: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, raw))


def memo(cluster: Cluster, secrets: SecretCache) -> kopf.Memo:
    return kopf.Memo(engine=cluster.engine, metrics=cluster.metrics, secrets=secrets)


def secret_reconciles(cluster: Cluster) -> float:
    value = cluster.metrics.registry.get_sample_value(
        "mailgate_operator_reconciles_total", {"trigger": "secret", "result": "ok"}
    )
    return value or 0.0


async def test_an_account_handler_waits_for_the_listing_rather_than_report_a_listed_secret_missing(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.operator.secrets")
    secrets = SecretCache()
    handler = asyncio.create_task(
        reconcile(body=as_body(body("early")), reason="create", memo=memo(cluster, secrets))
    )
    await until(lambda: WAITING in caplog.text or handler.done(), "the handler to wait for the listing")
    assert not handler.done(), "the handler resolved credentials before the Secrets were listed"
    assert cluster.engine.status_inputs("shop/early") is None

    secrets.add_listed("shop", "creds", data(username="app", password="pw"))
    secrets.mark_filled()
    await handler
    inputs = cluster.engine.status_inputs("shop/early")
    assert inputs is not None and inputs.problem is None and inputs.pushed_generation == 1


async def test_an_account_handler_gives_up_waiting_with_a_retry(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "SECRETS_WAIT_SECONDS", 0.01)
    with pytest.raises(kopf.TemporaryError, match="listing of Secrets is not done yet"):
        await reconcile(body=as_body(body("early")), reason="create", memo=memo(cluster, SecretCache()))
    assert cluster.engine.status_inputs("shop/early") is None


async def test_a_secret_event_re_resolves_the_accounts_only_when_the_values_they_read_change(cluster: Cluster) -> None:
    secrets = SecretCache()
    secrets.add_listed("shop", "creds", data(username="app", password="pw"))
    secrets.mark_filled()
    await reconcile(body=as_body(body("mail")), reason="create", memo=memo(cluster, secrets))

    async def event(kind: str | None, **values: str) -> None:
        secret = as_body({"metadata": {"namespace": "shop", "name": "creds"}, "data": data(**values)})
        await secret_changed(namespace="shop", name="creds", type=kind, body=secret, memo=memo(cluster, secrets))

    await event(None, username="app", password="pw")  # kopf's own listing, same values
    await event("MODIFIED", username="app", password="pw", note="an irrelevant key")
    assert secret_reconciles(cluster) == 0
    await event("MODIFIED", username="app", password="rotated")
    assert secret_reconciles(cluster) == 1
    assert secrets.lookup("shop", "creds") == {"username": "app", "password": "rotated"}
    await event(None, username="app", password="rotated-while-the-watch-was-down")
    assert secret_reconciles(cluster) == 2
