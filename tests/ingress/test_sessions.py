"""Sessions under stress: stalled clients, too many clients, live reconfiguration, and shutdown."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from mailgate.snapshot import ConfigSnapshot
from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, TLSFiles, account, in_thread, transaction, until
from tests.smtp_servers import Upstream

MESSAGE = b"From: app@shop.example\r\nSubject: hi\r\n\r\nhello\r\n"


class RawClient:
    """A socket speaking SMTP line by line, so a test can stop mid-command like a stalled client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                return [*lines, b"<closed>"]
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return lines

    def command(self, line: bytes) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def send(gw: IngressGateway, sender: str = "app@shop.example") -> list[tuple[int, str]]:
    with gw.smtp(starttls=False) as client:
        return transaction(client, sender, ["ops@example.org"], MESSAGE)


async def test_a_stalled_client_delays_nobody_and_is_dropped_with_421(
    ingress_factory: IngressFactory, upstream: Upstream
) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8", command_timeout=5.0, data_timeout=0.5)
    gw.configure(account(upstream, "shop", senders=["*@shop.example"]))

    def stall_then_read() -> list[bytes]:
        client = RawClient(gw.port)
        try:
            assert client.command(b"EHLO staller.test")[-1].startswith(b"250 ")
            assert client.command(b"MAIL FROM:<app@shop.example>") == [b"250 2.1.0 OK"]
            assert client.command(b"RCPT TO:<ops@example.org>") == [b"250 2.1.5 OK"]
            assert client.command(b"DATA")[0].startswith(b"354")
            client.send(b"Subject: half a message\r\n\r\nand then noth")  # ...and nothing more
            others = send(gw)  # another client, while this one stalls mid-DATA
            assert others[-1][0] == 250
            return client.reply() + client.reply()  # blocks until the gateway gives up on us
        finally:
            client.close()

    dropped = await in_thread(stall_then_read)
    assert dropped == [b"421 4.4.2 gw.test.example Error: timeout exceeded", b"<closed>"]
    [message] = upstream.messages
    assert b"half a message" not in message.data


