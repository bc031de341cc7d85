"""Durable delivery through the HTTP door: 202 after the commit, delivery with retries, the status API.

A real gateway with a SQLite queue in the test's directory, real aiosmtpd
upstreams; the retry policy is shortened so deferrals come back in
fractions of a second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
from aiohttp import web

from mailgate.queue.retry import RetryPolicy
from mailgate.relay.outbox import OutboxOptions
from tests.gateway.conftest import SENDER, GatewayFactory, GatewayHandle, ServiceAccountTokens, account, message
from tests.smtp_servers import Upstream

FAST = RetryPolicy(first_delay=0.2, max_delay=0.4, throttle_delay=0.2, throttle_max_delay=0.4, busy_delay=0.1)
QUEUED: dict[str, Any] = {"delivery": {"mode": "queue"}}


def queue_options(tmp_path: Path, **overrides: Any) -> OutboxOptions:
    values: dict[str, Any] = {"url": f"sqlite:///{tmp_path}/queue.db", "owner": "gw-test", "policy": FAST}
    values.update(overrides)
    return OutboxOptions(**values)


async def get_json(gw: GatewayHandle, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with gw.http.get(gw.url + path, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def state_of(gw: GatewayHandle, queue_id: str) -> str:
    status, body = await get_json(gw, f"/v1/messages/{queue_id}")
    assert status == 200, body
    return str(body["state"])


async def post(
    gw: GatewayHandle, payload: dict[str, Any], *, headers: dict[str, str] | None = None, key: str = "shop/billing"
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with gw.http.post(f"{gw.url}/v1/accounts/{key}/messages", json=payload, headers=headers or {}) as response:
        return response.status, await response.json(content_type=None), response


@pytest.fixture
async def qgw(gateway_factory: GatewayFactory, tmp_path: Path) -> GatewayHandle:
    return await gateway_factory(queue=queue_options(tmp_path))


async def test_a_queued_account_answers_202_after_the_commit_then_delivers_once(qgw: GatewayHandle, upstream: Upstream) -> None:
    await qgw.configure(account(upstream, **QUEUED))
    status, body, response = await post(qgw, message(to=["a@example.org", "b@example.org"], subject="queued"))
    assert status == 202, body
    queue_id = body["id"]
    assert response.headers["Location"] == f"/v1/messages/{queue_id}"
    assert (
        body["state"] == "queued"
        and body["messageId"].startswith("<")
        and body["recipients"] == ["a@example.org", "b@example.org"]
    )
    await until(lambda: _is(qgw, queue_id, "sent"))
    status, shown = await get_json(qgw, response.headers["Location"])
    assert status == 200
    assert shown["account"] == "shop/billing" and shown["from"] == SENDER and shown["messageId"] == body["messageId"]
    assert [(r["address"], r["state"], r["reply"]["code"]) for r in shown["recipients"]] == [
        ("a@example.org", "sent", 250),
        ("b@example.org", "sent", 250),
    ]
    assert shown["finishedAt"] is not None and shown["nextAttemptAt"] is None and shown["attempts"] == 1
    assert len(upstream.messages) == 1 and b"Subject: queued" in upstream.messages[0].data


async def _is(gw: GatewayHandle, queue_id: str, state: str) -> bool:
    return await state_of(gw, queue_id) == state


async def test_prefer_respond_async_queues_on_a_sync_account_and_says_so(qgw: GatewayHandle, upstream: Upstream) -> None:
    await qgw.configure(account(upstream))
    status, body, response = await post(qgw, message(), headers={"Prefer": "wait=5, Respond-Async"})
    assert status == 202 and response.headers["Preference-Applied"] == "respond-async"
    await until(lambda: _is(qgw, body["id"], "sent"))
    status, body, response = await post(qgw, message())  # no preference: the synchronous verdict, as before
    assert status == 200 and body["upstream"]["code"] == 250 and "Preference-Applied" not in response.headers
    assert len(upstream.messages) == 2


async def test_what_can_be_refused_now_is_refused_now_and_nothing_is_kept(qgw: GatewayHandle, upstream: Upstream) -> None:
    await qgw.configure(account(upstream, senders=["app@shop.example"], maxMessageBytes=2048, **QUEUED))
    status, body, _ = await post(qgw, message(**{"from": "ceo@shop.example"}))
    assert (status, body["type"]) == (403, "https://mailgate.dev/problems/sender-not-allowed")
    status, body, _ = await post(qgw, message(text="x" * 4096))
    assert (status, body["type"]) == (413, "https://mailgate.dev/problems/message-too-large")
    status, body, _ = await post(qgw, message(to=[]))
    assert status == 400
    status, listing = await get_json(qgw, "/v1/accounts/shop/billing/messages")
    assert status == 200 and listing == {"items": [], "next": None}
    assert upstream.messages == []


async def test_an_unreachable_upstream_defers_and_the_message_goes_out_once_it_is_back(
    qgw: GatewayHandle, upstream: Upstream, unused_tcp_port: int
) -> None:
    await qgw.configure(account(upstream, port=unused_tcp_port, **QUEUED))
    status, body, _ = await post(qgw, message())
    assert status == 202
    queue_id = body["id"]
    await until(lambda: _deferred_twice(qgw, queue_id))
    _, shown = await get_json(qgw, f"/v1/messages/{queue_id}")
    assert shown["lastReply"]["code"] == 451 and "unreachable" in shown["lastReply"]["message"]
    assert shown["nextAttemptAt"] is not None and shown["recipients"][0]["state"] == "pending"
    await qgw.configure(account(upstream, **QUEUED))  # the upstream is reachable again
    await until(lambda: _is(qgw, queue_id, "sent"))
    assert len(upstream.messages) == 1


async def _deferred_twice(gw: GatewayHandle, queue_id: str) -> bool:
    _, shown = await get_json(gw, f"/v1/messages/{queue_id}")
    return bool(shown["state"] == "deferred" and shown["attempts"] >= 2)


async def test_one_idempotency_key_is_one_message(qgw: GatewayHandle, upstream: Upstream) -> None:
    await qgw.configure(account(upstream, **QUEUED))
    headers = {"Idempotency-Key": "order-4711"}
    results = await asyncio.gather(*(post(qgw, message(), headers=headers) for _ in range(5)))
    ids = {body["id"] for status, body, _ in results if status == 202}
    assert len(ids) == 1 and all(status == 202 for status, _, _ in results)
    (queue_id,) = ids
    await until(lambda: _is(qgw, queue_id, "sent"))
    status, body, _ = await post(qgw, message(), headers=headers)  # after delivery, too
    assert (status, body["id"]) == (202, queue_id)
    await asyncio.sleep(0.3)
    assert len(upstream.messages) == 1


async def test_cancel_a_waiting_message_and_not_a_finished_one(
    qgw: GatewayHandle, upstream: Upstream, unused_tcp_port: int
) -> None:
    await qgw.configure(account(upstream, port=unused_tcp_port, **QUEUED))
    _, body, _ = await post(qgw, message())
    queue_id = body["id"]
    await until(lambda: _is(qgw, queue_id, "deferred"))
    async with qgw.http.delete(f"{qgw.url}/v1/messages/{queue_id}") as response:
        assert response.status == 204
    assert await state_of(qgw, queue_id) == "cancelled"
    async with qgw.http.delete(f"{qgw.url}/v1/messages/{queue_id}") as response:
        problem = await response.json(content_type=None)
        assert response.status == 409 and problem["type"].endswith("/not-cancellable") and "cancelled" in problem["detail"]
    await qgw.configure(account(upstream, **QUEUED))
    await asyncio.sleep(0.5)
    assert upstream.messages == [] and await state_of(qgw, queue_id) == "cancelled"


async def test_listing_pages_and_filters_by_state(qgw: GatewayHandle, upstream: Upstream, unused_tcp_port: int) -> None:
    await qgw.configure(account(upstream, port=unused_tcp_port, **QUEUED))
    ids = [(await post(qgw, message(subject=f"n{n}")))[1]["id"] for n in range(5)]
    seen: list[str] = []
    after = ""
    while True:
        status, page = await get_json(qgw, f"/v1/accounts/shop/billing/messages?limit=2{after}")
        assert status == 200 and len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    assert seen == ids
    status, page = await get_json(qgw, "/v1/accounts/shop/billing/messages?state=sent")
    assert (status, page["items"]) == (200, [])
    for query, field in (("state=lost", "state"), ("limit=0", "limit"), ("limit=x", "limit"), ("after=zz", "after")):
        status, problem = await get_json(qgw, f"/v1/accounts/shop/billing/messages?{query}")
        assert status == 400 and problem["errors"][0]["field"] == field, query


async def test_only_callers_allowed_on_the_account_see_its_messages(
    gateway_factory: GatewayFactory, tmp_path: Path, upstream: Upstream, unused_tcp_port: int
) -> None:
    tokens = ServiceAccountTokens({"owner": ("shop", "checkout"), "stranger": ("other", "app")})
    gw = await gateway_factory(tokens, queue=queue_options(tmp_path))
    access = {"serviceAccounts": ["shop/checkout"]}
    await gw.configure(account(upstream, port=unused_tcp_port, access=access, **QUEUED))
    status, body, _ = await post(gw, message(), headers={"Authorization": "Bearer owner"})
    assert status == 202
    path = f"/v1/messages/{body['id']}"
    assert (await get_json(gw, path, headers={"Authorization": "Bearer owner"}))[0] == 200
    status, problem = await get_json(gw, path, headers={"Authorization": "Bearer stranger"})
    assert status == 404 and body["id"] in problem["detail"]
    assert (await get_json(gw, path))[0] == 401
    async with gw.http.delete(gw.url + path, headers={"Authorization": "Bearer stranger"}) as response:
        assert response.status == 404
    listing = "/v1/accounts/shop/billing/messages"
    assert (await get_json(gw, listing, headers={"Authorization": "Bearer stranger"}))[0] == 403
    assert (await get_json(gw, "/v1/accounts/shop/nope/messages", headers={"Authorization": "Bearer owner"}))[0] == 404
    assert (await get_json(gw, "/v1/messages/" + "0" * 32, headers={"Authorization": "Bearer owner"}))[0] == 404


async def test_without_a_queue_a_queued_account_is_refused_and_prefer_is_ignored(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, **QUEUED), account(upstream, name="plain"))
    status, body, response = await post(gw, message())
    assert (status, body["type"], response.headers["Retry-After"]) == (
        503,
        "https://mailgate.dev/problems/queue-unavailable",
        "30",
    )
    status, body, response = await post(gw, message(), headers={"Prefer": "respond-async"}, key="shop/plain")
    assert status == 200 and "Preference-Applied" not in response.headers
    status, _ = await get_json(gw, "/v1/messages/" + "0" * 32)
    assert status == 404


async def test_queue_metrics_count_what_happened(qgw: GatewayHandle, upstream: Upstream) -> None:
    await qgw.configure(account(upstream, **QUEUED))
    _, body, _ = await post(qgw, message())
    await until(lambda: _is(qgw, body["id"], "sent"))
    async with qgw.http.get(qgw.url + "/metrics") as response:
        text = await response.text()
    assert 'mailgate_queue_enqueued_total{account="shop/billing"} 1.0' in text
    assert 'mailgate_queue_attempts_total{account="shop/billing",outcome="delivered"} 1.0' in text
    assert 'mailgate_queue_finished_total{account="shop/billing",state="sent"} 1.0' in text
    assert 'mailgate_messages_total{account="shop/billing",outcome="queued"} 1.0' in text


async def test_webhook_events_are_signed_and_follow_the_message(
    gateway_factory: GatewayFactory, tmp_path: Path, upstream: Upstream, unused_tcp_port: int
) -> None:
    """deferred (the upstream is down), then sent: each a Standard Webhooks event the reference library verifies."""
    key = "whsec_" + base64.b64encode(b"k" * 32).decode()
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/mail", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        qgw = await gateway_factory(queue=queue_options(tmp_path))
        delivery = {"mode": "queue", "webhook": {"url": f"http://127.0.0.1:{port}/hooks/mail", "secretRef": {"name": "hook"}}}

        def configured(upstream_port: int) -> dict[str, Any]:
            body = account(upstream, port=upstream_port, delivery=delivery)
            body.setdefault("credentials", {})["webhookSecret"] = key
            return body

        await qgw.configure(configured(unused_tcp_port))
        _, body, _ = await post(qgw, message())
        await until(lambda: _has(received, "message.deferred"))
        await qgw.configure(configured(upstream.port))
        await until(lambda: _has(received, "message.sent"))
    finally:
        await runner.cleanup()
    verifier = standardwebhooks.Webhook(key)
    events = [verifier.verify(raw, headers) for headers, raw in received]
    assert all(event["data"]["id"] == body["id"] for event in events)
    assert events[0]["type"] == "message.deferred" and events[0]["data"]["state"] == "deferred"
    assert events[-1]["type"] == "message.sent" and events[-1]["data"]["recipients"][0]["state"] == "sent"
    assert len({headers["webhook-id"] for headers, _ in received}) == len(received)  # one id per event
    async with qgw.http.get(qgw.url + "/metrics") as response:
        assert 'mailgate_webhook_deliveries_total{account="shop/billing",type="message.sent"} 1.0' in await response.text()


async def _has(received: list[tuple[dict[str, str], bytes]], event_type: str) -> bool:
    return any(json.loads(raw)["type"] == event_type for _, raw in received)


SLOW = RetryPolicy(first_delay=300.0, max_delay=600.0, throttle_delay=60.0, throttle_max_delay=60.0, busy_delay=0.1)


async def test_new_credentials_send_the_deferred_messages_now(
    gateway_factory: GatewayFactory, tmp_path: Path, upstream_factory: Any
) -> None:
    """The password was wrong (every attempt refused, the next one in 150 to 300 s); the Secret is fixed: what waits
    goes out at once, not after its backoff."""
    gw = await gateway_factory(queue=queue_options(tmp_path, policy=SLOW))
    locked = upstream_factory(users={"relay": "right-password"})
    await gw.configure(account(locked, password="wrong-password", **QUEUED))
    ids = [(await post(gw, message(subject=f"n{n}")))[1]["id"] for n in range(3)]
    for queue_id in ids:
        await until(partial(_is, gw, queue_id, "deferred"))
    await gw.configure(account(locked, password="wrong-password", pool={"maxConnections": 3}, **QUEUED))  # a limit: no
    await asyncio.sleep(0.3)
    assert [await state_of(gw, i) for i in ids] == ["deferred"] * 3

    await gw.configure(account(locked, **QUEUED))
    for queue_id in ids:
        await until(partial(_is, gw, queue_id, "sent"), timeout=10)
    assert len(locked.messages) == 3


async def test_retry_deferred_messages_of_an_account_on_request(
    gateway_factory: GatewayFactory, tmp_path: Path, upstream: Upstream
) -> None:
    """``POST .../messages/retry``, Postfix's ``postqueue -f`` for one account: after an outage on the upstream's
    side, which the gateway cannot see end."""
    tokens = ServiceAccountTokens({"billing-token": ("shop", "billing"), "other-token": ("shop", "other")})
    gw = await gateway_factory(tokens, queue=queue_options(tmp_path, policy=SLOW))
    await gw.configure(account(upstream, access={"serviceAccounts": ["shop/billing"]}, **QUEUED))
    upstream.rcpt_replies["rcpt@example.org"] = "451 4.3.0 mailbox temporarily unavailable"
    auth = {"Authorization": "Bearer billing-token"}
    _, body, _ = await post(gw, message(to=["rcpt@example.org"]), headers=auth)
    queue_id = body["id"]
    await until(lambda: _visible_state(gw, queue_id, auth, "deferred"))
    del upstream.rcpt_replies["rcpt@example.org"]

    retry = f"{gw.url}/v1/accounts/shop/billing/messages/retry"
    async with gw.http.post(retry, headers={"Authorization": "Bearer other-token"}) as response:
        assert response.status == 403, await response.text()
    async with gw.http.post(f"{gw.url}/v1/accounts/shop/nobody/messages/retry", headers=auth) as response:
        assert response.status == 404
    async with gw.http.post(retry, headers=auth) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"retried": 1}
    await until(lambda: _visible_state(gw, queue_id, auth, "sent"), timeout=10)
    async with gw.http.post(retry, headers=auth) as response:
        assert await response.json() == {"retried": 0}
    assert len(upstream.messages) == 1


async def _visible_state(gw: GatewayHandle, queue_id: str, headers: dict[str, str], state: str) -> bool:
    status, body = await get_json(gw, f"/v1/messages/{queue_id}", headers=headers)
    assert status == 200, body
    return bool(body["state"] == state)
