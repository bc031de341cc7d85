"""Run the SMTP ingress inside a ``gateway.app.Gateway``, in step with its lifecycle.

Hooks into the send application's aiohttp signals instead of the gateway's
own code: ``on_startup`` opens the SMTP listeners when the gateway starts,
``on_shutdown`` drains them on SIGTERM. aiohttp runs ``on_shutdown`` before
the cleanup that closes the upstream pool, so a message in flight on an SMTP
session still reaches its upstream, and its client hears the verdict, before
any upstream connection is closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .options import IngressOptions
from .server import IngressServer

if TYPE_CHECKING:
    from ..gateway.app import Gateway


def attach(gateway: Gateway, options: IngressOptions) -> IngressServer:
    """Add the listener to ``gateway`` (before ``gateway.start()``); returns it, for its ports and router."""
    ingress = IngressServer(options, gateway.registry, gateway.relay)

    async def start(app: web.Application) -> None:
        await ingress.start()

    async def stop(app: web.Application) -> None:
        await ingress.stop()

    gateway.app.on_startup.append(start)
    gateway.app.on_shutdown.append(stop)
    return ingress
