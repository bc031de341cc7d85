"""Kubernetes probes on the send port.

``/livez`` answers whenever the event loop does: restarting a pod cures a
wedged loop, nothing else. ``/readyz`` is 200 once a configuration snapshot
has arrived and until shutdown begins. It deliberately ignores upstream
health: one broken upstream must not take a pod (and every other account it
serves) out of the Service; upstream health is reported per account in the
admin status and in metrics instead.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class Probes:
    def __init__(self, configured: Callable[[], bool], draining: Callable[[], bool]) -> None:
        self._configured = configured
        self._draining = draining

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)

    def ready(self) -> bool:
        return self._configured() and not self._draining()

    async def livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self._draining():
            return web.Response(status=503, text="shutting down\n")
        if not self._configured():
            return web.Response(status=503, text="no configuration received yet\n")
        return web.Response(text="ok\n")
