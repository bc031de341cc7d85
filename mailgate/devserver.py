"""A capture SMTP server for ``mailgate dev``: accepts every message and keeps it in memory.

It runs on the gateway's own event loop (``loop.create_server`` with
aiosmtpd's protocol, not aiosmtpd's threaded ``Controller``), binds
127.0.0.1 only, and keeps a bounded number of messages and bytes so that a
forgotten dev gateway cannot grow without limit: the oldest messages are
dropped first. Each message is parsed once, on receipt, into the JSON shape
``GET /dev/messages`` returns (envelope, headers, text and HTML bodies,
attachment summaries, and the raw message).
"""

from __future__ import annotations

import asyncio
import email
import itertools
from collections import deque
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

DEFAULT_MAX_MESSAGES = 100
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class CaptureStore:
    """The captured messages, oldest first, bounded by count and by total size."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[dict[str, Any]] = deque()
        self._bytes = 0
        self._ids = itertools.count(1)

    def add(self, mail_from: str, rcpt_tos: list[str], mail_options: list[str], data: bytes) -> dict[str, Any]:
        captured = {
            "id": next(self._ids),
            "receivedAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "envelope": {"mailFrom": mail_from, "rcptTos": rcpt_tos, "mailOptions": mail_options},
            "size": len(data),
            **_describe(data),
        }
        self._messages.append(captured)
        self._bytes += len(data)
        while len(self._messages) > self.max_messages or (self._bytes > self.max_bytes and len(self._messages) > 1):
            self._bytes -= self._messages.popleft()["size"]
        return captured

    def messages(self) -> list[dict[str, Any]]:
        return list(self._messages)

    def clear(self) -> None:
        self._messages.clear()
        self._bytes = 0


def _describe(data: bytes) -> dict[str, Any]:
    """Headers, bodies and attachments as a reader wants them; the raw text for everything else.

    A message the parser chokes on (a bogus charset, say) is still captured,
    with only its raw text: a capture server exists to show what arrived.
    """
    raw = data.decode("utf-8", errors="replace")
    try:
        return {**_parse(data), "raw": raw}
    except Exception as error:
        unparsed: dict[str, Any] = {"headers": [], "subject": None, "text": None, "html": None, "attachments": []}
        return {**unparsed, "raw": raw, "parseError": str(error)}


def _parse(data: bytes) -> dict[str, Any]:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        "headers": [{"name": name, "value": str(value)} for name, value in message.items()],
        "subject": str(message.get("Subject", "")),
        "text": _content(text),
        "html": _content(html),
        "attachments": [
            {
                "filename": part.get_filename(),
                "contentType": part.get_content_type(),
                "size": len(part.get_payload(decode=True) or b""),
            }
            for part in message.iter_attachments()
        ],
    }


def _content(part: MIMEPart | None) -> str | None:
    """A text part decoded, with the wire's CRLF line ends shown as plain newlines (``raw`` keeps the bytes)."""
    return part.get_content().replace("\r\n", "\n") if part is not None else None


class _CaptureHandler:
    def __init__(self, store: CaptureStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        self.store.add(envelope.mail_from or "", list(envelope.rcpt_tos), list(envelope.mail_options), data)
        return "250 2.0.0 OK captured"


class CaptureServer:
    """aiosmtpd on 127.0.0.1 in the running loop; ``port=0`` picks a free port (read ``port`` after start)."""

    def __init__(self, store: CaptureStore | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store or CaptureStore()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()

    async def start(self) -> CaptureServer:
        handler = _CaptureHandler(self.store)
        loop = asyncio.get_running_loop()
        sessions = self._sessions

        class _Session(SMTP):
            """Tracks itself so ``stop`` can close sessions the gateway's pool still holds open."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sessions.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sessions.discard(self)
                super().connection_lost(error)

        # A fixed hostname: aiosmtpd's default calls socket.getfqdn(), a DNS lookup that can stall.
        self._server = await loop.create_server(
            lambda: _Session(handler, hostname="mailgate-dev", enable_SMTPUTF8=True, loop=loop), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await self._server.wait_closed()
        self._server = None


def dev_routes(store: CaptureStore) -> list[web.RouteDef]:
    """``GET /dev/messages`` lists what the capture server received; ``DELETE`` empties it."""

    async def list_messages(request: web.Request) -> web.Response:
        return web.json_response(store.messages())

    async def clear_messages(request: web.Request) -> web.Response:
        store.clear()
        return web.Response(status=204)

    return [web.get("/dev/messages", list_messages), web.delete("/dev/messages", clear_messages)]
