"""Delivery-event webhooks against a real aiohttp receiver on 127.0.0.1.

Every signature the receiver gets is checked twice: by ``standardwebhooks`` (the specification's
reference library, as a receiver would) and by an HMAC computed here from the specification's
text. Retries use delays of milliseconds; waits are bounded by ``until``'s timeout, never timed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import itertools
import logging
import math
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from mailgate.queue.webhooks import (
    MAX_RETRY_AFTER,
    MESSAGE_DEFERRED,
    MESSAGE_FAILED,
    MESSAGE_SENT,
    WebhookNotifier,
    WebhookTarget,
    parse_secret,
    retry_after_seconds,
    sign,
)

FAST = (0.01,) * 50  # retry delays: milliseconds, and enough of them for a receiver to come up
ACCOUNT = "mail/alerts"
OTHER = "mail/billing"


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


KEY = secrets.token_bytes(32)
KEY_B = secrets.token_bytes(24)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def timestamp(self) -> int:
        return int(self.headers["webhook-timestamp"])


class Receiver:
    """A webhook endpoint: answers each POST with the next ``script`` entry (a status or "hang"), then ``default``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.script: list[int | str | tuple[int, dict[str, str]]] = []  # a status, "hang", or a status with headers
        self.default: int | str = 200
        self.requests: list[Received] = []
        self._release = asyncio.Event()
        self._release_status = 200
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self, status: int = 200) -> None:
        """Answer ``status`` to every hanging request, now and from now on."""
        self._release_status = status
        self._release.set()

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        action = self.script.pop(0) if self.script else self.default
        if action == "hang":
            await self._release.wait()
            return web.Response(status=self._release_status)
        if isinstance(action, tuple):
            return web.Response(status=action[0], headers=action[1])
        assert isinstance(action, int)
        return web.Response(status=action, headers={"Location": "/elsewhere"} if 300 <= action < 400 else {})


