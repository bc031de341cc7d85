"""Settings of the SMTP ingress, and the command-line flags that set them.

The listener is off unless a port is given: a gateway that only serves HTTP
opens no SMTP port by accident. ``add_arguments`` puts the flags on any
argparse parser (``mailgate gateway``, ``mailgate serve``, ``mailgate dev``)
and ``from_args`` reads them back, so every command spells them the same.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IngressOptions:
    """Everything the listener needs besides the accounts, which arrive live."""

    port: int | None = None  # SMTP with STARTTLS (when a certificate is given); None: no such listener
    implicit_tls_port: int | None = None  # TLS from the first byte (submissions, port 465)
    host: str = "0.0.0.0"
    tls_cert: str | None = None
    tls_key: str | None = None
    trusted_networks: tuple[Network, ...] = ()  # may relay without AUTH (Postfix's mynetworks); none by default
    allow_plaintext_auth: bool = False  # AUTH without TLS, and then only from trusted networks
    default_account: str | None = None  # namespace/name for senders no account claims
    hostname: str = field(default_factory=socket.gethostname)  # greeting and Received header
    max_connections: int = 100
    max_recipients: int = 100  # RFC 5321 4.5.3.1.8: at least 100 must be accepted
    command_timeout: float = 60.0  # between commands; a client that stalls longer is dropped
    data_timeout: float = 300.0  # for the whole message text after DATA
    smtputf8: bool = True
    # IngressServer.stop() on its own: how long open transactions may take to finish. Inside a gateway the
    # gateway's --shutdown-grace decides instead, so that one number bounds the whole shutdown.
    shutdown_grace: float = 20.0

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--smtp-tls-cert and --smtp-tls-key go together")
        if self.implicit_tls_port is not None and self.tls_cert is None:
            raise ValueError("--smtp-implicit-tls-port needs --smtp-tls-cert and --smtp-tls-key")
        if self.default_account is not None and self.default_account.count("/") != 1:
            raise ValueError("--smtp-default-account must be namespace/name")
        if self.max_connections < 1 or self.max_recipients < 1:
            raise ValueError("connection and recipient limits must be at least 1")
        if self.command_timeout <= 0 or self.data_timeout <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def enabled(self) -> bool:
        return self.port is not None or self.implicit_tls_port is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def parse_networks(text: str | Sequence[str]) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` (or a list of such strings) as networks; a bare address is a /32 or /128."""
    items = [text] if isinstance(text, str) else list(text)
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts)


def _networks(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--smtp-*`` flags (all optional; the listener stays off without a port)."""
    group = parser.add_argument_group("SMTP ingress", "an SMTP listener for apps that cannot use HTTP (off by default)")
    group.add_argument(
        "--smtp-port", type=int, metavar="PORT", help="listen for SMTP (with STARTTLS when a certificate is given)"
    )
    group.add_argument("--smtp-implicit-tls-port", type=int, metavar="PORT", help="also listen with implicit TLS (like 465)")
    group.add_argument("--smtp-host", default="0.0.0.0", metavar="ADDR", help="address to bind (default: all)")
    group.add_argument("--smtp-tls-cert", metavar="FILE", help="PEM certificate chain for STARTTLS and implicit TLS")
    group.add_argument("--smtp-tls-key", metavar="FILE", help="PEM private key of that certificate")
    group.add_argument(
        "--smtp-trusted-networks",
        type=_networks,
        default=(),
        metavar="CIDRS",
        help="comma-separated networks that may send without AUTH (default: none, so every client must log in)",
    )
    group.add_argument(
        "--smtp-allow-plaintext-auth",
        action="store_true",
        help="accept AUTH without TLS from the trusted networks (never from anywhere else)",
    )
    group.add_argument("--smtp-default-account", metavar="NS/NAME", help="account for senders that no account claims")
    group.add_argument("--smtp-hostname", metavar="NAME", help="name in the greeting and Received header (default: host name)")
    group.add_argument("--smtp-max-connections", type=int, default=IngressOptions.max_connections, metavar="N")
    group.add_argument("--smtp-max-recipients", type=int, default=IngressOptions.max_recipients, metavar="N")
    group.add_argument(
        "--smtp-command-timeout", type=float, default=IngressOptions.command_timeout, metavar="SECONDS",
        help="drop a client silent for this long between commands",
    )
    group.add_argument("--smtp-data-timeout", type=float, default=IngressOptions.data_timeout, metavar="SECONDS")
    group.add_argument("--smtp-no-smtputf8", action="store_true", help="do not offer SMTPUTF8")


def from_args(args: argparse.Namespace) -> IngressOptions:
    """The options the flags describe; check ``.enabled`` before starting a listener."""
    values: dict[str, object] = {
        "port": args.smtp_port,
        "implicit_tls_port": args.smtp_implicit_tls_port,
        "host": args.smtp_host,
        "tls_cert": args.smtp_tls_cert,
        "tls_key": args.smtp_tls_key,
        "trusted_networks": tuple(args.smtp_trusted_networks),
        "allow_plaintext_auth": args.smtp_allow_plaintext_auth,
        "default_account": args.smtp_default_account,
        "max_connections": args.smtp_max_connections,
        "max_recipients": args.smtp_max_recipients,
        "command_timeout": args.smtp_command_timeout,
        "data_timeout": args.smtp_data_timeout,
        "smtputf8": not args.smtp_no_smtputf8,
    }
    if args.smtp_hostname:
        values["hostname"] = args.smtp_hostname
    return IngressOptions(**values)  # type: ignore[arg-type]
