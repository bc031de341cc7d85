"""``mailgate operator``: turn parsed arguments into ``OperatorOptions`` and run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import kubernetes_asyncio.config

from .refresh_api import PATH as REFRESH_PATH
from .resync import DEFAULT_INTERVAL as DEFAULT_RESYNC_INTERVAL
from .runner import OperatorOptions, default_identity, run


def read_admin_token(path: str | None) -> str | None:
    """The admin API bearer token from ``path``, else ``$MAILGATE_ADMIN_TOKEN``; surrounding whitespace dropped."""
    token = Path(path).read_text(encoding="utf-8") if path else os.environ.get("MAILGATE_ADMIN_TOKEN", "")
    return token.strip() or None


def token_refresh_url(address: str | None, port: int) -> str | None:
    """Where gateways reach this replica's token refresh (its metrics server); None without an address."""
    if not address:
        return None
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{REFRESH_PATH}"


def account_resync_seconds(value: str | None) -> float:
    """``--account-resync-seconds`` or ``$MAILGATE_ACCOUNT_RESYNC_SECONDS`` (``value``): seconds between account
    resyncs, a positive number."""
    if not value:
        return DEFAULT_RESYNC_INTERVAL
    seconds = float(value)  # ValueError names the text, which is no secret
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be a positive number of seconds, not {value!r}")
    return seconds


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        token = read_admin_token(args.admin_token_file)
    except OSError as error:
        print(f"mailgate operator: cannot read --admin-token-file: {error.strerror}", file=sys.stderr)
        return 2
    if token is None:
        print("mailgate operator: no admin token (--admin-token-file or $MAILGATE_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    try:
        account_resync = account_resync_seconds(args.account_resync_seconds or os.environ.get("MAILGATE_ACCOUNT_RESYNC_SECONDS"))
    except ValueError as error:
        print(f"mailgate operator: --account-resync-seconds: {error}", file=sys.stderr)
        return 2
    options = OperatorOptions(
        gateway_namespace=args.gateway_namespace,
        gateway_selector=args.gateway_selector,
        admin_token=token,
        admin_port=args.admin_port,
        admin_ca_file=args.admin_ca_file,
        send_port=args.send_port,
        namespaces=tuple(dict.fromkeys(args.namespace or ())),
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        resync_seconds=args.resync_seconds,
        account_resync_seconds=account_resync,
        lease_name=None if args.standalone else args.peering,
        identity=args.identity or default_identity(),
        token_refresh_url=token_refresh_url(args.advertise_address or os.environ.get("POD_IP"), args.metrics_port),
    )
    try:
        return asyncio.run(run(options))
    except kubernetes_asyncio.config.ConfigException as error:
        print(f"mailgate operator: no Kubernetes credentials (in-cluster or $KUBECONFIG): {error}", file=sys.stderr)
        return 2