async def test_clients_over_the_connection_limit_get_421_at_once(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8", max_connections=2)
    gw.configure(account(upstream, "shop", senders=["*@shop.example"]))
    first, second = await in_thread(RawClient, gw.port), await in_thread(RawClient, gw.port)
    try:
        third = await in_thread(RawClient, gw.port)
        assert third.greeting == [b"421 4.7.0 gw.test.example Too many connections, try again later"]
        assert third.reply() == [b"<closed>"]
        third.close()
        assert second.greeting[0].startswith(b"220 gw.test.example")
        await in_thread(second.command, b"QUIT")
        await until(lambda: len(gw.ingress.sessions) == 1)
        assert (await in_thread(send, gw))[-1][0] == 250  # a freed slot is usable again
    finally:
        first.close()
        second.close()


async def test_hot_reload_of_routing_while_clients_send_fails_nothing(
    ingress_factory: IngressFactory, upstream_factory
) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8")
    left, right = upstream_factory(), upstream_factory()
    layouts = [
        (account(left, "a", senders=["*@shop.example"]), account(right, "b", senders=["*@other.example"])),
        (
            account(left, "a", senders=["*@other.example"], pool={"maxConnections": 1}),
            account(right, "b", senders=["*@shop.example"]),
        ),
        (account(right, "c", senders=["*@shop.example", "*@other.example"], pool={"maxConnections": 3}),),
    ]
    gw.configure(*layouts[0])
    senders, per_sender = 4, 12
    for upstream in (left, right):  # each message takes a while upstream, so reloads land between messages
        upstream.data_delay = 0.02

    def client(index: int) -> list[tuple[int, str]]:
        sender = f"app{index}@{'shop' if index % 2 else 'other'}.example"
        data = f"From: {sender}\r\nSubject: reload\r\n\r\nhello\r\n".encode()
        with gw.smtp(starttls=False) as smtp:
            return [transaction(smtp, sender, ["ops@example.org"], data)[-1] for _ in range(per_sender)]

    work = asyncio.gather(*(in_thread(client, i) for i in range(senders)))
    def delivered() -> int:
        return len(left.messages) + len(right.messages)

    reloads = 0
    while not work.done():
        reloads += 1
        gw.configure(*layouts[reloads % len(layouts)])
        await until(functools.partial(lambda seen: delivered() > seen or work.done(), delivered()))  # one per message
    codes = await work
    assert all(code == 250 for codes_of_one in codes for code, _ in codes_of_one), [r for c in codes for r in c if r[0] != 250]
    assert delivered() == senders * per_sender
    assert reloads >= 2 * len(layouts)  # every layout was in force at least twice while messages flowed


async def test_shutdown_answers_every_open_session(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8")
    gw.configure(account(upstream, "shop", senders=["*@shop.example"]))
    upstream.data_delay = 0.5
    idle = await in_thread(RawClient, gw.port)
    await in_thread(idle.command, b"EHLO idle.test")
    busy = await in_thread(RawClient, gw.port)

    def start_transaction() -> None:
        busy.command(b"EHLO busy.test")
        busy.command(b"MAIL FROM:<app@shop.example>")
        busy.command(b"RCPT TO:<ops@example.org>")
        busy.command(b"DATA")
        busy.send(MESSAGE + b".\r\n")

    await in_thread(start_transaction)
    await until(lambda: gw.gateway.pool.stats()["apps/shop"]["active"] == 1)  # the message is on its way upstream
    stopping = asyncio.create_task(gw.gateway.stop())
    try:
        assert await in_thread(idle.reply) == [b"421 4.3.2 gw.test.example Service shutting down, try again later"]
        verdict = await in_thread(busy.reply)
        assert verdict[0].startswith(b"250 2.0.0 OK "), verdict  # the transaction in flight finished first
        assert await in_thread(busy.reply) == [b"421 4.3.2 gw.test.example Service shutting down, try again later"]
        await stopping
    finally:
        idle.close()
        busy.close()
    assert len(upstream.messages) == 1
    with pytest.raises(OSError):
        socket.create_connection((HOST, gw.port), timeout=2).close()


async def test_sigterm_with_sessions_open_gives_each_a_definitive_answer(
    tmp_path: Path, tls_files: TLSFiles, upstream: Upstream
) -> None:
    snapshot = ConfigSnapshot(revision=1, accounts=[account(upstream, "shop", senders=["*@shop.example"])])
    (tmp_path / "snapshot.json").write_text(snapshot.model_dump_json(by_alias=True))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ingress.gateway_process", str(tmp_path / "snapshot.json"), str(tls_files.cert),
        str(tls_files.key), stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parents[2]),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        port = int(line.split()[1])
        upstream.data_delay = 0.5
        idle = await in_thread(RawClient, port)
        await in_thread(idle.command, b"EHLO idle.test")
        busy = await in_thread(RawClient, port)
        await in_thread(busy.command, b"EHLO busy.test")
        await in_thread(busy.command, b"MAIL FROM:<app@shop.example>")
        await in_thread(busy.command, b"RCPT TO:<ops@example.org>")
        await in_thread(busy.command, b"DATA")
        await in_thread(busy.send, MESSAGE + b".\r\n")
        await until(lambda: upstream.counters.sessions_total >= 1)  # the gateway is relaying the message
        process.send_signal(signal.SIGTERM)
        assert (await in_thread(idle.reply))[0].startswith(b"421 4.3.2 ")
        assert (await in_thread(busy.reply))[0].startswith(b"250 2.0.0 OK ")
        assert (await in_thread(busy.reply))[0].startswith(b"421 4.3.2 ")
        assert await asyncio.wait_for(process.wait(), 30) == 0
        idle.close()
        busy.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert len(upstream.messages) == 1
