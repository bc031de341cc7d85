"""SMTP ingress: an SMTP listener in the gateway for apps that only speak SMTP.

Sessions are authenticated (SMTP AUTH with per-account client logins) or come
from trusted networks; each message is routed to an account (``routing``) and
relayed through the same relay core, limits and pool as the HTTP API.
"""

from .attach import attach
from .options import IngressOptions, add_arguments, from_args, parse_networks
from .routing import NoRoute, Route, Router
from .server import IngressServer

__all__ = [
    "IngressOptions",
    "IngressServer",
    "NoRoute",
    "Route",
    "Router",
    "add_arguments",
    "attach",
    "from_args",
    "parse_networks",
]
