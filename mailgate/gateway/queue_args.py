"""The ``--queue*`` flags shared by ``mailgate gateway``, ``serve`` and ``dev``, turned into ``OutboxOptions``."""

from __future__ import annotations

import argparse
import os
import socket

from ..queue import store_for_url
from ..queue.retry import RetryPolicy
from ..relay.outbox import OutboxOptions

QUEUE_URL_ENV = "MAILGATE_QUEUE_URL"  # how the chart passes a PostgreSQL DSN from a Secret, out of the pod's args


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("durable delivery (docs/delivery.md)")
    group.add_argument(
        "--queue",
        metavar="URL",
        help="keep a durable queue for accounts with delivery.mode queue and for requests with "
        "Prefer: respond-async: sqlite:///path/queue.db (one gateway) or postgresql://... (shared by replicas); "
        f"default ${QUEUE_URL_ENV}, else none",
    )
    group.add_argument(
        "--queue-owner",
        metavar="NAME",
        help="this gateway's name in delivery leases: unique among the gateways sharing a queue and the same "
        "after a restart, so deliveries a crash cut off are retried at once (default $POD_NAME, else the host name)",
    )
    group.add_argument(
        "--queue-concurrency", type=int, default=64, metavar="N", help="deliveries in flight at once (default 64)"
    )
    group.add_argument(
        "--queue-retry-delay",
        type=float,
        default=RetryPolicy.first_delay,
        metavar="SECONDS",
        help="wait before the first retry of a deferred message, doubling after each failure up to "
        "--queue-max-retry-delay (default 300, Postfix's minimal_backoff_time)",
    )
    group.add_argument(
        "--queue-max-retry-delay",
        type=float,
        default=RetryPolicy.max_delay,
        metavar="SECONDS",
        help="the longest wait between retries (default 4000, Postfix's maximal_backoff_time)",
    )
    group.add_argument(
        "--queue-lease",
        type=float,
        default=OutboxOptions.lease_seconds,
        metavar="SECONDS",
        help="how long a delivery holds a message before another replica may take it over if this one dies "
        "(default 300; renewed while a slow send lasts)",
    )
    group.add_argument(
        "--queue-keep-finished",
        type=float,
        default=7 * 86400.0,
        metavar="SECONDS",
        help="how long sent, failed and cancelled messages stay visible in the status API (default 7 days)",
    )


def queue_options(args: argparse.Namespace) -> OutboxOptions | None:
    """The outbox the flags ask for, or None; ValueError names what is wrong (never the URL: it may hold a password)."""
    url = args.queue or os.environ.get(QUEUE_URL_ENV, "").strip() or None
    if url is None:
        return None
    store_for_url(url)  # refuses an unknown scheme or a malformed SQLite URL now, not after the listeners opened
    if args.queue_concurrency < 1 or args.queue_keep_finished <= 0 or args.queue_lease <= 0:
        raise ValueError("--queue-concurrency must be at least 1, --queue-lease and --queue-keep-finished positive")
    if not 0 < args.queue_retry_delay <= args.queue_max_retry_delay:
        raise ValueError("--queue-retry-delay must be positive and at most --queue-max-retry-delay")
    policy = RetryPolicy(first_delay=args.queue_retry_delay, max_delay=args.queue_max_retry_delay)
    owner = args.queue_owner or os.environ.get("POD_NAME") or socket.gethostname()
    return OutboxOptions(
        url=url,
        owner=owner,
        concurrency=args.queue_concurrency,
        lease_seconds=args.queue_lease,
        keep_finished=args.queue_keep_finished,
        policy=policy,
    )
