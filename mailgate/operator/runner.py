"""The operator process: log in, (optionally) win the Lease, then run kopf beside the push machinery.

Order of a run:
1. load the Kubernetes client configuration (in-cluster, else ``KUBECONFIG``);
2. serve /metrics; with a Lease name, serve a standby /healthz and wait to lead;
3. as leader: start the status writer, the gateway Pod watch, the start-up
   listings of accounts and of Secrets (account handlers wait for the latter:
   ``secrets.SecretCache``) and the periodic account resync (``resync``), then
   run kopf (its liveness endpoint takes over the health port) until a signal,
   or until the Lease is lost (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf
import kubernetes_asyncio.config
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from ..gcpause import freeze_after_slow_collections
from ..oauth2.metrics import TokenMetrics
from ..spec import GROUP, PLURAL, VERSION
from .admin import AdminClient
from .bookkeeping import SpecDiffBase
from .engine import Engine
from .handlers import build_registry, operator_settings
from .leader import LeaseElector
from .login import BoundedLogin
from .metrics import OperatorMetrics, metrics_app, serve, standby_health_app
from .pods import PodWatcher
from .refresh_api import TokenRefreshAPI
from .resync import DEFAULT_INTERVAL, AccountResync
from .secrets import SecretCache, fill
from .status import StatusWriter
from .tokens import OperatorTokens

log = logging.getLogger(__name__)

# Accounts listed at start-up that kopf never hands over (gone unhandled) stop blocking deletions after this.
PRIMING_DEADLINE = 60.0


@dataclass(frozen=True)
class OperatorOptions:
    gateway_namespace: str
    gateway_selector: str
    admin_token: str = field(repr=False)
    admin_port: int = 8081
    admin_ca_file: str | None = None  # set when gateways serve the admin API over TLS
    send_port: int = 8080
    namespaces: tuple[str, ...] = ()
    """Namespaces whose SmtpAccounts are served; empty: all."""
    health_port: int = 8080
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"
    resync_seconds: float = 30.0
    """How often each gateway's status is read and drift repaired."""
    account_resync_seconds: float = DEFAULT_INTERVAL
    """How often the SmtpAccounts are listed to repair what lost events left unhandled (``resync``)."""
    lease_name: str | None = None
    """Lease (in the gateway namespace) the replicas elect a leader with; None: standalone, no election."""
    identity: str = ""
    token_refresh_url: str | None = None
    """This replica's ``POST /v1/token-refresh`` as gateways reach it; None: gateways wait for the next renewal."""


def default_identity() -> str:
    """The pod name where the chart sets it, else host name; plus a suffix so restarts never collide."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}-{secrets.token_hex(3)}"


async def load_client_config() -> None:
    """In-cluster service account first, then the kubeconfig (``KUBECONFIG``), as kopf's login does."""
    try:
        kubernetes_asyncio.config.load_incluster_config()
    except kubernetes_asyncio.config.ConfigException:
        await kubernetes_asyncio.config.load_kube_config()


async def run(options: OperatorOptions) -> int:
    """Run until SIGTERM/SIGINT (0) or a lost Lease (1).

    SmtpAccounts arrive one event at a time, so their long-lived state (kopf's
    bodies, the engine) has no moment to be frozen at; without the freezes
    after slow full collections (gcpause), each full collection walks all of
    it: 0.5 to 1.9 s with 3,000 accounts, stalling every change in flight.
    """
    with freeze_after_slow_collections():
        return await _run(options)


async def _run(options: OperatorOptions) -> int:
    await load_client_config()
    metrics = OperatorMetrics()
    tokens = OperatorTokens()
    tokens.observers.append(TokenMetrics(metrics.registry, "mailgate_operator", tokens.expiries))
    refresh_api = TokenRefreshAPI(options.admin_token)
    metrics_runner = await serve(metrics_app(metrics, refresh_api), options.bind_address, options.metrics_port)
    api_client = ApiClient()
    try:
        elector = None
        if options.lease_name:
            elector = LeaseElector(api_client, options.gateway_namespace, options.lease_name, options.identity)
            if not await _stand_by(elector, options):
                return 0
        metrics.leader.set(1)
        return await _lead(options, api_client, metrics, elector, tokens, refresh_api)
    finally:
        await api_client.close()
        await metrics_runner.cleanup()


