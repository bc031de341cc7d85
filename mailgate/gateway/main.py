"""``mailgate gateway``: run one gateway process fed by the operator through the admin API.

Flags are declared in ``mailgate/cli.py`` (``_add_gateway``); this module turns
them into ``GatewayOptions`` and an ``Authenticator`` and runs the gateway
until SIGTERM. ``--in-cluster`` picks the defaults a pod wants (listen on all
interfaces, JSON logs, the pod name in Message-IDs, a short unready delay
before closing the listener so the Service stops routing here first).
``--shutdown-grace`` is the whole shutdown's budget; the Helm chart sets it to
the pod's ``terminationGracePeriodSeconds`` (see ``app.ShutdownPlan``).

Callers authenticate with their Kubernetes ServiceAccount token, checked by
a TokenReview (the default with ``--in-cluster``, or with ``--kubeconfig``
outside a pod), or with API keys (``--api-keys``); ``--insecure-no-auth`` is
for tests and demos.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..gcpause import freeze_after_slow_collections
from ..ingress.attach import attach_if_enabled
from ..ingress.options import IngressOptions, from_args
from ..logs import configure_logging
from .app import Gateway, GatewayOptions, run_until_signalled
from .auth import AllowAnyone, Authenticator
from .queue_args import queue_options

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


def static_authenticator(args: argparse.Namespace) -> Authenticator | None:
    """API keys or nobody-checks; ``None`` when callers are to be checked with TokenReviews."""
    if args.api_keys:
        from ..yamlconfig import ConfigError
        from .apikeys import ApiKeys, load_keys

        try:
            return ApiKeys(load_keys(args.api_keys))
        except ConfigError as error:
            raise UsageError("; ".join(error.problems)) from None
    if args.insecure_no_auth:
        return AllowAnyone()
    if args.in_cluster or args.kubeconfig:
        return None
    raise UsageError(
        "choose how callers authenticate: --in-cluster or --kubeconfig (ServiceAccount tokens), "
        "--api-keys FILE, or --insecure-no-auth for tests and demos"
    )


def options(args: argparse.Namespace) -> GatewayOptions:
    in_cluster = args.in_cluster
    host = args.host or ("0.0.0.0" if in_cluster else "127.0.0.1")
    hostname = args.hostname or (os.environ.get("POD_NAME") if in_cluster else None) or socket.gethostname()
    delay = args.shutdown_delay if args.shutdown_delay is not None else (IN_CLUSTER_SHUTDOWN_DELAY if in_cluster else 0.0)
    if delay < 0 or args.shutdown_grace < 0:
        raise UsageError("--shutdown-delay and --shutdown-grace cannot be negative")
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
        admin_tls_cert=args.admin_tls_cert,
        admin_tls_key=args.admin_tls_key or args.admin_tls_cert,
        peer_admin_port=args.peer_admin_port,
        admin_ca_file=args.admin_ca_file,
        queue=queue_options(args),
        freeze_configuration=True,
    )


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or by default when installed: it halves the event loop's share of each request."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(args: argparse.Namespace) -> int:
    try:
        authenticator = static_authenticator(args)
        gateway_options = options(args)
        factory = loop_factory(args.event_loop)
        smtp = from_args(args)
    except (UsageError, ValueError) as exc:
        print(f"mailgate gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format or ("json" if args.in_cluster else "text"), args.log_level.upper())
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve_freezing(gateway_options, authenticator, args.kubeconfig, smtp))
    except OSError as exc:  # the port is taken, the address does not exist
        log.error("cannot serve: %s", exc)
        return 1
    return 0


async def _serve_freezing(
    gateway_options: GatewayOptions, authenticator: Authenticator | None, kubeconfig: str | None, smtp: IngressOptions
) -> None:
    """Accounts added one at a time by the operator grow a long-lived state no snapshot freezes (gcpause)."""
    with freeze_after_slow_collections():
        await _serve(gateway_options, authenticator, kubeconfig, smtp)


async def _serve(
    gateway_options: GatewayOptions, authenticator: Authenticator | None, kubeconfig: str | None, smtp: IngressOptions
) -> None:
    """The TokenReview client needs the running loop, so it is made here and closed on the way out."""
    if authenticator is not None:
        await run_until_signalled(attach_if_enabled(Gateway(authenticator, gateway_options), smtp))
        return
    from .tokenreview import TokenReviewAuthenticator, kubernetes_api_client

    api = await kubernetes_api_client(kubeconfig)
    try:
        await run_until_signalled(attach_if_enabled(Gateway(TokenReviewAuthenticator(api), gateway_options), smtp))
    finally:
        await api.close()
