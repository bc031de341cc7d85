"""Client of the gateway admin API (docs/admin-api.md), one shared aiohttp session for all pods.

Every call has a deadline, so an unreachable pod costs its own push loop a
timeout and never blocks the others. Errors carry the HTTP status and the
problem's ``title``/``detail`` only: request bodies hold credentials and are
never echoed into an exception, a log line or a metric.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from ..adminstatus import AccountStatus, GatewayStatus
from ..snapshot import AccountConfig, ConfigSnapshot
from .plan import Hold
from .queuestatus import QueueCounts


class GatewayError(Exception):
    """A push or status call failed."""

    kind = "error"


class GatewayUnreachable(GatewayError):
    """No answer (connection refused, reset or timeout): a write may or may not have been applied."""

    kind = "unreachable"


class GatewayRejected(GatewayError):
    """The gateway answered with an error status; ``fields`` are the problem's ``errors[].field``."""

    def __init__(self, status: int, detail: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.fields = fields
        self.kind = "conflict" if status == 409 else f"http_{status}"

    @property
    def invalid(self) -> bool:
        """The gateway refuses the content itself: sending it again will not help."""
        return self.status in (400, 422)


@dataclass(frozen=True)
class AccountReport:
    """What the operator keeps of one account in ``GET /v1/status``: what ``_report_changes`` compares (no counters)."""

    digest: str
    healthy: bool | None
    last_error: str | None
    hold: Hold | None
    """The share the gateway reports using; None when it does not say."""
    sender_conflicts: tuple[str, ...] = ()
    """Sender patterns of this account that another account lists too (routing by them is refused)."""


@dataclass(frozen=True)
class GatewayReport:
    """A gateway's ``GET /v1/status``."""

    revision: int
    ready: bool
    accounts: dict[str, AccountReport]
    conflicting: dict[str, AccountReport] = field(default_factory=dict)
    """The accounts reported with sender conflicts (usually none): what the status of every account scans."""
    queues: dict[str, QueueCounts | None] = field(default_factory=dict)
    """Pending queued messages by account (``None``: the gateway runs no queue). Counters, so apart from
    ``accounts``: they change all the time and reach the status only through ``queuestatus``'s throttle."""


SNAPSHOT_SECONDS_PER_ACCOUNT = 0.01
"""Added to a full snapshot's deadline per account: ~100x what a quiet gateway needs (10,000 apply in ~1.2 s)."""


class AdminClient:
    """Talks to gateways' admin ports with a bearer token."""

    def __init__(
        self, token: str, port: int, *, timeout: float = 5.0, snapshot_timeout: float = 30.0, ca_file: str | None = None
    ) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}
        self._port = port
        self._tls = _admin_tls(ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 2.0))
        self._snapshot_timeout = snapshot_timeout
        self._connect_timeout = min(timeout, 2.0)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=4, ssl=self._tls if self._tls is not None else True),
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, ip: str, path: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self._port}{path}"

    async def _call(
        self, method: str, ip: str, path: str, *, body: str | None = None, params: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None, accept: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:  # fmt: skip
        if self._session is None:
            raise RuntimeError("AdminClient used outside 'async with'")
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._session.request(
                method, self._url(ip, path), data=body, params=params, headers=headers, timeout=timeout or self._timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise GatewayUnreachable(f"{ip}: {type(error).__name__}") from None
        payload = _json(text)
        if status not in accept:
            raise GatewayRejected(status, _problem_text(payload), _problem_fields(payload))
        return status, payload

    async def status(self, ip: str) -> GatewayReport:
        _, payload = await self._call("GET", ip, "/v1/status")
        return parse_report(payload)

    async def put_config(self, ip: str, snapshot: ConfigSnapshot) -> None:
        """A full snapshot; its deadline grows with its size (10,000 accounts: 130 s).

        A fixed 30 s was too short for a busy gateway to parse and apply
        10,000 accounts, and every retry then started the whole apply again.
        """
        total = self._snapshot_timeout + SNAPSHOT_SECONDS_PER_ACCOUNT * len(snapshot.accounts)
        timeout = aiohttp.ClientTimeout(total=total, connect=self._connect_timeout)
        await self._call("PUT", ip, "/v1/config", body=snapshot.model_dump_json(by_alias=True), timeout=timeout)

    async def put_account(self, ip: str, config: AccountConfig, revision: int) -> None:
        path = f"/v1/config/accounts/{config.namespace}/{config.name}"
        await self._call("PUT", ip, path, body=config.model_dump_json(by_alias=True), params={"revision": str(revision)})

    async def delete_account(self, ip: str, key: str, revision: int) -> None:
        """Remove an account; a gateway that does not have it (404) is just as good."""
        await self._call("DELETE", ip, f"/v1/config/accounts/{key}", params={"revision": str(revision)}, accept=(204, 404))


def _admin_tls(ca_file: str | None) -> ssl.SSLContext | None:
    """Trust exactly the CA that signs the gateways' admin certificates.

    Gateways are addressed by pod IP, which no certificate names, so the host
    name is not checked: the dedicated CA is the trust anchor.
    """
    if ca_file is None:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    return context


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def _problem_fields(payload: Any) -> tuple[str, ...]:
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(item["field"]) for item in errors if isinstance(item, dict) and "field" in item)


def _problem_text(payload: Any) -> str:
    if isinstance(payload, dict):
        text = " - ".join(str(payload[field]) for field in ("title", "detail") if payload.get(field))
        return text[:300] or "error"
    return "error"


def parse_report(payload: Any) -> GatewayReport:
    """Read a decoded ``GET /v1/status`` with the model the gateway writes it with (``mailgate.adminstatus``).

    Tolerant where gateways may differ: keys a newer gateway adds are ignored, a field it leaves out reads as
    unknown, and a gateway of the previous release is read through ``_from_previous_gateway``. An answer that
    does not fit the model is an error (the pod's loop backs off and reads again), never half-read. The
    error names no value from the answer.
    """
    try:
        status = GatewayStatus.from_wire(_from_previous_gateway(payload))
    except ValidationError as error:
        count = error.error_count()
        raise GatewayUnreachable(f"status answer does not match the admin status model ({count} error(s))") from None
    accounts = {key: _account_report(account) for key, account in status.accounts.items()}
    conflicting = {key: report for key, report in accounts.items() if report.sender_conflicts}
    queues = {key: _queue_counts(account) for key, account in status.accounts.items()}
    return GatewayReport(revision=status.revision, ready=status.ready, accounts=accounts, conflicting=conflicting, queues=queues)


def _queue_counts(account: AccountStatus) -> QueueCounts | None:
    return QueueCounts.from_wire(account.queue) if account.queue is not None else None


def _account_report(account: AccountStatus) -> AccountReport:
    return AccountReport(
        digest=account.digest,
        healthy=account.healthy,
        last_error=account.last_error,
        hold=_hold(account),
        sender_conflicts=tuple(account.sender_conflicts),
    )


def _hold(account: AccountStatus) -> Hold | None:
    """The share in use: the pool's ``maxConnections``, or 0 for an account this gateway forwards (no pool, ``forwardTo``)."""
    if account.pool is not None:
        connections = account.pool.max_connections
    elif account.forward_to:
        connections = 0
    else:
        return None
    return Hold(connections, account.rate_limit.messages_per_minute)


_PREVIOUS_POOL_KEYS = {
    "max_connections": "maxConnections",
    "messages_sent": "messagesSent",
    "last_health_check": "lastHealthCheck",
    "last_error": "lastError",
}


def _from_previous_gateway(payload: Any) -> Any:
    """A status from a gateway of the previous release, in today's keys; any other payload unchanged.

    Those gateways wrote ``pool`` (and its ``last_health_check``) with snake_case keys; everything else was
    camelCase already. During a rolling upgrade the new operator still meets them, and without this it could
    read no status from them at all, so their pods would get no pushes until replaced. Remove this function
    in the release after the one that introduced ``mailgate.adminstatus``.
    """
    accounts = payload.get("accounts") if isinstance(payload, dict) else None
    if not isinstance(accounts, dict):
        return payload
    upgraded = {}
    for key, account in accounts.items():
        pool = account.get("pool") if isinstance(account, dict) else None
        if isinstance(pool, dict) and "max_connections" in pool:
            pool = {_PREVIOUS_POOL_KEYS.get(name, name): value for name, value in pool.items()}
            check = pool.get("lastHealthCheck")
            if isinstance(check, dict):
                pool["lastHealthCheck"] = {("ageSeconds" if name == "age_seconds" else name): v for name, v in check.items()}
            account = {**account, "pool": pool}
        upgraded[key] = account
    return {**payload, "accounts": upgraded}