async def _stand_by(elector: LeaseElector, options: OperatorOptions) -> bool:
    """Wait for the Lease while answering liveness probes; False if asked to stop first."""
    health = await serve(standby_health_app(), options.bind_address, options.health_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _first(elector.acquire(), stop.wait()) == 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await health.cleanup()


async def _lead(
    options: OperatorOptions,
    api_client: ApiClient,
    metrics: OperatorMetrics,
    elector: LeaseElector | None,
    tokens: OperatorTokens,
    refresh_api: TokenRefreshAPI,
) -> int:
    stop_flag = asyncio.Event()
    lost = False
    async with AdminClient(options.admin_token, options.admin_port, ca_file=options.admin_ca_file) as client:
        writer = StatusWriter(api_client, metrics)
        engine = Engine(
            client=client,
            send_port=options.send_port,
            resync_seconds=options.resync_seconds,
            metrics=metrics,
            on_status_change=writer.mark,
            tokens=tokens,
            token_refresh_url=options.token_refresh_url,
        )
        writer.source = engine
        refresh_api.refresher = engine
        pods = PodWatcher(api_client, options.gateway_namespace, options.gateway_selector, engine.set_pods)
        secret_cache = SecretCache()
        background = [
            asyncio.create_task(_critical("status writer", writer.run(), stop_flag)),
            asyncio.create_task(_critical("queue counts", engine.queue_status.run(), stop_flag)),
            asyncio.create_task(_critical("gateway pod watch", pods.run(), stop_flag)),
            asyncio.create_task(_critical("start-up listing", _prime(engine, api_client, options.namespaces), stop_flag)),
            asyncio.create_task(_critical("Secret listing", fill(secret_cache, api_client, options.namespaces), stop_flag)),
        ]
        if elector is not None:

            async def keep_lease() -> None:
                nonlocal lost
                await elector.hold()
                lost = True
                stop_flag.set()

            background.append(asyncio.create_task(_critical("lease", keep_lease(), stop_flag)))

        async def shutdown() -> None:
            refresh_api.refresher = None
            stop_flag.set()  # also ends kopf's own waiter on this flag, else kopf waits 5 s for it at exit
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await engine.close()

        login = BoundedLogin(len(options.namespaces))
        diffbase = SpecDiffBase()
        memo = kopf.Memo(engine=engine, metrics=metrics, secrets=secret_cache, diffbase=diffbase, shutdown=shutdown)
        resync = AccountResync(api_client, options.namespaces, options.account_resync_seconds, memo)
        background.append(asyncio.create_task(_critical("account resync", resync.run(), stop_flag)))
        try:
            await kopf.operator(
                registry=build_registry(login),
                settings=operator_settings(diffbase),
                standalone=True,
                clusterwide=not options.namespaces,
                namespaces=list(options.namespaces),
                liveness_endpoint=f"http://{options.bind_address}:{options.health_port}/healthz",
                memo=memo,
                stop_flag=stop_flag,
            )
        finally:
            await shutdown()  # again, in case kopf failed before its cleanup handlers
            await login.close()
            if elector is not None and not lost:
                await elector.release()
    return 1 if lost else 0


async def _prime(engine: Engine, api_client: ApiClient, namespaces: tuple[str, ...]) -> None:
    """Tell the engine which accounts exist, so it deletes nothing before each was handled."""
    api = CustomObjectsApi(api_client)
    delay = 0.5
    while True:
        try:
            keys = await _account_keys(api, namespaces)
            break
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("listing SmtpAccounts failed (%s); again in %.1fs", type(error).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    engine.expect(keys)
    await asyncio.sleep(PRIMING_DEADLINE)
    engine.prime_now()


async def _account_keys(api: CustomObjectsApi, namespaces: tuple[str, ...]) -> list[str]:
    if namespaces:
        listings = [await api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL) for ns in namespaces]
    else:
        listings = [await api.list_cluster_custom_object(GROUP, VERSION, PLURAL)]
    return [
        f"{item['metadata']['namespace']}/{item['metadata']['name']}" for listing in listings for item in listing["items"]
    ]


async def _critical(name: str, work: Coroutine[Any, Any, None], stop_flag: asyncio.Event) -> None:
    """A background task the operator cannot do without: a crash is logged and stops the operator."""
    try:
        await work
    except Exception:
        log.exception("%s crashed; stopping", name)
        stop_flag.set()


async def _first(*aws: Awaitable[Any]) -> int:
    """Index of the awaitable that finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        winner = next(iter(done))
        winner.result()
        return tasks.index(winner)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
