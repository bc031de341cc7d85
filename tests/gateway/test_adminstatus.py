"""The admin status (``GET /v1/status``, mailgate/adminstatus.py) as a real gateway writes it and the operator reads it."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mailgate.adminstatus import GatewayStatus, PoolStatus
from mailgate.operator.admin import AccountReport, AdminClient, GatewayUnreachable, parse_report
from mailgate.operator.plan import Hold, hold_of
from mailgate.operator.queuestatus import NOTHING_PENDING, QueueCounts
from mailgate.snapshot import AccountConfig, config_digest
from tests.gateway.conftest import ADMIN_TOKEN, GatewayHandle, account
from tests.smtp_servers import Upstream

CAMEL_CASE = re.compile(r"^[a-z][a-zA-Z0-9]*$")
MAPS = {"accounts", "closed"}
"""Fields whose keys are data, not field names: account keys (``shop/billing``) and close reasons
(``max_messages``, as the metric label ``reason`` spells them)."""


def field_names(node: Any) -> Iterator[str]:
    """Every object key in a JSON document that names a field (the keys of ``MAPS`` are data)."""
    if isinstance(node, list):
        for item in node:
            yield from field_names(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            if key in MAPS and isinstance(value, dict):
                for item in value.values():
                    yield from field_names(item)
            else:
                yield from field_names(value)


async def raw_status(gw: GatewayHandle) -> dict[str, Any]:
    response = await gw.admin("GET", "/v1/status")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_every_field_on_the_wire_is_camel_case(gw: GatewayHandle, upstream: Upstream) -> None:
    """Every object the status holds, filled in: a used pool (health check, a close by reason) and a forwarded account."""
    await gw.configure(
        account(upstream, pool={"maxMessagesPerConnection": 1}, rateLimit={"messagesPerMinute": 60}),
        account(upstream, name="forwarded", share={"maxConnections": 0, "peers": ["http://127.0.0.1:9"]}),
    )
    assert (await gw.send())[0] == 200
    body = await raw_status(gw)
    used = body["accounts"]["shop/billing"]
    assert used["pool"]["lastHealthCheck"] is not None and used["pool"]["closed"], used  # the nested objects are there
    assert body["accounts"]["shop/forwarded"]["pool"] is None
    names = set(field_names(body))
    assert not {name for name in names if not CAMEL_CASE.match(name)}, "snake_case (or other) field names on the wire"
    assert GatewayStatus.from_wire(body).model_dump(mode="json") == body  # every key is the model's, none left out
    assert set(gw.gateway.pool.stats()["shop/billing"]) == set(PoolStatus.model_fields)  # exactly what the pool reports


async def test_the_operator_reads_what_the_gateway_serves(gw: GatewayHandle, upstream: Upstream) -> None:
    """Through the operator's own client: digest and share of each account, health, sender conflicts."""
    payloads = [
        account(upstream, senders=["*@shop.example"], rateLimit={"messagesPerMinute": 600}, share={"maxConnections": 1}),
        account(upstream, name="other", senders=["*@shop.example"]),
        account(upstream, name="forwarded", share={"maxConnections": 0, "messagesPerMinute": 0, "peers": ["http://p:8080"]}),
    ]
    await gw.configure(*payloads, revision=41)
    assert (await gw.send())[0] == 200
    assert gw.gateway.admin_port is not None
    async with AdminClient(ADMIN_TOKEN, gw.gateway.admin_port) as client:
        report = await client.status("127.0.0.1")

    assert (report.revision, report.ready) == (41, True)
    configs = {config.key: config for config in map(AccountConfig.model_validate, payloads)}
    assert set(report.accounts) == set(configs)
    for key, config in configs.items():
        assert (report.accounts[key].digest, report.accounts[key].hold) == (config_digest(config), hold_of(config)), key
    assert report.accounts["shop/billing"] == AccountReport(
        digest=config_digest(configs["shop/billing"]),
        healthy=True,
        last_error=None,
        hold=Hold(1, 600),
        sender_conflicts=("*@shop.example",),
    )
    assert report.accounts["shop/other"].healthy is None  # never connected
    assert report.accounts["shop/forwarded"].hold == Hold(0, 0)
    assert set(report.conflicting) == {"shop/billing", "shop/other"}


