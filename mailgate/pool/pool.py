"""SMTPPool: one pool of warm, authenticated upstream sessions per account.

The design follows httpcore's pool: every state change happens in plain
synchronous methods (``_AccountPool._assign`` and friends) that only touch
memory, so on a single event loop they are atomic and need no lock at all.
Network I/O (connect, NOOP, QUIT, the transaction) runs outside them and only
ever on a connection the calling task owns exclusively. An upstream that
stalls therefore delays nobody but the tasks waiting on that very account.

Waiters queue FIFO as futures. A released connection (in ``_put_back``) or a
freed slot (in ``assign``) is handed straight to the first waiter, so a
newcomer can never overtake a waiter and no wake-up can be lost. A slot is
freed only once its session's QUIT is done: until then the upstream still
counts the session, and the limit must hold in the upstream's view. A fresh
waiter (the one retry after a dead reused session) takes only a slot, never
a session that was used before.

Ownership is per checkout: ``acquire`` wraps the session in a new
``PooledConnection`` handle, and ``release`` takes it back exactly once. A
second release of the same handle raises ``AlreadyReleased`` before anything
changes, so it can never hand a session to a second owner.

An account costs a few references until it first sends: ``configure`` keeps
only its ``_Account`` (settings, limits, the shared TLS context), and the
queues, session sets and counters (``_AccountPool``, about 2 KB) are made by
the first ``acquire``. A gateway serves thousands of accounts of which few
send at any time, and the cleanup sweep then walks only the ones that did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from .connection import (
    CloseReason,
    Phase,
    PooledConnection,
    TransactionError,
    TransactionResult,
    UpstreamSession,
    open_connection,
)
from .errors import PoolClosed, PoolTimeout, UnknownAccount
from .settings import AccountSettings, PoolLimits

log = logging.getLogger("mailgate.pool")

_DEFAULT = object()
# A waiter is granted either a connection or the right to open one (None).
_Grant = UpstreamSession | None


@dataclass
class HealthCheck:
    """The last liveness verdict on an account's upstream, for probes and status."""

    ok: bool
    at: float
    error: str | None = None


@dataclass
class SendResult(TransactionResult):
    """A transaction result plus how the pool got there (for metrics and logs)."""

    wait_seconds: float = 0.0
    attempts: int = 1
    connection_reused: bool = False


@dataclass(eq=False, slots=True)
class _Account:
    """A configured account as the pool holds it before (and while) it sends: only references.

    ``tls_context`` is held from ``configure`` on, not built on first use:
    contexts are shared by trust settings and cached weakly, so this reference
    is what keeps the one the gateway validated (and built once) alive.
    """

    name: str
    settings: AccountSettings
    limits: PoolLimits
    tls_context: Any
    generation: int = 0
    removed: bool = False


