"""Run the SMTP ingress inside a ``gateway.app.Gateway``, in step with its lifecycle.

The ingress is one of the gateway's front doors (``Gateway.add_door``): the
gateway opens its listeners once the relay core, the pool and the outbox
run, after the HTTP listener, and on SIGTERM the gateway closes its listeners with
the HTTP one, lets SMTP transactions in progress finish alongside HTTP
requests, answers what still waits on an upstream before any upstream session
is closed, and then closes the remaining sessions, all within the one
shutdown grace (see ``gateway.app``). A client in the middle of a message
still hears the upstream's verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .options import IngressOptions

if TYPE_CHECKING:
    from ..gateway.app import Gateway
    from .server import IngressServer


def attach(gateway: Gateway, options: IngressOptions) -> IngressServer:
    """Add the listener to ``gateway`` (before ``gateway.start()``); returns it, for its ports and router."""
    from .server import IngressServer  # aiosmtpd: loaded only by gateways that open an SMTP listener

    ingress = IngressServer(options, gateway.registry, gateway.relay, gateway.outbox, gateway.router)
    gateway.add_door(ingress)
    return ingress


def attach_if_enabled(gateway: Gateway, options: IngressOptions) -> Gateway:
    """Attach the SMTP listener when --smtp-port or --smtp-implicit-tls-port asked for one; returns ``gateway``."""
    if options.enabled:
        attach(gateway, options)
    return gateway