PREVIOUS_GATEWAY_STATUS: dict[str, Any] = {
    "revision": 7,
    "ready": True,
    "accounts": {
        "shop/billing": {
            "digest": "d1",
            "generation": 2,
            "healthy": False,
            "lastError": "SMTPAuthenticationError: 535 5.7.8 bad credentials",
            "pool": {
                "upstream": "billing@smtp.example:587",
                "max_connections": 2,
                "idle": 0,
                "active": 0,
                "opening": 0,
                "closing": 0,
                "waiting": 0,
                "created": 3,
                "closed": {"max_messages": 3},
                "messages_sent": 3,
                "last_health_check": {"ok": False, "age_seconds": 1.5, "error": "535 5.7.8 bad credentials"},
                "last_error": "SMTPAuthenticationError: 535 5.7.8 bad credentials",
            },
            "forwardTo": [],
            "rateLimit": {"messagesPerMinute": 30},
            "suspended": False,
            "senderConflicts": [],
        },
        "shop/forwarded": {
            "digest": "d2",
            "generation": 1,
            "healthy": None,
            "lastError": None,
            "pool": None,
            "forwardTo": ["http://10.0.0.1:8080"],
            "rateLimit": {"messagesPerMinute": None},
            "suspended": False,
            "senderConflicts": [],
        },
    },
}
"""What a gateway of the previous release answered (admin_api.py before mailgate.adminstatus): snake_case pool keys."""


def test_a_gateway_of_the_previous_release_is_read_during_a_rolling_upgrade() -> None:
    snapshot = copy.deepcopy(PREVIOUS_GATEWAY_STATUS)
    report = parse_report(snapshot)
    assert snapshot == PREVIOUS_GATEWAY_STATUS  # the answer itself is left as it was
    assert report.accounts["shop/billing"] == AccountReport(
        digest="d1",
        healthy=False,
        last_error="SMTPAuthenticationError: 535 5.7.8 bad credentials",
        hold=Hold(2, 30),
        sender_conflicts=(),
    )
    assert report.accounts["shop/forwarded"].hold == Hold(0, None)
    # Only that one function reads snake_case: the model itself does not.
    with pytest.raises(ValidationError, match="maxConnections"):
        GatewayStatus.from_wire(PREVIOUS_GATEWAY_STATUS)


def test_queue_counts_are_read_apart_from_the_account_report() -> None:
    """Counters stay out of ``AccountReport`` (whose changes trigger status work); oldest to the second."""
    queue = {"queued": 2, "deferred": 1, "sending": 0, "oldestCreatedAt": "2025-03-01T10:00:05.734Z", "retrying": 1}
    zeros = {"queued": 0, "deferred": 0, "sending": 0, "oldestCreatedAt": None}
    report = parse_report(
        {
            "revision": 3,
            "ready": True,
            "accounts": {
                "shop/billing": {"digest": "d1", "queue": queue},
                "shop/quiet": {"digest": "d2", "queue": zeros},
                "shop/old": {"digest": "d3"},  # a gateway without a queue, or from before queues
            },
        }
    )
    oldest = datetime(2025, 3, 1, 10, 0, 5, tzinfo=UTC)
    assert report.queues == {"shop/billing": QueueCounts(2, 1, 0, oldest), "shop/quiet": NOTHING_PENDING, "shop/old": None}
    assert report.accounts["shop/billing"] == AccountReport(digest="d1", healthy=None, last_error=None, hold=None)


def test_a_newer_gateway_may_add_fields_and_leave_out_what_it_does_not_know() -> None:
    report = parse_report(
        {
            "revision": 3,
            "ready": True,
            "uptimeSeconds": 12,
            "accounts": {
                "shop/billing": {"digest": "d1", "mailbox": {"depth": 4}},
                "shop/other": {"digest": "d2", "pool": {**_pool(maxConnections=1), "lingering": 2}},
            },
        }
    )
    assert report.accounts["shop/billing"] == AccountReport(digest="d1", healthy=None, last_error=None, hold=None)
    assert report.accounts["shop/other"].hold == Hold(1, None)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"ready": True, "accounts": {}},  # no revision
        {"revision": 1, "ready": True, "accounts": {"shop/b": {"digest": "d", "senderConflicts": ["a@x.example", 7]}}},
        {"revision": 1, "ready": True, "accounts": {"shop/b": {"digest": "d", "pool": {"maxConnections": "two"}}}},
        {"revision": 1, "ready": True, "accounts": {"shop/b": {"digest": "d", "queue": {"queued": "two"}}}},
    ],
)
def test_an_answer_that_does_not_fit_the_model_is_an_error_naming_no_value(payload: Any) -> None:
    with pytest.raises(GatewayUnreachable, match="does not match the admin status model") as raised:
        parse_report(payload)
    assert "two" not in str(raised.value) and "a@x.example" not in str(raised.value)


def _pool(**fields: Any) -> dict[str, Any]:
    counters = dict.fromkeys(["idle", "active", "opening", "closing", "waiting", "created", "messagesSent"], 0)
    return {"upstream": "u@h:25", "closed": {}, "lastHealthCheck": None, "lastError": None, **counters, **fields}
