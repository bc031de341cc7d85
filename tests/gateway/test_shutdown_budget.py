"""SIGTERM under HTTP and SMTP load: the gateway ends within its grace, and every request gets a true answer.

A real ``mailgate gateway`` process with the SMTP ingress serves two
accounts. One upstream takes messages in but holds its replies until the test
lets them go (sends stay in flight), the other holds them for good (sends that
cannot finish). More sends are queued than the pools have connections, one
SMTP client sits idle and one pipelines commands without ever reading. Then
the test does what the kubelet does: SIGTERM, and SIGKILL once the grace
period is over. The gateway must exit by itself before that, and:

- a send in flight gets its chance: the held replies are released after
  SIGTERM, and every message of that account is sent and acknowledged;
- a send that cannot finish in time is answered truthfully: "retry, nothing
  was sent" only when the upstream really has nothing, "delivery unknown"
  for the ones the upstream took in; no request is left without an answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.gateway.app import ShutdownPlan
from tests.gateway.conftest import ADMIN_TOKEN, account, message
from tests.ingress.conftest import in_thread
from tests.ingress.test_stuck_clients import StuckClient
from tests.smtp_servers import Received, Upstream

GRACE = 16  # the pod's terminationGracePeriodSeconds, passed as --shutdown-grace
PER_DOOR = 4  # sends per account through each door: 8 per account for 2 connections
SMTP_LISTENING = re.compile(r"SMTP ingress listening on smtp [\d.]+:(\d+)")
# Answers that say "retry, nothing was sent": the upstream must not have the message.
NOTHING_SENT = {"shutting-down", "pool-saturated", "upstream-unavailable"}


class GatewayProcess:
    """``mailgate gateway`` with the SMTP ingress, as a subprocess; its JSON log lines are collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.smtp_port = 0
        self.port = 0
        self.admin_port = 0
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            record = json.loads(line)
            if found := SMTP_LISTENING.search(record["message"]):
                self.smtp_port = int(found.group(1))
            if "gateway listening" in record["message"]:  # after the doors started (the ingress logs its own line first)
                self.port, self.admin_port = int(record["port"]), int(record["adminPort"])
                self._listening.set()

    async def started(self) -> None:
        await asyncio.wait_for(self._listening.wait(), 30)
        assert self.smtp_port, "the SMTP ingress did not say where it listens"


