"""`mailgate serve --queue`: what a 202 promised survives a SIGKILL, and is delivered once after the restart."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.smtp_servers import Upstream, _free_port
from tests.standalone.support import MESSAGE, ServeProcess, account_yaml, write_atomically

QUEUED = "  delivery: {mode: queue}\n"
COUNT = 20


async def test_every_202_survives_a_sigkill_and_is_delivered_once_after_restart(
    serve: Callable[..., ServeProcess], tmp_path: Path, upstream_factory: Callable[..., Upstream]
) -> None:
    upstream = upstream_factory(users={"billing": "pw"})
    accounts = tmp_path / "accounts.yaml"
    dead_port = _free_port()
    # First the upstream cannot be reached: every message is accepted, stored, and deferred.
    write_atomically(accounts, account_yaml(upstream).replace(f"port: {upstream.port}", f"port: {dead_port}") + QUEUED)
    queue = f"sqlite:///{tmp_path}/queue.db"
    flags = ["-f", str(accounts), "--insecure-no-auth", "--queue", queue, "--queue-retry-delay", "0.5"]
    first = serve(*flags)
    await first.wait_ready()
    ids = []
    async with aiohttp.ClientSession() as http:
        for n in range(COUNT):
            body = {**MESSAGE, "subject": f"n{n}"}
            async with http.post(f"{first.url}/v1/accounts/shop/billing/messages", json=body) as response:
                assert response.status == 202, await response.text()
                ids.append((await response.json())["id"])
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    assert upstream.messages == []

    write_atomically(accounts, account_yaml(upstream) + QUEUED)  # the upstream is back
    second = serve(*flags)
    await second.wait_ready()
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        for queue_id in ids:
            while True:
                async with http.get(f"{second.url}/v1/messages/{queue_id}") as response:
                    assert response.status == 200, await response.text()
                    if (await response.json())["state"] == "sent":
                        break
                assert time.monotonic() < deadline, f"{queue_id} not delivered:\n{second.output()}"
                await asyncio.sleep(0.1)
    subjects = sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in upstream.messages)
    assert subjects == sorted(f"n{n}".encode() for n in range(COUNT))  # each exactly once


def test_a_bad_queue_url_is_refused_at_start(
    serve: Callable[..., ServeProcess], tmp_path: Path, upstream_factory: Callable[..., Upstream]
) -> None:
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(upstream_factory(users={"billing": "pw"})))
    process = serve("-f", str(accounts), "--insecure-no-auth", "--queue", "mysql://user:hunter2@db/mail")
    assert process.process.wait(20) == 2
    output = process.output()
    assert "unsupported queue URL scheme 'mysql'" in output and "hunter2" not in output