@dataclass
class Recorder:
    """A ``WebhookObserver`` that keeps every call."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    def delivered(self, account: str, event_type: str) -> None:
        self.calls.append(("delivered", account, event_type))

    def failed(self, account: str, event_type: str, reason: str) -> None:
        self.calls.append(("failed", account, event_type, reason))

    def dropped(self, account: str, reason: str) -> None:
        self.calls.append(("dropped", account, reason))

    def retried(self, account: str) -> None:
        self.calls.append(("retried", account))

    def count(self, *call: str) -> int:
        return sum(1 for c in self.calls if c[: len(call)] == call)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition``; the timeout only bounds a failing test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


def verify(received: Received, key: bytes) -> Any:
    """The payload, once both the reference library and a hand-made HMAC accept the signature."""
    payload = Webhook(whsec(key)).verify(received.body, received.headers)
    signed = f"{received.id}.{received.timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert received.headers["webhook-signature"] == f"v1,{expected}"
    return payload


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(port: int = 0) -> Receiver:
        receiver = await Receiver(port).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(receivers: Callable[..., Awaitable[Receiver]]) -> Receiver:
    return await receivers()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def notifiers(recorder: Recorder) -> AsyncIterator[Callable[..., WebhookNotifier]]:
    made: list[WebhookNotifier] = []

    def make(targets: dict[str, WebhookTarget], *, start: bool = True, **options: Any) -> WebhookNotifier:
        options.setdefault("schedule", FAST)
        notifier = WebhookNotifier(observer=recorder, **options)
        notifier.configure(targets)
        if start:
            notifier.start()
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.close(asyncio.get_running_loop().time() + 1)


# --- signing ---------------------------------------------------------------------------------


@given(
    key=st.binary(min_size=1, max_size=100),
    msg_id=st.text(st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=253_402_300_799),  # up to 9999-12-31
    body=st.text(st.characters(codec="utf-8"), max_size=300),
)
def test_sign_matches_the_reference_library(key: bytes, msg_id: str, timestamp: int, body: str) -> None:
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    assert sign(key, msg_id, timestamp, body.encode()) == Webhook(key).sign(msg_id, when, body)


@given(key=st.binary(min_size=24, max_size=64), timestamp=st.integers(min_value=0, max_value=2**33))
def test_parse_secret_reads_whsec_like_the_reference_library(key: bytes, timestamp: int) -> None:
    text = whsec(key)
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    assert parse_secret(text) == key
    assert sign(parse_secret(text), "msg_1", timestamp, b"{}") == Webhook(text).sign("msg_1", when, "{}")


def test_sign_refuses_an_id_with_a_full_stop() -> None:
    with pytest.raises(ValueError, match=r"'\.'"):
        sign(KEY, "msg_1.2", 1_700_000_000, b"{}")


def test_parse_secret_ignores_surrounding_whitespace() -> None:
    assert parse_secret(f"  {whsec(KEY)}\n") == KEY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "whsec_",
        base64.b64encode(KEY).decode(),  # no prefix
        "whsk_" + base64.b64encode(KEY).decode(),  # the asymmetric secret's prefix
        "password-with-no-prefix-at-all-0123456789",
        "WHSEC_" + base64.b64encode(KEY).decode(),  # the prefix is lower-case
        "whsec_" + base64.b64encode(KEY).decode().rstrip("=") + "!!",  # not base64
        "whsec_" + base64.b64encode(KEY).decode()[:10] + "$" + base64.b64encode(KEY).decode()[10:],  # a stray character
        "whsec_" + base64.b64encode(KEY).decode()[:10] + " " + base64.b64encode(KEY).decode()[10:],  # a space inside
        "whsec_" + base64.b64encode(KEY).decode()[:-2],  # padding missing
        "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # URL-safe alphabet
        whsec(secrets.token_bytes(23)),  # one byte short of the minimum
    ],
)
def test_parse_secret_refuses_without_quoting(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_secret(text)
    secret_part = text.removeprefix("whsec_").removeprefix("whsk_")
    if secret_part:
        assert secret_part not in str(refused.value)
        assert secret_part[:8] not in str(refused.value)
    # No chained exception (a traceback would print it) either.
    assert refused.value.__cause__ is None and (refused.value.__context__ is None or refused.value.__suppress_context__)


def test_target_repr_hides_the_secret_and_the_url() -> None:
    target = WebhookTarget("https://hooks.example.com/T0/B1/PATHTOKEN?token=QUERYTOKEN", KEY)
    for text in (repr(target), str(target)):
        assert "hooks.example.com" in text
        for hidden in ("PATHTOKEN", "QUERYTOKEN", whsec(KEY)[6:], KEY.hex(), repr(KEY)):
            assert hidden not in text


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook?token=QUERYTOKEN",
        "example.com/hook?token=QUERYTOKEN",
        "http://[::1/?token=QUERYTOKEN",
        "http://[::1]x/?token=QUERYTOKEN",
        "http://user@/hook?token=QUERYTOKEN",
        "http:/hook?token=QUERYTOKEN",
        "http://a..example.com/hook?token=QUERYTOKEN",
        "http://example.com:0/hook?token=QUERYTOKEN",
        "http://example.com:99999/hook?token=QUERYTOKEN",
    ],
)
def test_target_refuses_a_bad_url_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        WebhookTarget(url, KEY)
    assert "QUERYTOKEN" not in str(refused.value)


def test_target_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="24 bytes"):
        WebhookTarget("https://example.com/hook", secrets.token_bytes(23))


# --- delivery --------------------------------------------------------------------------------


async def test_an_event_is_posted_signed_per_standard_webhooks(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, concurrency=1)
    notifier.notify("mail/unconfigured", MESSAGE_SENT, {"id": "ignored"})  # no target: nothing sent, nothing counted
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001", "recipients": ["ops@example.com"], "note": "é ✓"})

    await until(lambda: recorder.count("delivered") == 1)
    assert recorder.calls == [("delivered", ACCOUNT, MESSAGE_SENT)]
    [received] = receiver.requests
    assert received.path == "/hook"
    assert received.headers["content-type"] == "application/json"
    assert received.id.startswith("msg_") and "." not in received.id
    payload = verify(received, KEY)
    assert payload["type"] == MESSAGE_SENT
    assert payload["data"] == {"id": "0001", "recipients": ["ops@example.com"], "note": "é ✓"}
    assert payload["timestamp"].endswith("Z")
    assert datetime.datetime.fromisoformat(payload["timestamp"]).utcoffset() == datetime.timedelta(0)


async def test_each_event_has_its_own_id(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    for event_type in (MESSAGE_SENT, MESSAGE_DEFERRED, MESSAGE_FAILED):
        notifier.notify(ACCOUNT, event_type, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 3)
    assert len({r.id for r in receiver.requests}) == 3
    assert sorted(verify(r, KEY)["type"] for r in receiver.requests) == sorted([MESSAGE_SENT, MESSAGE_DEFERRED, MESSAGE_FAILED])


class SteppingClock:
    """Wall-clock time plus 30 s more at each reading: each attempt has a later timestamp than the one before."""

    def __init__(self) -> None:
        self._steps = itertools.count()

    def __call__(self) -> float:
        return time.time() + 30 * next(self._steps)


async def test_a_retry_keeps_the_id_and_is_signed_with_a_fresh_timestamp(
    receiver: Receiver, recorder: Recorder, notifiers
) -> None:
    receiver.script = [500, 503]
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, clock=SteppingClock())
    notifier.notify(ACCOUNT, MESSAGE_DEFERRED, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 1)
    first, second, third = receiver.requests
    assert first.id == second.id == third.id
    assert first.timestamp < second.timestamp < third.timestamp
    assert first.body == second.body == third.body  # the event's own timestamp does not change
    for received in receiver.requests:
        assert verify(received, KEY)["data"] == {"id": "0001"}
    assert recorder.calls == [("retried", ACCOUNT), ("retried", ACCOUNT), ("delivered", ACCOUNT, MESSAGE_DEFERRED)]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retried_statuses(status: int, receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.script = [status]
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 1)
    assert [r.id for r in receiver.requests] == [receiver.requests[0].id] * 2
    assert recorder.count("retried") == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 302, 301])
async def test_other_statuses_are_not_retried(status: int, receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.script = [status]
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_FAILED, {"id": "0001"})

    await until(lambda: recorder.count("failed") == 1)
    # The verdict is taken when the answer comes: a retry would have been counted instead.
    assert recorder.calls == [("failed", ACCOUNT, MESSAGE_FAILED, f"http_{status}")]
    assert [r.path for r in receiver.requests] == ["/hook"]  # a redirect is not followed


@pytest.mark.parametrize("status", [429, 503])
async def test_a_receivers_retry_after_is_honoured(status: int, receiver: Receiver, recorder: Recorder, notifiers) -> None:
    """A receiver that says when to come back (RFC 9110 Retry-After) is not asked again before then."""
    receiver.script = [(status, {"Retry-After": "1"})]
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 1, timeout=10)
    first, second = receiver.requests
    assert second.at - first.at >= 0.95  # the schedule alone would retry after 10 ms


@pytest.mark.parametrize("value", ["soon", "-5", "", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_an_unusable_or_past_retry_after_falls_back_to_the_schedule(
    value: str, receiver: Receiver, recorder: Recorder, notifiers, webhook_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(503, {"Retry-After": value})]
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 1)
    assert recorder.count("retried") == 1
    # The delay the notifier chose, not the wall clock (a loaded machine may take a second to deliver anyway):
    # the schedule's 10 ms, where any reading of the header would have given a second or more.
    assert "retry in 0.0 s" in webhook_logs.text, webhook_logs.text


def test_retry_after_reads_seconds_and_http_dates_and_is_capped() -> None:
    now = datetime.datetime(2026, 12, 3, 8, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert retry_after_seconds("120", now=now) == 120
    assert retry_after_seconds("Thu, 03 Dec 2026 08:01:30 GMT", now=now) == 90
    assert retry_after_seconds(str(10**9), now=now) == MAX_RETRY_AFTER
    assert retry_after_seconds("1.5", now=now) is None  # delta-seconds are whole
    assert retry_after_seconds(None, now=now) is None


async def test_retries_end_when_the_schedule_does(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.default = 500
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, schedule=(0.01, 0.01))
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})

    await until(lambda: recorder.count("failed") == 1)
    assert recorder.calls == [("retried", ACCOUNT)] * 2 + [("failed", ACCOUNT, MESSAGE_SENT, "retries_exhausted")]
    assert len({r.id for r in receiver.requests}) == 1 and len(receiver.requests) == 3


async def test_a_timeout_is_retried(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.script = ["hang"]  # the first request is never answered
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, request_timeout=0.2)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})

    await until(lambda: recorder.count("delivered") == 1)
    assert recorder.count("retried") >= 1
    assert len(receiver.requests) >= 2 and len({r.id for r in receiver.requests}) == 1
    for received in receiver.requests:
        verify(received, KEY)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_refused_connection_is_retried_until_the_receiver_is_up(
    receivers: Callable[..., Awaitable[Receiver]], recorder: Recorder, notifiers
) -> None:
    port = free_port()
    notifier = notifiers({ACCOUNT: WebhookTarget(f"http://127.0.0.1:{port}/hook", KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})
    await until(lambda: recorder.count("retried") >= 2)

    receiver = await receivers(port)
    await until(lambda: recorder.count("delivered") == 1)
    [received] = receiver.requests
    verify(received, KEY)


async def test_410_disables_the_target_until_it_changes(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.script = [410]
    target = WebhookTarget(receiver.url(), KEY)
    notifier = notifiers({ACCOUNT: target, OTHER: WebhookTarget(receiver.url("/other"), KEY)}, concurrency=1)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0002"})  # queued behind the one answered 410
    await until(lambda: recorder.count("dropped") == 1)
    assert recorder.calls == [("failed", ACCOUNT, MESSAGE_SENT, "http_410"), ("dropped", ACCOUNT, "target_gone")]

    notifier.configure({ACCOUNT: target, OTHER: WebhookTarget(receiver.url("/other"), KEY)})  # unchanged: still gone
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0003"})  # ignored
    notifier.notify(OTHER, MESSAGE_SENT, {"id": "0004"})  # one worker: sent after anything queued before it
    await until(lambda: recorder.count("delivered") == 1)
    assert [r.path for r in receiver.requests] == ["/hook", "/other"]

    notifier.configure({ACCOUNT: WebhookTarget(receiver.url("/new"), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0005"})
    await until(lambda: recorder.count("delivered", ACCOUNT) == 1)
    assert receiver.requests[-1].path == "/new"
    assert verify(receiver.requests[-1], KEY)["data"] == {"id": "0005"}


# --- limits and configuration ----------------------------------------------------------------


async def test_a_full_queue_drops_and_counts_without_blocking(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.default = "hang"
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, max_pending=3, concurrency=1)
    for n in range(10):  # synchronous: returns while the receiver hangs
        notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": n})
    assert recorder.calls == [("dropped", ACCOUNT, "queue_full")] * 7

    await until(lambda: len(receiver.requests) == 1)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": 10})  # the one in flight still counts as pending
    assert recorder.count("dropped", ACCOUNT, "queue_full") == 8

    receiver.release()
    await until(lambda: recorder.count("delivered") == 3)
    assert [verify(r, KEY)["data"]["n"] for r in receiver.requests] == [0, 1, 2]


async def test_a_hanging_receiver_does_not_hold_up_other_accounts(
    receivers: Callable[..., Awaitable[Receiver]], recorder: Recorder, notifiers
) -> None:
    hanging, healthy = await receivers(), await receivers()
    hanging.default = "hang"
    notifier = notifiers(
        {ACCOUNT: WebhookTarget(hanging.url(), KEY), OTHER: WebhookTarget(healthy.url(), KEY_B)},
        concurrency=2,
        per_account_concurrency=1,
        max_pending_per_account=2,
        request_timeout=60,
    )
    for n in range(3):
        notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": n})
    assert recorder.calls == [("dropped", ACCOUNT, "account_queue_full")]
    await until(lambda: len(hanging.requests) == 1)

    notifier.notify(OTHER, MESSAGE_SENT, {"n": 0})
    await until(lambda: recorder.count("delivered", OTHER) == 1)
    assert len(hanging.requests) == 1  # the second event waits for the first, holding no worker

    hanging.release()
    await until(lambda: recorder.count("delivered", ACCOUNT) == 2)


async def test_a_waiting_retry_goes_to_the_new_target_at_once(
    receivers: Callable[..., Awaitable[Receiver]], recorder: Recorder, notifiers
) -> None:
    old, new = await receivers(), await receivers()
    old.default = 503
    notifier = notifiers({ACCOUNT: WebhookTarget(old.url(), KEY)}, schedule=(3600.0,))
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})
    await until(lambda: recorder.count("retried") == 1)  # next try in half an hour or more

    notifier.configure({ACCOUNT: WebhookTarget(new.url(), KEY_B)})
    await until(lambda: recorder.count("delivered") == 1)
    [first] = old.requests
    [moved] = new.requests
    assert moved.id == first.id
    assert verify(moved, KEY_B)["data"] == {"id": "0001"}
    with pytest.raises(Exception, match="signature"):
        Webhook(whsec(KEY)).verify(moved.body, moved.headers)  # signed with the new secret, not the old


async def test_a_waiting_retry_is_dropped_when_its_target_is_removed(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    receiver.default = 503
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, schedule=(3600.0,))
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})
    await until(lambda: recorder.count("retried") == 1)

    notifier.configure({})
    assert recorder.calls == [("retried", ACCOUNT), ("dropped", ACCOUNT, "no_target")]
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0002"})  # no target any more: ignored
    assert len(recorder.calls) == 2 and len(receiver.requests) == 1


async def test_a_queued_event_goes_to_the_target_configured_when_it_is_sent(
    receivers: Callable[..., Awaitable[Receiver]], recorder: Recorder, notifiers
) -> None:
    old, new = await receivers(), await receivers()
    notifier = notifiers({ACCOUNT: WebhookTarget(old.url(), KEY)}, start=False)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"id": "0001"})
    notifier.notify(OTHER, MESSAGE_SENT, {"id": "ignored"})
    notifier.configure({ACCOUNT: WebhookTarget(new.url(), KEY_B)})
    notifier.start()

    await until(lambda: recorder.count("delivered") == 1)
    assert old.requests == []
    assert verify(new.requests[0], KEY_B)["data"] == {"id": "0001"}


async def test_data_that_is_not_json_is_dropped_and_counted(receiver: Receiver, recorder: Recorder, notifiers) -> None:
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"when": object()})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"ratio": math.nan})
    assert recorder.calls == [("dropped", ACCOUNT, "unserializable")] * 2


# --- shutdown --------------------------------------------------------------------------------


async def test_close_drops_waiting_events_and_cancels_requests_at_the_deadline(
    receiver: Receiver, recorder: Recorder, notifiers
) -> None:
    receiver.default = "hang"
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, concurrency=1)
    for n in range(3):
        notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": n})
    await until(lambda: len(receiver.requests) == 1)

    await notifier.close(asyncio.get_running_loop().time())
    assert recorder.calls == [("dropped", ACCOUNT, "shutdown")] * 3
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": 3})
    assert recorder.calls == [("dropped", ACCOUNT, "shutdown")] * 4


@pytest.mark.parametrize(
    ("status", "outcome"), [(200, ("delivered", ACCOUNT, MESSAGE_SENT)), (503, ("dropped", ACCOUNT, "shutdown"))]
)
async def test_close_lets_a_request_in_flight_finish_before_the_deadline(
    status: int, outcome: tuple[str, ...], receiver: Receiver, recorder: Recorder, notifiers
) -> None:
    receiver.default = "hang"
    notifier = notifiers({ACCOUNT: WebhookTarget(receiver.url(), KEY)}, concurrency=1)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": 0})
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": 1})  # waits behind the first
    await until(lambda: len(receiver.requests) == 1)

    closing = asyncio.create_task(notifier.close(asyncio.get_running_loop().time() + 30))
    await asyncio.sleep(0)  # close() has begun: the waiting event is dropped, new events are refused
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"n": 2})
    receiver.release(status)  # 503: no retry is scheduled any more, the event is dropped
    await closing
    drop = ("dropped", ACCOUNT, "shutdown")
    assert recorder.calls == [drop, drop, outcome]
    assert [verify(r, KEY)["data"]["n"] for r in receiver.requests] == [0]  # the waiting one was never sent


# --- secrets ---------------------------------------------------------------------------------


@pytest.fixture
def webhook_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="mailgate.queue.webhooks")
    yield caplog


async def test_logs_carry_neither_secret_nor_url_token_nor_body(
    receiver: Receiver, recorder: Recorder, notifiers, webhook_logs: pytest.LogCaptureFixture
) -> None:
    receiver.script = [500, 400, "hang", 410]
    url = receiver.url("/hook/PATHTOKEN") + "?token=QUERYTOKEN"
    notifier = notifiers({ACCOUNT: WebhookTarget(url, KEY)}, concurrency=1, request_timeout=0.2)
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"subject": "BODYMARKER"})  # 500, then 400: retried, then refused
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"subject": "BODYMARKER"})  # times out, then 410
    notifier.notify(ACCOUNT, MESSAGE_SENT, {"when": object()})  # not JSON
    await until(lambda: recorder.count("failed") == 2)

    text = webhook_logs.text
    assert "127.0.0.1" in text and "410 Gone" in text and "TimeoutError" in text  # the logs say what happened
    for hidden in ("PATHTOKEN", "QUERYTOKEN", "BODYMARKER", whsec(KEY)[6:], KEY.hex(), repr(KEY)):
        assert hidden not in text
