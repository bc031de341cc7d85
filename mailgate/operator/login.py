"""Logging in to the apiserver through one bounded connection pool.

kopf's own HTTP session allows any number of connections
(``TCPConnector(limit=0)``), so every request in flight opens its own TLS
connection to the apiserver. At start-up with 500 SmtpAccounts that was 513
sockets at ~300 KB each (asyncio's SSL buffers and OpenSSL's), and the
operator's RSS went from 113 to 260 MB; with 10,000 accounts it would be
gigabytes. kopf takes a session of our own through its documented login
result ``kopf.AiohttpSession``: this module builds one from exactly the
credentials kopf would use (``kopf.login_via_async_client``), with a bounded
connector. Watch streams hold a connection each for their whole life, so the
bound leaves room for them on top of the requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf

REQUESTS_IN_FLIGHT = 32
WATCHES_PER_NAMESPACE = 2  # SmtpAccounts and Secrets
OLD_SESSION_GRACE = 60.0  # a re-login's predecessor closes once its requests (30 s timeout) are done


class BoundedLogin:
    """A kopf login handler; ``close`` (once kopf has returned) closes every session it made."""

    def __init__(self, namespaces: int) -> None:
        self.limit = REQUESTS_IN_FLIGHT + WATCHES_PER_NAMESPACE * max(namespaces, 1)
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def login(self, **kwargs: Any) -> kopf.AiohttpSession | None:
        """The handler (a method: kopf must see a coroutine function to await it)."""
        info = await kopf.login_via_async_client(**kwargs)
        if info is None:
            return None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )
        if self._session is not None:  # kopf logs in again when a token expires: retire the old session
            task = asyncio.get_running_loop().create_task(_close_later(self._session, OLD_SESSION_GRACE))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._session = session
        return kopf.AiohttpSession(
            server=info.server,
            default_namespace=info.default_namespace,
            priority=info.priority,
            expiration=info.expiration,
            aiohttp_session=session,
        )

    async def close(self) -> None:
        for task in list(self._closing):  # retired sessions close now, not after their grace
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _close_later(session: aiohttp.ClientSession, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await session.close()