@dataclass(eq=False)
class _AccountPool:
    """The sessions, waiters and counters of one account that has sent; every method here is synchronous by design."""

    account: _Account
    idle: deque[UpstreamSession] = field(default_factory=deque)
    active: set[UpstreamSession] = field(default_factory=set)
    opening: int = 0
    closing: int = 0
    waiters: deque[asyncio.Future[_Grant]] = field(default_factory=deque)
    # Waiters that only a new session will do (the retry after a dead reused one): never handed an idle one.
    fresh_waiters: set[asyncio.Future[_Grant]] = field(default_factory=set)
    created: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    messages_sent: int = 0
    health: HealthCheck | None = None
    last_error: str | None = None

    @property
    def name(self) -> str:
        return self.account.name

    @property
    def limits(self) -> PoolLimits:
        """The limits in force now: ``reconfigure`` changes them on the account, live."""
        return self.account.limits

    @property
    def removed(self) -> bool:
        return self.account.removed

    def live(self) -> int:
        return len(self.idle) + len(self.active) + self.opening

    def total(self) -> int:
        """What counts against the limit: a session still saying QUIT is still open upstream."""
        return self.live() + self.closing

    def is_stale(self, conn: UpstreamSession) -> bool:
        return conn.generation != self.account.generation

    def retire_reason(self, conn: UpstreamSession, now: float) -> CloseReason | None:
        """Why a connection must not go back to idle, if any."""
        if self.is_stale(conn) or self.live() > self.limits.max_connections or self.removed:
            return CloseReason.RECONFIGURE
        if not conn.is_connected():
            return CloseReason.ERROR
        return conn.expiry_reason(now, self.limits)

    def take_idle(self, now: float, retire: list[tuple[UpstreamSession, CloseReason]]) -> UpstreamSession | None:
        """Pop the most recently used usable connection; expired ones go to ``retire``.

        LIFO reuse keeps the working set small, so surplus connections idle out.
        """
        while self.idle:
            conn = self.idle.pop()
            reason = conn.expiry_reason(now, self.limits) or (None if conn.is_connected() else CloseReason.ERROR)
            if reason is None:
                self.active.add(conn)
                return conn
            retire.append((conn, reason))
        return None

    def next_waiter(self) -> asyncio.Future[_Grant] | None:
        """Pop the first waiter still waiting (cancelled or expired ones have left or are skipped)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def assign(self, now: float, retire: list[tuple[UpstreamSession, CloseReason]]) -> None:
        """Hand idle connections or free slots to waiters in FIFO order.

        A fresh waiter at the head takes only a slot. When none is free and
        none is about to be (no session closing), the oldest idle session is
        retired to make one: it is as old as the session just found dead, and
        waiting for a slot to free itself could take forever on a busy pool.
        """
        while self.waiters:
            waiter = self.waiters[0]
            if waiter.done():  # cancelled or timed out; it removes itself, but be safe
                self.waiters.popleft()
                continue
            fresh = waiter in self.fresh_waiters
            conn = None if fresh else self.take_idle(now, retire)
            if conn is not None:
                self.waiters.popleft().set_result(conn)
                continue
            if self.total() < self.limits.max_connections:
                self.opening += 1
                self.waiters.popleft().set_result(None)
                continue
            if fresh and self.idle and not self.closing and not retire:
                retire.append((self.idle.popleft(), CloseReason.RECONFIGURE))  # its slot frees once its QUIT is done
            return

    def trim_idle(self, now: float, retire: list[tuple[UpstreamSession, CloseReason]]) -> None:
        """Drop idle connections that are expired, idle too long, stale or over the limit."""
        keep: deque[UpstreamSession] = deque()
        for conn in self.idle:
            reason = conn.expiry_reason(now, self.limits)
            if reason is None and (self.is_stale(conn) or self.removed):
                reason = CloseReason.RECONFIGURE
            if reason is None and not conn.is_connected():
                reason = CloseReason.ERROR
            if reason is None and conn.is_idle_expired(now, self.limits):
                reason = CloseReason.IDLE
            if reason is None:
                keep.append(conn)
            else:
                retire.append((conn, reason))
        self.idle = keep
        while self.idle and self.live() > self.limits.max_connections:
            retire.append((self.idle.popleft(), CloseReason.RECONFIGURE))

    def stats(self) -> dict[str, Any]:
        health = self.health
        return {
            **_unused_stats(self.account),
            "idle": len(self.idle),
            "active": len(self.active),
            "opening": self.opening,
            "closing": self.closing,
            "waiting": sum(1 for w in self.waiters if not w.done()),
            "created": self.created,
            "closed": dict(self.closed),
            "messages_sent": self.messages_sent,
            "last_health_check": None
            if health is None
            else {"ok": health.ok, "age_seconds": round(time.monotonic() - health.at, 3), "error": health.error},
            "last_error": self.last_error,
        }


def _unused_stats(account: _Account) -> dict[str, Any]:
    """What an account that never sent reports: its upstream and limit, every counter at zero."""
    return {
        "upstream": account.settings.display_key(),
        "max_connections": account.limits.max_connections,
        "idle": 0,
        "active": 0,
        "opening": 0,
        "closing": 0,
        "waiting": 0,
        "created": 0,
        "closed": {},
        "messages_sent": 0,
        "last_health_check": None,
        "last_error": None,
    }


def describe_error(exc: BaseException) -> str:
    """A log- and status-safe description: exception type and the server's words, never our inputs."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.code} {exc.message}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class SMTPPool:
    """Pools of upstream SMTP sessions, one per configured account.

    ``ttl`` and ``max_per_account`` are defaults for accounts whose settings
    carry no ``limits`` (the seed's constructor). Accounts are registered with
    ``configure(name, settings)`` and later changed live with ``reconfigure``;
    passing an ``AccountSettings`` to ``acquire`` registers it on the fly.
    """

    def __init__(
        self,
        ttl: float = 300.0,
        max_per_account: int = 5,
        *,
        cleanup_interval: float = 1.0,
        close_grace: float = 30.0,
    ) -> None:
        self.ttl = ttl
        self.max_per_account = max_per_account
        self.cleanup_interval = cleanup_interval
        self.close_grace = close_grace
        self._accounts: dict[str, _Account] = {}
        self._pools: dict[str, _AccountPool] = {}  # accounts that have acquired: a subset of ``_accounts``
        self._closing_tasks: set[asyncio.Task[None]] = set()
        self._cleanup_task: asyncio.Task[None] | None = None
        self._closed = False
        self._drained = asyncio.Event()

    # -- configuration -------------------------------------------------

    def _limits_for(self, settings: AccountSettings) -> PoolLimits:
        return settings.limits or PoolLimits(max_connections=self.max_per_account, ttl=self.ttl)

    def configure(self, account: str, settings: AccountSettings) -> None:
        """Register an account, or apply new settings to an existing one."""
        if account in self._accounts:
            self.reconfigure(account, settings)
            return
        self._accounts[account] = _Account(account, settings, self._limits_for(settings), settings.build_ssl_context())

    def reconfigure(self, account: str, settings: AccountSettings) -> None:
        """Apply limits, TTLs or credentials live; in-flight sends are never interrupted.

        A new session identity bumps the generation: idle old sessions close
        now, checked-out ones when released. A raised limit admits waiters at
        once; a lowered one retires surplus connections as they come back.
        """
        entry = self._get(account)
        if settings.session_key() != entry.settings.session_key():
            entry.generation += 1
            entry.tls_context = settings.build_ssl_context()
        entry.settings = settings
        entry.limits = self._limits_for(settings)
        pool = self._pools.get(account)
        if pool is not None:
            self._reassign(pool)

    def remove(self, account: str) -> None:
        """Forget an account: waiters fail with UnknownAccount, connections drain."""
        entry = self._accounts.pop(account, None)
        if entry is None:
            return
        entry.removed = True
        pool = self._pools.pop(account, None)
        if pool is None:
            return
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UnknownAccount(account))
        self._reassign(pool)

    def accounts(self) -> list[str]:
        return list(self._accounts)

    def materialised(self) -> list[str]:
        """Accounts whose pool structures exist: those that acquired (sent or were probed) since configured."""
        return list(self._pools)

    def settings(self, account: str) -> AccountSettings:
        return self._get(account).settings

    def _get(self, account: str) -> _Account:
        try:
            return self._accounts[account]
        except KeyError:
            raise UnknownAccount(account) from None

    def _resolve(self, account: str | AccountSettings) -> _AccountPool:
        """The account's pool structures, made on its first acquire."""
        if isinstance(account, str):
            name = account
        else:
            name = account.display_key()
            self.configure(name, account)
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _AccountPool(self._get(name))
        return pool

    # -- acquire / release --------------------------------------------

    async def acquire(
        self,
        account: str | AccountSettings,
        *,
        timeout: float | object | None = _DEFAULT,
        fresh: bool = False,
    ) -> PooledConnection:
        """Check out a connection exclusively.

        ``timeout`` is a deadline for the whole acquire, connect included:
        ``0`` means do not wait for a busy pool, ``None`` waits forever, the
        default is the account's ``acquire_timeout``. ``fresh`` takes only a
        new session, even after queueing (used for the one retry after a
        reused session was dead). Each call returns a new handle: it is the
        caller's until ``release``, and dead after it.
        """
        if self._closed:
            raise PoolClosed("the pool is closed")
        pool = self._resolve(account)
        self._ensure_cleanup_task()
        limit = pool.limits.acquire_timeout if timeout is _DEFAULT else timeout
        assert limit is None or isinstance(limit, (int, float))
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            grant = await self._grant(pool, deadline, fresh)
            if grant is None:
                # ``0`` forbids waiting for a busy pool, not connecting: the command timeout bounds that.
                return PooledConnection(await self._open(pool, None if limit == 0 else deadline))
            conn = grant
            if conn.needs_health_check(time.monotonic(), pool.limits):
                try:
                    alive = await conn._is_alive()
                except BaseException:
                    self._discard(pool, conn, CloseReason.ERROR)
                    raise
                pool.health = HealthCheck(ok=alive, at=time.monotonic(), error=None if alive else "NOOP failed")
                if not alive:
                    self._discard(pool, conn, CloseReason.ERROR)
                    continue
            return PooledConnection(conn)

    async def _grant(self, pool: _AccountPool, deadline: float | None, fresh: bool) -> _Grant:
        """Take an idle connection or a slot now, or queue FIFO until one is handed over."""
        retire: list[tuple[UpstreamSession, CloseReason]] = []
        try:
            if not pool.waiters:
                if not fresh:
                    conn = pool.take_idle(time.monotonic(), retire)
                    if conn is not None:
                        return conn
                elif pool.idle and pool.total() >= pool.limits.max_connections:
                    retire.append((pool.idle.popleft(), CloseReason.RECONFIGURE))
                if pool.total() < pool.limits.max_connections:
                    pool.opening += 1
                    return None
        finally:
            self._retire(pool, retire)
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            raise PoolTimeout(f"no connection available for account {pool.name!r} (pool saturated)")
        waiter: asyncio.Future[_Grant] = loop.create_future()
        pool.waiters.append(waiter)
        if fresh:
            pool.fresh_waiters.add(waiter)
        # A bare future plus one timer: asyncio.wait() or wait_for() would cost several objects per message.
        timer = None if deadline is None else loop.call_at(deadline, self._expire, pool, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._abandon(pool, waiter)
            raise
        finally:
            pool.fresh_waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _expire(pool: _AccountPool, waiter: asyncio.Future[_Grant]) -> None:
        """The deadline passed before a grant: leave the queue and fail the acquire."""
        if waiter.done():
            return
        with contextlib.suppress(ValueError):
            pool.waiters.remove(waiter)
        waiter.set_exception(PoolTimeout(f"timed out after waiting for a connection to account {pool.name!r} (pool saturated)"))

    def _abandon(self, pool: _AccountPool, waiter: asyncio.Future[_Grant]) -> None:
        """A waiter gave up: leave the queue, and give back anything granted meanwhile."""
        with contextlib.suppress(ValueError):
            pool.waiters.remove(waiter)
        if not waiter.done():
            waiter.cancel()
            return
        if waiter.cancelled() or waiter.exception() is not None:
            return
        granted = waiter.result()
        if granted is None:
            pool.opening -= 1
            self._reassign(pool)
        else:
            self._put_back(pool, granted)

    async def _open(self, pool: _AccountPool, deadline: float | None) -> UpstreamSession:
        """Open a connection on a reserved slot; the slot is returned on any failure."""
        loop = asyncio.get_running_loop()
        account = pool.account
        settings, generation = account.settings, account.generation
        try:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.001)
            # The acquire deadline bounds the connect too; the command timeout bounds it anyway.
            opening = open_connection(account.name, generation, settings, account.tls_context)
            conn = await asyncio.wait_for(opening, timeout=remaining)
        except BaseException as exc:
            pool.opening -= 1
            if not isinstance(exc, asyncio.CancelledError):
                pool.last_error = describe_error(exc)
                pool.health = HealthCheck(ok=False, at=time.monotonic(), error=pool.last_error)
                log.warning("connect to %s for account %s failed: %s", settings.display_key(), pool.name, pool.last_error)
            self._reassign(pool)
            raise
        pool.opening -= 1
        pool.created += 1
        pool.last_error = None
        pool.health = HealthCheck(ok=True, at=time.monotonic())
        pool.active.add(conn)
        return conn

    async def release(self, conn: PooledConnection, *, discard: bool = False) -> None:
        """Return a connection; ``discard`` closes it (it failed mid-command).

        Each handle is released once: a second release raises
        ``AlreadyReleased`` before anything changes, because by then the
        session may belong to someone else (a waiter it was handed to).
        """
        session = conn._end()
        pool = self._pools.get(session.account)
        if pool is None or session not in pool.active:
            # Removed account, or closed by ``close_all`` after its grace: never leak its socket.
            self._spawn_close(session, None)
            return
        if discard:
            self._discard(pool, session, CloseReason.ERROR)
        else:
            self._put_back(pool, session)

    def _put_back(self, pool: _AccountPool, conn: UpstreamSession) -> None:
        """The hot path: a healthy connection goes straight to the first waiter, or to idle."""
        conn.touch()
        now = conn.last_used
        # Decide while the connection still counts as active, so the limit check sees the real total.
        reason = CloseReason.SHUTDOWN if self._closed else pool.retire_reason(conn, now)
        if reason is None:
            waiter = pool.next_waiter()
            if waiter is not None and waiter not in pool.fresh_waiters:
                waiter.set_result(conn)  # stays active: it changes hands without touching idle
                return
            pool.active.discard(conn)
            pool.idle.append(conn)
            if waiter is not None:  # the head wants a new session, not this one: ``assign`` makes room
                pool.waiters.appendleft(waiter)
                self._reassign(pool)
            return
        pool.active.discard(conn)
        self._count_close(pool, reason)
        self._spawn_close(conn, pool)
        self._reassign(pool)

    def _discard(self, pool: _AccountPool, conn: UpstreamSession, reason: CloseReason) -> None:
        pool.active.discard(conn)
        self._count_close(pool, reason)
        self._spawn_close(conn, pool)
        self._reassign(pool)

    def _reassign(self, pool: _AccountPool) -> None:
        retire: list[tuple[UpstreamSession, CloseReason]] = []
        pool.trim_idle(time.monotonic(), retire)
        if not pool.removed and not self._closed:
            pool.assign(time.monotonic(), retire)
        self._retire(pool, retire)
        if self._closed and not any(p.active or p.opening for p in self._pools.values()):
            self._drained.set()

    def _retire(self, pool: _AccountPool, retire: list[tuple[UpstreamSession, CloseReason]]) -> None:
        for conn, reason in retire:
            self._count_close(pool, reason)
            self._spawn_close(conn, pool)

    @staticmethod
    def _count_close(pool: _AccountPool, reason: CloseReason) -> None:
        pool.closed[reason.value] += 1

    def _spawn_close(self, conn: UpstreamSession, pool: _AccountPool | None) -> None:
        """QUIT runs in its own task: the caller never waits on a slow upstream's goodbye.

        The session keeps its slot until the QUIT is done: the upstream counts it
        as open until then, and a provider's per-mailbox limit must hold in its view.
        """
        task = asyncio.get_running_loop().create_task(conn.aclose())
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)
        if pool is not None:
            pool.closing += 1
            task.add_done_callback(lambda _: self._closed_one(pool))

    def _closed_one(self, pool: _AccountPool) -> None:
        pool.closing -= 1
        self._reassign(pool)

    @contextlib.asynccontextmanager
    async def connection(
        self, account: str | AccountSettings, *, timeout: float | object | None = _DEFAULT
    ) -> AsyncIterator[PooledConnection]:
        """Acquire and always release; an exception inside discards the connection."""
        conn = await self.acquire(account, timeout=timeout)
        try:
            yield conn
        except BaseException:
            if not conn.released:  # never mask the caller's exception with a double-release error
                await self.release(conn, discard=True)
            raise
        await self.release(conn)

    # -- sending ----------------------------------------------------------

    async def send(
        self,
        account: str | AccountSettings,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        mail_options: Sequence[str] = (),
        timeout: float | object | None = _DEFAULT,
    ) -> SendResult:
        """Relay one message, with the pool's retry and discard rules.

        A reused session found dead before its text went out is retried once
        on a fresh session (idle drops are normal: providers close idle
        sessions). Once the text went out, or on any answer from the server,
        nothing is retried: the message might have been delivered, and a 5xx
        is final. A failed transaction raises ``TransactionError`` with the
        phase it reached; a failure to connect or to log in raises as it came.
        """
        started = time.monotonic()
        fresh = False
        attempts = 0
        while True:
            attempts += 1
            conn = await self.acquire(account, timeout=timeout, fresh=fresh)
            wait = time.monotonic() - started
            reused = conn.is_reused()
            pool = self._pools.get(conn.account)
            try:
                result = await conn.transaction(sender, recipients, message, mail_options)
            except TransactionError as failure:
                dead = failure.session_broken
                await self.release(conn, discard=dead)
                if pool is not None and dead:
                    pool.last_error = describe_error(failure.cause)
                if dead and reused and failure.phase is not Phase.CONTENT and not fresh:
                    log.info("reused session to %s was dead; retrying once on a fresh one", conn.account)
                    fresh = True
                    continue
                raise
            except BaseException:
                await self.release(conn, discard=True)
                raise
            if pool is not None:
                pool.messages_sent += 1
            await self.release(conn)
            return SendResult(
                refused=result.refused,
                accepted=result.accepted,
                code=result.code,
                message=result.message,
                wait_seconds=wait,
                attempts=attempts,
                connection_reused=reused,
            )

    # -- maintenance ------------------------------------------------------

    def _ensure_cleanup_task(self) -> None:
        if self._cleanup_task is None or self._cleanup_task.done():
            self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup_loop(), name="smtp-pool-cleanup")

    async def _cleanup_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.cleanup_interval)
            await self.cleanup()

    async def cleanup(self) -> None:
        """Close idle-expired, TTL-expired and dropped idle connections; no NOOPs here, no accounts that never sent."""
        for pool in list(self._pools.values()):
            self._reassign(pool)

    async def check_health(self, account: str) -> HealthCheck:
        """Probe an account now (used by the admin status on demand): NOOP an idle session or connect."""
        pool = self._resolve(account)  # UnknownAccount, or the pool the acquire below will use
        conn = await self.acquire(account, timeout=0)
        try:
            alive = await conn.session._is_alive()
        except BaseException:
            # Cancelled mid-NOOP: its reply may still come and would answer the next command. Never put back.
            await self.release(conn, discard=True)
            raise
        health = HealthCheck(ok=alive, at=time.monotonic(), error=None if alive else "NOOP failed")
        pool.health = health
        await self.release(conn, discard=not alive)
        return health

    async def close_all(self, grace: float | None = None) -> None:
        """Stop handing out connections, close idle ones now and checked-out ones on release.

        Connections still checked out after ``grace`` seconds are aborted
        (their sends fail with the phase they reached) so that shutdown always
        ends; then every QUIT task is awaited.
        """
        self._closed = True
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup_task
        for pool in self._pools.values():
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolClosed("the pool is closing"))
            retire = [(conn, CloseReason.SHUTDOWN) for conn in pool.idle]
            pool.idle.clear()
            self._retire(pool, retire)
        if any(pool.active or pool.opening for pool in self._pools.values()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.close_grace if grace is None else grace)
        for pool in self._pools.values():
            for conn in list(pool.active):
                pool.active.discard(conn)
                self._count_close(pool, CloseReason.SHUTDOWN)
                # Its owner waits on the upstream, and a QUIT would queue behind that command: abort the
                # socket, so the owner's send fails now, with the phase it reached, and can be answered.
                conn.abort_socket()
                self._spawn_close(conn, pool)
        if self._closing_tasks:
            await asyncio.gather(*self._closing_tasks, return_exceptions=True)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-account counters for every configured account; safe to expose (no credential, only user@host:port)."""
        pools = self._pools
        return {key: pool.stats() if (pool := pools.get(key)) else _unused_stats(entry) for key, entry in self._accounts.items()}

    def health(self, account: str) -> HealthCheck | None:
        """The last verdict on the account's upstream; None before its first connect or NOOP."""
        self._get(account)  # UnknownAccount for an account that is not configured
        pool = self._pools.get(account)
        return None if pool is None else pool.health