@pytest.fixture
async def gateway_process() -> AsyncIterator[GatewayProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailgate", "gateway",
        "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
        "--insecure-no-auth", "--log-format", "json",
        "--shutdown-delay", "1", "--shutdown-grace", str(GRACE),
        # A send may legitimately take longer than the whole grace: the shutdown must not wait for it.
        "--upstream-timeout", "60",
        "--smtp-port", "0", "--smtp-host", "127.0.0.1", "--smtp-trusted-networks", "127.0.0.0/8",
        "--smtp-hostname", "gw.test.example", "--smtp-command-timeout", "600",
        env={**os.environ, "MAILGATE_ADMIN_TOKEN": ADMIN_TOKEN},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gateway = GatewayProcess(proc)
    yield gateway
    print("\n".join(gateway.lines))  # the logs, which pytest shows when the test failed
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@dataclass
class Answer:
    """What one request heard: ``sent``, ``nothing-sent`` or ``unknown`` (may have been delivered)."""

    token: str
    account: str
    verdict: str
    detail: str


def mark(door: str, name: str, i: int) -> str:
    """A subject no other message's subject contains."""
    return f"[{door}-{name}-{i}]"


async def http_send(http: aiohttp.ClientSession, url: str, name: str, i: int) -> Answer:
    token = mark("http", name, i)
    body = message(subject=token, **{"from": f"app@{name}.example"})
    async with http.post(f"{url}/v1/accounts/shop/{name}/messages", json=body) as response:
        payload = await response.json(content_type=None)
    if response.status == 200:
        return Answer(token, name, "sent", "200")
    slug = str(payload.get("type", "")).rsplit("/", 1)[-1]
    if slug == "delivery-unknown":
        return Answer(token, name, "unknown", slug)
    if slug in NOTHING_SENT and payload.get("retryable") is True:
        return Answer(token, name, "nothing-sent", slug)
    return Answer(token, name, "other", f"{response.status} {payload}")


async def smtp_send(port: int, name: str, i: int) -> Answer:
    """One whole transaction with a raw client; the verdict, then the gateway's goodbye."""
    token = mark("smtp", name, i)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                return b"<closed>"
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    try:
        assert (await reply()).startswith(b"220 ")
        for command in (b"EHLO client.test", f"MAIL FROM:<app@{name}.example>".encode(), b"RCPT TO:<rcpt@example.org>"):
            writer.write(command + b"\r\n")
            assert (await reply()).startswith(b"250"), command
        writer.write(b"DATA\r\n")
        assert (await reply()).startswith(b"354")
        writer.write(f"From: app@{name}.example\r\nTo: rcpt@example.org\r\nSubject: {token}\r\n\r\nhi\r\n.\r\n".encode())
        verdict = (await reply()).decode()
        goodbye = await reply()
    finally:
        writer.close()
    assert goodbye.startswith(b"421 ") or goodbye == b"<closed>", goodbye  # nothing more is accepted
    if verdict.startswith("250 "):
        return Answer(token, name, "sent", verdict)
    if verdict.startswith("451 ") and "may have been delivered" in verdict:
        return Answer(token, name, "unknown", verdict)
    if verdict.startswith("4"):
        return Answer(token, name, "nothing-sent", verdict)
    return Answer(token, name, "other", verdict)


async def idle_smtp(port: int) -> bytes:
    """A client that said EHLO and waits: what it hears next."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(b"EHLO idle.test\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        return await reader.readline()
    finally:
        writer.close()


async def pooled(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """Sends of ``name`` in the pool: on a connection, opening one, or queued for one."""
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    prefix = f'mailgate_pool_connections{{account="shop/{name}",state="'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def received(upstream: Upstream, token: str) -> bool:
    return any(token.encode() in message.data for message in list(upstream.messages))


async def until(condition: Any, what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"never reached: {what}"
        await asyncio.sleep(0.05)


async def test_sigterm_under_load_ends_within_the_grace_and_answers_every_request_truthfully(
    gateway_process: GatewayProcess, upstream_factory: Any
) -> None:
    fast: Upstream = upstream_factory()
    stuck: Upstream = upstream_factory()
    fast.hold_replies()
    stuck.hold_replies()
    await gateway_process.started()
    url, admin_url = f"http://127.0.0.1:{gateway_process.port}", f"http://127.0.0.1:{gateway_process.admin_port}"
    pool = {"maxConnections": 2, "acquireTimeoutSeconds": 120}  # queued sends could wait far longer than the grace
    accounts = [
        account(up, name=name, senders=[f"*@{name}.example"], pool=pool) for up, name in ((fast, "fast"), (stuck, "stuck"))
    ]
    stuck_client: StuckClient | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with http.put(admin_url + "/v1/config", json={"revision": 1, "accounts": accounts}, headers=headers) as r:
                assert r.status == 200, await r.text()

            port = gateway_process.smtp_port
            sends = [
                asyncio.create_task(send)
                for name in ("fast", "stuck")
                for i in range(PER_DOOR)
                for send in (http_send(http, url, name, i), smtp_send(port, name, i))
            ]
            idle = asyncio.create_task(idle_smtp(port))
            stuck_client = await in_thread(StuckClient, port, None)
            pump = asyncio.ensure_future(in_thread(stuck_client.pump))

            async def loaded() -> bool:  # every send reached its pool: two on the upstream, the rest queued
                counts = [await pooled(http, url, name) for name in ("fast", "stuck")]
                return counts == [2 * PER_DOOR] * 2 and len(fast.held) == len(stuck.held) == 2

            await until(loaded, "every send in flight or queued")
            assert not any(send.done() for send in sends) and not idle.done() and not pump.done()

            loop = asyncio.get_running_loop()
            gateway_process.proc.send_signal(signal.SIGTERM)
            killed_at = loop.time() + GRACE  # the kubelet's SIGKILL

            async def unready() -> bool:
                async with http.get(url + "/readyz") as response:
                    return response.status == 503

            await until(unready, "unready after SIGTERM")
            fast.release_replies()  # the sends in flight on this account can finish now: they must get to

            try:
                code = await asyncio.wait_for(gateway_process.proc.wait(), max(killed_at - loop.time(), 0))
            except TimeoutError:
                pytest.fail(f"still running {GRACE}s after SIGTERM: the kubelet would SIGKILL it mid-answer")
            answers: list[Answer] = await asyncio.wait_for(asyncio.gather(*sends), 10)
            assert (await asyncio.wait_for(idle, 10)).startswith(b"421 4.3.2 ")
            await asyncio.wait_for(pump, 10)  # the client that never reads was dropped, not waited for
    finally:
        stuck.release_replies()
        if stuck_client is not None:
            stuck_client.close()

    assert code == 0
    assert not [a for a in answers if a.verdict == "other"], [a for a in answers if a.verdict == "other"]
    # In flight when SIGTERM came, they got their chance: all sent, all acknowledged.
    assert [a for a in answers if a.account == "fast" and a.verdict != "sent"] == []
    assert all(received(fast, a.token) for a in answers if a.account == "fast")
    # What could not finish was answered truthfully: "nothing sent" only when nothing was.
    for answer in answers:
        if answer.verdict == "sent":
            assert received(fast if answer.account == "fast" else stuck, answer.token), answer
        if answer.verdict == "nothing-sent":
            assert not received(fast if answer.account == "fast" else stuck, answer.token), answer
    unknown = [a for a in answers if a.verdict == "unknown"]
    held: list[Received] = list(stuck.held)
    assert len(unknown) == len(held) == 2  # exactly the two the upstream took in without answering
    assert all(received(stuck, a.token) for a in unknown)


@given(grace=st.floats(0, 3600), delay=st.floats(0, 3600))
def test_every_part_of_the_shutdown_fits_in_the_grace(grace: float, delay: float) -> None:
    """Whatever the flags, the parts come in order and end before the grace does, and the drain keeps most of it."""
    plan = ShutdownPlan.of(grace, delay)
    assert 0 <= plan.unready <= plan.drain_end <= plan.answer_end <= plan.close_end <= grace
    assert plan.unready <= delay
    assert plan.drain_end - plan.unready >= grace * 0.45  # the unready delay cannot eat the drain
    if grace >= 0.001:  # not in denormal floats, where grace - grace / 10 rounds to grace
        assert plan.close_end < grace  # a margin is left for the process to exit
