"""``mailgate serve``: one gateway, no cluster, configured from YAML files that it watches.

The files play the operator's part: they are loaded into the same
``ConfigSnapshot`` the admin API takes and handed to the gateway through
``Gateway.apply_snapshot`` (what ``PUT /v1/config`` does), so a reload takes
the same live path as a push from the operator: in-flight sends finish, new
sends use the new settings, and no request fails because configuration
changed. There is no admin port: the files are the only way in.

Callers authenticate with API keys from ``--api-keys`` (reloaded too).
Serving without them is a deliberate, loud choice (``--insecure-no-auth``):
a gateway holds working mail credentials, and an open one on a shared host
is an open relay for whatever those accounts may send.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ..gateway.apikeys import ApiKeys, KeyRing
from ..gateway.app import Gateway, GatewayOptions, run_until_signalled
from ..gateway.auth import AllowAnyone, Authenticator
from ..gateway.queue_args import queue_options
from ..gcpause import collection_paused, reloading
from ..ingress.attach import attach_if_enabled
from ..ingress.options import from_args
from ..logs import configure_logging
from ..relay.accounts import InvalidAccount
from .loader import ConfigError
from .watcher import ConfigFiles, watch

log = logging.getLogger("mailgate.standalone")

NO_AUTH_WARNING = (
    "--insecure-no-auth: ANY caller that can reach this gateway may send mail through EVERY account. "
    "Use --api-keys FILE (see `mailgate apikey`) for anything but a local test."
)


def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; exit status 2 for a configuration refused at start, 1 if the port fails."""
    configure_logging(args.log_format, args.log_level.upper())
    if args.reload_interval <= 0:
        _fail("--reload-interval must be more than 0 seconds")
        return 2
    if not args.api_keys and not args.insecure_no_auth:
        _fail("callers need API keys: --api-keys FILE (make keys with `mailgate apikey`), or --insecure-no-auth")
        return 2
    try:
        smtp = from_args(args)
        queue = queue_options(args)
    except ValueError as error:
        _fail(str(error))
        return 2
    files = ConfigFiles(args.filename, args.api_keys)
    try:
        load_first(files)
    except ConfigError as error:
        _fail("configuration refused:\n  " + "\n  ".join(error.problems))
        return 2
    authenticator: Authenticator
    if files.keys is not None:
        authenticator = ApiKeys(files.keys)
    else:
        authenticator = AllowAnyone()
        log.warning(NO_AUTH_WARNING)
    options = GatewayOptions(host=args.host, port=args.port, admin_port=None, queue=queue)
    gateway = attach_if_enabled(Gateway(authenticator, options), smtp)
    try:
        asyncio.run(_run(gateway, files, authenticator, args.reload_interval))
    except InvalidAccount as error:
        _fail(f"configuration refused: {error}")
        return 2
    except OSError as error:  # the port is taken, the address does not exist
        log.error("cannot serve: %s", error)
        return 1
    return 0


async def _run(gateway: Gateway, files: ConfigFiles, authenticator: Authenticator, interval: float) -> None:
    assert files.snapshot is not None
    await apply_first(gateway, files)  # before listening: ready from the first request
    log.info(
        "serving %d account(s) from %s: %s",
        len(files.snapshot.accounts),
        ", ".join(str(path) for path in files.account_paths),
        ", ".join(account.key for account in files.snapshot.accounts) or "none",
    )

    watcher = start_watching(gateway, files, authenticator, interval)
    try:
        await run_until_signalled(gateway)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def load_first(files: ConfigFiles) -> None:
    """The first load; what it builds is frozen (see gcpause): it lives until a reload, no collection need walk it."""
    with collection_paused(freeze=True):
        files.load()


async def apply_first(gateway: Gateway, files: ConfigFiles) -> None:
    """The loaded configuration to the gateway; the accounts, pools and indexes it builds are frozen too."""
    assert files.snapshot is not None
    with collection_paused(freeze=True):
        await gateway.apply_snapshot(files.snapshot)


def start_watching(gateway: Gateway, files: ConfigFiles, authenticator: Authenticator, interval: float) -> asyncio.Task[None]:
    """Reload the files as they change; a reload thaws the frozen configuration, so that what it replaces can be collected.

    The key ring is swapped without thawing: it is a few tuples, freed by
    reference counting even while frozen.
    """

    def apply_keys(ring: KeyRing) -> None:
        if isinstance(authenticator, ApiKeys):
            authenticator.ring = ring

    return asyncio.create_task(watch(files, reloading(gateway.apply_snapshot), apply_keys, interval), name="config-watcher")


def _fail(message: str) -> None:
    print(f"mailgate serve: {message}", file=sys.stderr)
