"""The send API end to end: real HTTP into a gateway, real aiosmtpd upstreams behind it.

Every status of the documented mapping is produced for real here, by an
upstream that answers 550 or 421, stalls, refuses AUTH or is not there.
"""

from __future__ import annotations

import asyncio
import base64
import email
import os
from email import policy
from typing import Any

from mailgate.gateway.problems import PROBLEM_TYPES, TYPE_BASE
from tests.gateway.conftest import GatewayFactory, GatewayHandle, ServiceAccountTokens, account, message
from tests.smtp_servers import StallServer, Upstream, _free_port


def assert_problem(status: int, body: dict[str, Any], response: Any, expected: int, slug: str) -> None:
    assert status == expected, body
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == TYPE_BASE + slug, body
    assert body["status"] == expected
    assert body["retryable"] in (True, False)
    assert body["requestId"] == response.headers["X-Request-Id"]
    assert PROBLEM_TYPES[slug].status == expected


def parsed(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


# --------------------------------------------------------------------------- success paths


async def test_json_message_is_relayed_and_answered(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    status, body, response = await gw.send(to=["Ann <ann@example.org>"], cc=["cc@example.org"], bcc=["hidden@example.org"])
    assert status == 200, body
    assert response.headers["X-Request-Id"]
    assert body["accepted"] == ["ann@example.org", "cc@example.org", "hidden@example.org"]
    assert body["rejected"] == []
    assert body["upstream"]["code"] == 250
    [received] = upstream.messages
    assert received.mail_from == "app@shop.example"
    assert received.rcpt_tos == ["ann@example.org", "cc@example.org", "hidden@example.org"]
    msg = parsed(received.data)
    assert msg["Message-ID"] == body["messageId"]
    assert msg["Subject"] == "Hello"
    assert msg["Bcc"] is None
    assert msg.get_content().strip() == "Hello from the tests."


async def test_attachments_round_trip_byte_exact(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    blobs = {"random.bin": os.urandom(70_000), "empty.txt": b"", "crlf.txt": b"a\r\nb\nc\r\x00\xff"}
    attachments = [
        {"filename": name, "contentType": "application/octet-stream", "content": base64.b64encode(data).decode()}
        for name, data in blobs.items()
    ]
    status, body, _ = await gw.send(html="<p>see attached</p>", attachments=attachments)
    assert status == 200, body
    msg = parsed(upstream.messages[0].data)
    got = {part.get_filename(): part.get_content() for part in msg.iter_attachments()}
    assert got == blobs


async def test_raw_message_with_envelope_from_headers(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    raw = b"From: App <app@shop.example>\nTo: one@example.org\nBcc: two@example.org\nSubject: raw\n\nraw body\n"
    status, body, _ = await gw.send_raw(raw)
    assert status == 200, body
    received = upstream.messages[0]
    assert received.rcpt_tos == ["one@example.org", "two@example.org"]
    assert b"Bcc" not in received.data
    assert parsed(received.data).get_content().rstrip() == "raw body"


async def test_raw_message_envelope_overridden_by_query(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    raw = b"From: app@shop.example\r\nTo: shown@example.org\r\nSubject: raw\r\n\r\nbody\r\n"
    params = [("from", "bounces@shop.example"), ("to", "a@example.org"), ("to", "b@example.org")]
    status, body, _ = await gw.send_raw(raw, params=params)
    assert status == 200, body
    received = upstream.messages[0]
    assert received.mail_from == "bounces@shop.example"
    assert received.rcpt_tos == ["a@example.org", "b@example.org"]


async def test_some_recipients_refused_is_still_sent(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.rcpt_replies["nobody@example.org"] = "550 5.1.1 no such user"
    await gw.configure(account(upstream))
    status, body, _ = await gw.send(to=["ok@example.org", "nobody@example.org"])
    assert status == 200, body
    assert body["accepted"] == ["ok@example.org"]
    assert body["rejected"] == [{"recipient": "nobody@example.org", "code": 550, "message": "5.1.1 no such user"}]


async def test_starttls_upstream_with_login(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory(tls="starttls", users={"billing": "s3cret"})
    await gw.configure(account(up))
    status, body, _ = await gw.send()
    assert status == 200, body
    assert up.messages[0].login == "billing"


# --------------------------------------------------------------------------- 4xx: the request


async def test_invalid_body_names_the_field(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    status, body, response = await gw.send(message(to=["ok@example.org", "not an address"]))
    assert_problem(status, body, response, 400, "invalid-request")
    assert body["errors"][0]["field"] == "to[1]"
    status, body, response = await gw.send_raw(b"{not json", content_type="application/json")
    assert_problem(status, body, response, 400, "invalid-request")
    assert upstream.messages == []


async def test_header_injection_is_rejected(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    attempts = [
        message(subject="Hi\r\nBcc: victim@example.org"),
        message(subject="Hi\nBcc: victim@example.org"),
        message(headers={"X-Tag": "a\r\nBcc: victim@example.org"}),
        message(to=[{"name": "Ann\r\nBcc: victim@example.org", "address": "ann@example.org"}]),
        message(attachments=[{"filename": "a\r\nBcc: v@example.org", "content": "aGk="}]),
    ]
    for attempt in attempts:
        status, body, response = await gw.send(attempt)
        assert_problem(status, body, response, 400, "invalid-request")
    raw = b"From: app@shop.example\r\nTo: a@example.org\r\n\r\nbody\r\n"
    status, body, response = await gw.send_raw(raw, params={"to": "a@example.org\r\nRCPT TO:<v@example.org>"})
    assert_problem(status, body, response, 400, "invalid-request")
    assert upstream.messages == []


async def test_unauthenticated_and_forbidden(gateway_factory: GatewayFactory, upstream: Upstream) -> None:
    tokens = ServiceAccountTokens({"checkout-token": ("shop", "checkout"), "intruder-token": ("other", "intruder")})
    gw = await gateway_factory(tokens)
    await gw.configure(account(upstream, access={"serviceAccounts": ["shop/checkout"]}))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, response = await gw.send(token="wrong")
    assert_problem(status, body, response, 401, "unauthenticated")
    status, body, response = await gw.send(token="intruder-token")
    assert_problem(status, body, response, 403, "forbidden")
    status, body, _ = await gw.send(token="checkout-token")
    assert status == 200, body
    assert len(upstream.messages) == 1


async def test_sender_not_in_senders(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, senders=["billing@shop.example", "*@*.shop.example"]))
    status, body, response = await gw.send(message(**{"from": "app@shop.example"}))
    assert_problem(status, body, response, 403, "sender-not-allowed")
    raw = b"From: billing@shop.example\r\nTo: a@example.org\r\n\r\nbody\r\n"
    status, body, response = await gw.send_raw(raw, params={"from": "spoof@evil.example"})
    assert_problem(status, body, response, 403, "sender-not-allowed")
    for sender in ("billing@shop.example", "Billing@SHOP.example", "x@eu.shop.example"):
        status, body, _ = await gw.send(message(**{"from": sender}))
        assert status == 200, (sender, body)
    assert len(upstream.messages) == 3


async def test_unknown_account(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    status, body, response = await gw.send(account_key="shop/nope")
    assert_problem(status, body, response, 404, "unknown-account")


async def test_too_large(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, maxMessageBytes=2048))
    status, body, response = await gw.send(text="x" * 3000)
    assert_problem(status, body, response, 413, "message-too-large")
    status, body, response = await gw.send_raw(b"From: app@shop.example\r\nTo: a@example.org\r\n\r\n" + b"y" * 4096)
    assert_problem(status, body, response, 413, "message-too-large")
    status, body, _ = await gw.send(text="small")
    assert status == 200, body
    assert len(upstream.messages) == 1


async def test_unsupported_media_type(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    status, body, response = await gw.send_raw(b"hello", content_type="text/plain")
    assert_problem(status, body, response, 415, "unsupported-media-type")


async def test_rate_limited_with_retry_after(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, rateLimit={"messagesPerMinute": 10}))  # a burst of one, then one per 6 s
    first = await gw.send()
    assert first[0] == 200, first[1]
    status, body, response = await gw.send()
    assert_problem(status, body, response, 429, "rate-limited")
    assert body["retryable"] is True
    assert 1 <= int(response.headers["Retry-After"]) <= 6
    assert body["retryAfter"] == int(response.headers["Retry-After"])
    assert len(upstream.messages) == 1


# --------------------------------------------------------------------------- 5xx: the upstream


async def test_upstream_550_is_502_with_its_words(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.data_reply = "550 5.7.1 Message rejected as spam"
    await gw.configure(account(upstream))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 502, "upstream-refused")
    assert body["upstream"] == {"code": 550, "message": "5.7.1 Message rejected as spam"}
    assert body["retryable"] is False


async def test_upstream_temporary_refusal_is_retryable_502(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.data_reply = "451 4.3.0 Try again later"
    await gw.configure(account(upstream))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 502, "upstream-refused")
    assert body["retryable"] is True


async def test_all_recipients_refused(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.rcpt_replies["nobody@example.org"] = "550 5.1.1 no such user"
    await gw.configure(account(upstream))
    status, body, response = await gw.send(to=["nobody@example.org"])
    assert_problem(status, body, response, 502, "upstream-refused")
    assert body["upstream"]["code"] == 550


async def test_upstream_421_is_503_with_retry_after(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.rcpt_replies["rcpt@example.org"] = "421 4.3.2 Service shutting down"
    await gw.configure(account(upstream))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 503, "upstream-unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert body["upstream"] == {"code": 421, "message": "4.3.2 Service shutting down"}


async def test_upstream_hanging_up_at_the_data_command_is_503(gw: GatewayHandle, upstream: Upstream) -> None:
    """Before the text went out nothing can have been delivered: "retry" is the truth (after it, see test_verdicts)."""
    upstream.drop_at_data = True
    await gw.configure(account(upstream))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 503, "upstream-unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert upstream.messages == []


async def test_upstream_refusing_auth_is_503(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory(tls="starttls", users={"billing": "right"})
    await gw.configure(account(up, password="wrong"))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 503, "upstream-auth-failed")
    assert body["upstream"]["code"] == 535
    assert "Retry-After" in response.headers


async def test_upstream_unreachable_is_503(gw: GatewayHandle) -> None:
    await gw.configure(account(port=_free_port()))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 503, "upstream-unavailable")
    assert "Retry-After" in response.headers


async def test_stalled_upstream_is_504(gateway_factory: GatewayFactory, stall_server: StallServer) -> None:
    gw = await gateway_factory(upstream_timeout=0.5)
    await gw.configure(account(port=stall_server.port))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 504, "upstream-timeout")
    assert body["retryable"] is True


async def test_upstream_silent_after_the_final_dot_is_delivery_unknown(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    """No verdict within the timeout after the text went out: it may have been delivered, so not a 504 "retry"."""
    gw = await gateway_factory(upstream_timeout=1.0)  # the commands before the dot must fit, on a loaded machine too
    upstream.data_delay = 2.0
    await gw.configure(account(upstream))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 502, "delivery-unknown")
    assert body["retryable"] is False


async def test_pool_saturated_is_503(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.data_delay = 0.5
    await gw.configure(account(upstream, pool={"maxConnections": 1, "acquireTimeoutSeconds": 0}))
    results = await asyncio.gather(*(gw.send() for _ in range(3)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses[0] == 200
    saturated = [(s, b, r) for s, b, r in results if s == 503]
    assert saturated, statuses
    for status, body, response in saturated:
        assert_problem(status, body, response, 503, "pool-saturated")
        assert response.headers["Retry-After"] == "1"


async def test_suspended_account_is_503(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, suspend=True))
    status, body, response = await gw.send()
    assert_problem(status, body, response, 503, "account-suspended")
    assert "Retry-After" in response.headers
    assert upstream.counters.sessions_total == 0


async def test_authenticator_failure_is_503_never_401(gateway_factory: GatewayFactory, upstream: Upstream) -> None:
    from kubernetes_asyncio import client as k8s

    from mailgate.gateway.tokenreview import TokenReviewAuthenticator

    # A TokenReview against an apiserver that is not there: the caller is not at fault.
    api = k8s.ApiClient(k8s.Configuration(host=f"http://127.0.0.1:{_free_port()}"))
    try:
        gw = await gateway_factory(TokenReviewAuthenticator(api))
        await gw.configure(account(upstream))
        status, body, response = await gw.send(token="some-token")
        assert_problem(status, body, response, 503, "auth-unavailable")
        assert "Retry-After" in response.headers
        status, body, response = await gw.send()
        assert_problem(status, body, response, 401, "unauthenticated")  # no token: nothing to check
    finally:
        await api.close()
    assert upstream.messages == []


async def test_idn_domains_need_no_smtputf8_but_utf8_local_parts_do(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory()
    await gw.configure(account(up))
    status, body, _ = await gw.send(to=["ann@bücher.example"])
    assert status == 200, body
    assert up.messages[0].rcpt_tos == ["ann@xn--bcher-kva.example"]
    assert "SMTPUTF8" not in up.messages[0].mail_options
    status, body, _ = await gw.send(to=["jörg@bücher.example"])
    assert status == 200, body
    assert up.messages[1].rcpt_tos == ["jörg@bücher.example"]
    assert "SMTPUTF8" in up.messages[1].mail_options
    # An upstream without SMTPUTF8 (aiosmtpd's switch, for sessions from now on) cannot take it: final.
    up._controller.SMTP_kwargs["enable_SMTPUTF8"] = False
    up.drop_all()
    status, body, response = await gw.send(to=["jörg@example.org"])
    assert_problem(status, body, response, 502, "upstream-unsupported")
    assert body["retryable"] is False
    assert len(up.messages) == 2


async def test_idempotency_key_replays_the_first_answer_and_sends_once(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    url = f"{gw.url}/v1/accounts/shop/billing/messages"

    async def post(body: dict[str, Any], key: str) -> tuple[int, dict[str, Any], Any]:
        async with gw.http.post(url, json=body, headers={"Idempotency-Key": key}) as response:
            return response.status, await response.json(content_type=None), response

    status, first, _ = await post(message(), "order-42")
    assert status == 200, first
    status, second, response = await post(message(), "order-42")
    assert status == 200
    assert second["messageId"] == first["messageId"]
    assert response.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.messages) == 1
    status, conflict, _ = await post(message(text="changed"), "order-42")
    assert status == 422
    assert conflict["type"].endswith("/idempotency-conflict")
    status, _, _ = await post(message(), "order-43")
    assert status == 200
    assert len(upstream.messages) == 2


async def test_post_without_account_routes_by_sender(gw: GatewayHandle, upstream_factory: Any) -> None:
    """POST /v1/messages: the From address picks the account (exact address beats *@domain)."""
    billing, support = upstream_factory(), upstream_factory()
    await gw.configure(
        account(billing, name="billing", senders=["*@shop.example"]),
        account(support, name="support", senders=["help@shop.example"]),
    )

    async def post(sender: str) -> tuple[int, dict[str, Any]]:
        async with gw.http.post(f"{gw.url}/v1/messages", json=message(**{"from": sender})) as response:
            return response.status, await response.json(content_type=None)

    assert (await post("help@shop.example"))[0] == 200
    assert (await post("orders@shop.example"))[0] == 200
    status, body = await post("someone@elsewhere.example")
    assert status == 403 and body["type"].endswith("/sender-not-allowed"), body
    assert [m.mail_from for m in support.messages] == ["help@shop.example"]
    assert [m.mail_from for m in billing.messages] == ["orders@shop.example"]
