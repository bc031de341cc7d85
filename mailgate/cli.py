"""The ``mailgate`` command: one entry point, one small function per subcommand.

Subcommands import their implementation lazily so that, for example, the
operator's dependencies are never loaded by a gateway process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _crd(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _add_crd(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("crd", help="print the SmtpAccount CustomResourceDefinition YAML")
    parser.set_defaults(func=_crd)


def _serve(args: argparse.Namespace) -> int:
    from .standalone.serve import serve

    return serve(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="run a gateway without a cluster, from SmtpAccount and Secret YAML files (reloaded on change)",
        description="Serve the send API from the same SmtpAccount and Secret YAML that `kubectl apply -f` takes. "
        "The files are watched and reloaded on change; a broken file keeps the last good configuration.",
    )
    parser.add_argument("-f", "--filename", action="append", required=True, metavar="FILE", help="YAML file (repeatable)")
    parser.add_argument("--api-keys", metavar="FILE", help="YAML file of hashed API keys (see `mailgate apikey`)")
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="without --api-keys: let any caller use any account"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    parser.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS", help="file poll interval")
    parser.add_argument("--log-format", choices=["json", "text"], default="text", help="log format (default text)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_smtp_ingress_arguments(parser)
    _add_queue_arguments(parser)
    parser.set_defaults(func=_serve)


def _dev(args: argparse.Namespace) -> int:
    from .standalone.dev import dev

    return dev(args)


def _add_dev(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dev",
        help="zero-config demo: a gateway, a local capture SMTP server and a sample account, no auth",
        description="Start a capture SMTP server on 127.0.0.1, a sample account pointing at it and a gateway "
        "without authentication; captured messages are listed at GET /dev/messages. For development only.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0 picks a free one)")
    parser.set_defaults(func=_dev)


def _apikey(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .gateway.apikeys import entry_line, generate_key
    from .validation import field_problems

    key = generate_key()
    try:
        line = entry_line(args.name, key, args.account)  # validates name and patterns before printing a key
    except ValidationError as error:
        for problem in field_problems(error, whole="arguments"):
            print(f"mailgate apikey: {problem.field}: {problem.message}", file=sys.stderr)
        return 2
    print(f"# API key for {args.name!r}: shown only now; give it to the caller and keep it secret.")
    print(key)
    print("# Add this entry under `keys:` in the file given to `mailgate serve --api-keys` (it holds only a hash):")
    print(line)
    return 0


def _add_apikey(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("apikey", help="generate an API key for `mailgate serve` and print the entry for the keys file")
    parser.add_argument("--name", required=True, help="caller name shown in logs (letters, digits, - _ .)")
    parser.add_argument(
        "--account",
        action="append",
        required=True,
        metavar="PATTERN",
        help="account the key may use: namespace/name, namespace/* or * (repeatable)",
    )
    parser.set_defaults(func=_apikey)


def _gateway(args: argparse.Namespace) -> int:
    from .gateway.main import main

    return main(args)


def _add_smtp_ingress_arguments(parser: argparse.ArgumentParser) -> None:
    """The --smtp-* flags of the SMTP ingress (off unless --smtp-port or --smtp-implicit-tls-port is given)."""
    from .ingress.options import add_arguments

    add_arguments(parser)


def _add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    from .gateway.queue_args import add_queue_arguments

    add_queue_arguments(parser)


def _add_gateway(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gateway",
        help="run a gateway fed by the operator over the admin API (the in-cluster Deployment)",
        description="Serve the send API, probes and metrics on --port and the admin (config) API on --admin-port. "
        "The gateway is unready until the first configuration snapshot arrives. SIGTERM drains gracefully.",
    )
    parser.add_argument("--host", help="send API address (default 127.0.0.1; 0.0.0.0 with --in-cluster)")
    parser.add_argument("--port", type=int, default=8080, help="send API port (default 8080; 0 picks a free one)")
    parser.add_argument("--admin-host", help="admin API address (default: --host)")
    parser.add_argument("--admin-port", type=int, default=8081, help="admin API port (default 8081)")
    parser.add_argument(
        "--admin-token-file", metavar="FILE", help="file holding the admin bearer token (else $MAILGATE_ADMIN_TOKEN)"
    )
    parser.add_argument("--admin-tls-cert", metavar="FILE", help="serve the admin API over TLS with this PEM certificate")
    parser.add_argument("--admin-tls-key", metavar="FILE", help="its private key (default: in the certificate file)")
    parser.add_argument(
        "--peer-admin-port",
        type=int,
        metavar="PORT",
        help="peers' admin API port, where SMTP messages for an account this pod holds no connection share of "
        "are relayed (default: --admin-port; every pod of a Deployment shares it)",
    )
    parser.add_argument(
        "--admin-ca-file",
        metavar="FILE",
        help="CA that signed the peers' admin certificates, trusted when relaying to them "
        "(default: the chain in --admin-tls-cert)",
    )
    parser.add_argument("--api-keys", metavar="FILE", help="YAML file of hashed API keys callers authenticate with")
    parser.add_argument("--insecure-no-auth", action="store_true", help="let any caller use any account (tests, demos)")
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        help="pod defaults: ServiceAccount tokens via TokenReview, listen on 0.0.0.0, JSON logs, $POD_NAME, 5 s unready delay",
    )
    parser.add_argument("--kubeconfig", metavar="FILE", help="check ServiceAccount tokens through this cluster (outside a pod)")
    parser.add_argument("--log-format", choices=["json", "text"], help="log format (default text; json with --in-cluster)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"], help="auto: uvloop when installed"
    )
    parser.add_argument("--hostname", help="domain of generated Message-IDs (default: the host or pod name)")
    parser.add_argument("--ehlo-hostname", help="name sent in EHLO to upstreams (default: the FQDN)")
    parser.add_argument(
        "--upstream-timeout", type=float, default=30.0, metavar="SECONDS", help="per SMTP command, connect included"
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        metavar="SECONDS",
        help="after SIGTERM, stay up unready this long before closing (default 0; 5 with --in-cluster; "
        "at most a quarter of --shutdown-grace)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="the whole shutdown, SIGTERM to exit, fits in this (default 30): set it to the pod's "
        "terminationGracePeriodSeconds. Work in progress finishes until shortly before its end, then what "
        "still waits on an upstream is answered and every connection is closed",
    )
    _add_smtp_ingress_arguments(parser)
    _add_queue_arguments(parser)
    parser.set_defaults(func=_gateway)


def _operator(args: argparse.Namespace) -> int:
    from .operator.main import main

    return main(args)


def _add_operator(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "operator",
        help="run the kopf operator that pushes SmtpAccounts to the gateway pods",
        description="Watch SmtpAccounts and their Secrets, split each account's limits across the gateway pods "
        "and push the result to every pod's admin API. Logs in in-cluster, else with $KUBECONFIG.",
    )
    parser.add_argument("--gateway-namespace", required=True, help="namespace of the gateway pods (and of the Lease)")
    parser.add_argument(
        "--gateway-selector", default="app.kubernetes.io/component=gateway", help="label selector of the gateway pods"
    )
    parser.add_argument(
        "--admin-token-file", metavar="FILE", help="file holding the admin bearer token (else $MAILGATE_ADMIN_TOKEN)"
    )
    parser.add_argument("--admin-port", type=int, default=8081, help="gateways' admin API port (default 8081)")
    parser.add_argument(
        "--admin-ca-file", metavar="FILE", help="talk https to gateways' admin API, trusting this CA (--admin-tls-cert)"
    )
    parser.add_argument("--send-port", type=int, default=8080, help="gateways' send API port, for forwarding peers")
    parser.add_argument(
        "--namespace", action="append", metavar="NS", help="serve SmtpAccounts in NS (repeatable; default: all namespaces)"
    )
    parser.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (default 8080)")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (default 9090)")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address of the health and metrics servers")
    parser.add_argument(
        "--advertise-address",
        help="address gateways reach this replica at, for OAuth2 token refreshes after a 535 (default: $POD_IP)",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=30.0, help="read every gateway's status this often and repair drift"
    )
    parser.add_argument(
        "--account-resync-seconds",
        metavar="SECONDS",
        help="list every SmtpAccount this often and repair what lost events left unhandled"
        " (default $MAILGATE_ACCOUNT_RESYNC_SECONDS, else 300)",
    )
    replicas = parser.add_mutually_exclusive_group(required=True)
    replicas.add_argument(
        "--peering", metavar="NAME", help="elect one active replica with the Lease NAME in the gateway namespace"
    )
    replicas.add_argument("--standalone", action="store_true", help="a single replica: no leader election")
    parser.add_argument("--identity", help="this replica's name in the Lease (default: $POD_NAME or host, plus a suffix)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_operator)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_crd, _add_serve, _add_dev, _add_apikey, _add_gateway, _add_operator,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description="A Kubernetes-native mail gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
