"""The ``mailgate gateway`` process: SIGTERM with requests in flight, JSON logs, and no credential in any output.

The gateway runs as a real subprocess (``python -m mailgate gateway``), so
signals, the listener and the logs are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway.conftest import ADMIN_TOKEN, account, message
from tests.pool.support import eventually
from tests.smtp_servers import Upstream

SENTINEL = "SENTINEL-Pa55-9c1e7d"
WRONG_SENTINEL = "SENTINEL-Wrong-5a0b2f"
IN_FLIGHT = 10


class GatewayProcess:
    """A ``mailgate gateway`` subprocess whose stderr (the logs) is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.listening: dict[str, Any] = {}
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if "gateway listening" in line:
                self.listening = json.loads(line)
                self._listening.set()

    async def ports(self) -> tuple[int, int]:
        await asyncio.wait_for(self._listening.wait(), 20)
        return int(self.listening["port"]), int(self.listening["adminPort"])

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader
        return code


@pytest.fixture
async def gateway_process(upstream_factory: object) -> AsyncIterator[GatewayProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailgate", "gateway",
        "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
        "--insecure-no-auth", "--log-format", "json", "--log-level", "debug",
        "--shutdown-delay", "1", "--shutdown-grace", "20", "--upstream-timeout", "5",
        env={**os.environ, "MAILGATE_ADMIN_TOKEN": ADMIN_TOKEN},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    gateway = GatewayProcess(proc)
    yield gateway
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def readyz(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/readyz") as response:
        return response.status


async def metric_sum(http: aiohttp.ClientSession, url: str, prefix: str) -> float:
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def test_sigterm_answers_every_request_in_flight_and_leaks_no_credential(
    gateway_process: GatewayProcess, upstream_factory: Any
) -> None:
    up: Upstream = upstream_factory(tls="starttls", users={"billing": SENTINEL})
    up.data_delay = 0.5
    port, admin_port = await gateway_process.ports()
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    refusing: Upstream = upstream_factory(tls="starttls", users={"billing": SENTINEL})
    broken = account(refusing, name="broken", password=WRONG_SENTINEL)
    snapshot = {"revision": 1, "accounts": [account(up, pool={"maxConnections": 5, "acquireTimeoutSeconds": 20}), broken]}
    outputs: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.put(admin_url + "/v1/config", json=snapshot, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
            assert r.status == 200
        async with http.post(url + "/v1/accounts/shop/broken/messages", json=message()) as r:
            assert r.status == 503  # the upstream refuses the wrong password
            outputs.append(await r.text())

        async def send(i: int) -> tuple[int, str]:
            async with http.post(url + "/v1/accounts/shop/billing/messages", json=message(subject=f"in flight {i}")) as r:
                return r.status, await r.text()

        tasks = [asyncio.create_task(send(i)) for i in range(IN_FLIGHT)]
        gauge = 'mailgate_pool_connections{account="shop/billing",state="'
        await eventually(
            lambda: all(not t.done() for t in tasks) and len(up.messages) == 0, what="requests to stay in flight"
        )
        deadline = asyncio.get_running_loop().time() + 10
        while await metric_sum(http, url, gauge) < IN_FLIGHT:  # every request is in the pool: active, opening or waiting
            assert asyncio.get_running_loop().time() < deadline, "requests never reached the pool"
        async with http.get(url + "/metrics") as r:
            outputs.append(await r.text())

        gateway_process.proc.send_signal(signal.SIGTERM)
        while await readyz(http, url) != 503:  # during the unready delay the listener still answers
            assert asyncio.get_running_loop().time() < deadline, "never turned unready"
        results = await asyncio.gather(*tasks)
        code = await gateway_process.wait()

        assert [status for status, _ in results] == [200] * IN_FLIGHT
        assert code == 0
        assert len(up.messages) == IN_FLIGHT
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url + "/livez"):
                pass
    await eventually(lambda: up.sessions_open == 0, what="upstream sessions to be closed")
    outputs.extend(body for _, body in results)

    records = [json.loads(line) for line in gateway_process.lines]  # every log line is one JSON object
    assert any(r.get("requestId") and r["logger"] == "mailgate.gateway.access" for r in records)
    assert any("upstream-auth-failed" in r["message"] for r in records)
    everything = "\n".join(gateway_process.lines + outputs)
    assert SENTINEL not in everything
    assert WRONG_SENTINEL not in everything
