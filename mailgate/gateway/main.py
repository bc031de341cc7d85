"""``mailgate gateway``: run one gateway process fed by the operator through the admin API.

Flags are declared in ``mailgate/cli.py`` (``_add_gateway``); this module turns
them into ``GatewayOptions`` and an ``Authenticator`` and runs the gateway
until SIGTERM. ``--in-cluster`` picks the defaults a pod wants (listen on all
interfaces, JSON logs, the pod name in Message-IDs, a short unready delay
before closing the listener so the Service stops routing here first).

Callers authenticate with API keys (``--api-keys``) until Kubernetes
ServiceAccount tokens (TokenReview) plug into the same ``Authenticator``
protocol; ``--insecure-no-auth`` is for tests and demos.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from .app import Gateway, GatewayOptions, run_until_signalled
from .auth import AllowAnyone, Authenticator
from .logs import configure_logging

ADMIN_TOKEN_ENV = "MAILGATE_ADMIN_TOKEN"
IN_CLUSTER_SHUTDOWN_DELAY = 5.0

log = logging.getLogger("mailgate.gateway")


class UsageError(Exception):
    pass


def admin_token(args: argparse.Namespace) -> str:
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read --admin-token-file: {exc.strerror}") from None
    else:
        token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"the admin API needs a token: --admin-token-file FILE or ${ADMIN_TOKEN_ENV}")
    return token


def authenticator(args: argparse.Namespace) -> Authenticator:
    if args.api_keys:
        from ..standalone.apikeys import ApiKeys, load_keys
        from ..standalone.loader import ConfigError

        try:
            return ApiKeys(load_keys(args.api_keys))
        except ConfigError as error:
            raise UsageError("; ".join(error.problems)) from None
    if args.insecure_no_auth:
        return AllowAnyone()
    raise UsageError("choose how callers authenticate: --api-keys FILE, or --insecure-no-auth for tests and demos")


def options(args: argparse.Namespace) -> GatewayOptions:
    in_cluster = args.in_cluster
    host = args.host or ("0.0.0.0" if in_cluster else "127.0.0.1")
    hostname = args.hostname or (os.environ.get("POD_NAME") if in_cluster else None) or socket.gethostname()
    delay = args.shutdown_delay if args.shutdown_delay is not None else (IN_CLUSTER_SHUTDOWN_DELAY if in_cluster else 0.0)
    return GatewayOptions(
        host=host,
        port=args.port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        admin_token=admin_token(args),
        hostname=hostname,
        ehlo_hostname=args.ehlo_hostname,
        upstream_timeout=args.upstream_timeout,
        shutdown_delay=delay,
        shutdown_grace=args.shutdown_grace,
    )


def main(args: argparse.Namespace) -> int:
    log_format = args.log_format or ("json" if args.in_cluster else "text")
    configure_logging(log_format, args.log_level.upper())
    try:
        gateway = Gateway(authenticator(args), options(args))
    except UsageError as exc:
        print(f"mailgate gateway: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_until_signalled(gateway))
    except OSError as exc:  # the port is taken, the address does not exist
        log.error("cannot serve: %s", exc)
        return 1
    return 0
