"""Clients that pipeline commands and never read a reply must not keep a session slot, nor hold up a shutdown.

Such a client fills every buffer between it and the gateway with replies it
never reads, so the session blocks writing its next reply. Closing that
connection politely (flush, then close) would wait forever: the gateway has
to abort it. No login is needed to do this (``HELP`` is answered to anyone),
so it is also how an unauthenticated client could fill
``--smtp-max-connections`` and keep every legitimate client out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import pytest

from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, TLSFiles, in_thread

# Written again and again: HELP asks for ~15 times its size in replies, so a client that never reads
# soon fills every buffer between it and the gateway, and the session blocks writing a reply.
PIPELINE = b"HELP\r\n" * 10_000
SLOTS = 2
# What one stuck session may hold while it waits: its replies and unread commands stay in bounded buffers.
BUFFER_BOUND = 1024 * 1024


class StuckClient:
    """Connects with a tiny receive buffer, writes HELP after HELP and never reads a reply."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window stays tiny
        sock.connect((HOST, port))
        self.sock = tls.wrap_socket(sock, server_hostname=HOST) if tls is not None else sock

    def pump(self) -> None:
        """Write commands until the gateway drops the connection (or ``close`` is called); never read a reply.

        The kernel's buffers alone may take a few megabytes, so the client keeps
        writing: only a connection the gateway dropped ends this.
        """
        with contextlib.suppress(OSError):
            while True:
                self.sock.sendall(PIPELINE)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in sendall
        self.sock.close()


def greeting(port: int, tls: ssl.SSLContext | None) -> bytes:
    """The first line a new client hears (``b""`` when the connection closes without one)."""
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw:
            sock = tls.wrap_socket(raw, server_hostname=HOST) if tls is not None else raw
            with sock, sock.makefile("rb") as lines:
                return lines.readline()
    except OSError:
        return b""


async def stuck_gateway(
    ingress_factory: IngressFactory, tls_files: TLSFiles, listener: str, **options: float
) -> tuple[IngressGateway, int, ssl.SSLContext | None, list[StuckClient], list[asyncio.Future[None]]]:
    """A gateway with ``SLOTS`` session slots, every one taken by a stuck client whose session is blocked writing."""
    gw = await ingress_factory(max_connections=SLOTS, implicit_tls_port=0, **options)
    port = gw.ingress.ports[listener]
    tls = tls_files.client_context() if listener == "smtps" else None
    clients = [await in_thread(StuckClient, port, tls) for _ in range(SLOTS)]
    pumps: list[asyncio.Future[None]] = [asyncio.ensure_future(in_thread(client.pump)) for client in clients]

    seen: set[object] = set()

    def blocked_writing() -> bool:
        """Every session was seen with replies its client has not taken (it waits in drain()), holding bounded memory.

        Seen at some point, not all at once: with a short command timeout the
        first may already be dropped when the second gets stuck.
        """
        for session in list(gw.ingress.sessions):
            transport = session.transport
            if transport is None:
                continue
            assert isinstance(transport, asyncio.WriteTransport), transport  # aiosmtpd declares a BaseTransport
            if transport.get_write_buffer_size() > 0:
                assert transport.get_write_buffer_size() < BUFFER_BOUND
                assert len(session._reader._buffer) < BUFFER_BOUND  # type: ignore[attr-defined]
                seen.add(session)
        return len(seen) == SLOTS

    await poll(blocked_writing, timeout=30)
    return gw, port, tls, clients, pumps


async def poll(condition: object, timeout: float) -> None:
    """Wait for ``condition()`` (sync or async) with a deadline; a condition decides, not a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.05)


async def release(clients: list[StuckClient], pumps: list[asyncio.Future[None]]) -> None:
    for client in clients:
        client.close()
    await asyncio.gather(*pumps, return_exceptions=True)


@pytest.mark.parametrize("listener", ["smtp", "smtps"])
async def test_stuck_clients_lose_their_slots_at_the_command_timeout(
    ingress_factory: IngressFactory, tls_files: TLSFiles, listener: str
) -> None:
    _, port, tls, clients, pumps = await stuck_gateway(ingress_factory, tls_files, listener, command_timeout=2.0)
    try:

        async def admitted() -> bool:  # a legitimate client is greeted, not turned away with 421
            return (await in_thread(greeting, port, tls)).startswith(b"220 ")

        await poll(admitted, timeout=30)
        await poll(lambda: all(pump.done() for pump in pumps), timeout=30)  # the gateway dropped them
    finally:
        await release(clients, pumps)


@pytest.mark.parametrize("listener", ["smtp", "smtps"])
async def test_stopping_the_ingress_returns_while_stuck_clients_are_connected(
    ingress_factory: IngressFactory, tls_files: TLSFiles, listener: str
) -> None:
    gw, _, _, clients, pumps = await stuck_gateway(
        ingress_factory, tls_files, listener, command_timeout=600.0, shutdown_grace=0.5
    )
    try:
        assert not any(pump.done() for pump in pumps)  # the gateway stopped reading them: they are stuck
        await asyncio.wait_for(gw.ingress.stop(), 30)  # a hang guard, not a timing assertion
        assert not gw.ingress.sessions
        await poll(lambda: all(pump.done() for pump in pumps), timeout=30)
    finally:
        await release(clients, pumps)
