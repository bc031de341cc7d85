"""The live account registry: what the admin API pushes, turned into pool settings, limits and matchers.

A push is built in full before any of it is applied: pool settings, limits,
sender matchers and the TLS context of every account whose session identity
changes (the step that meets the ssl module, which refuses CA bundles the
model cannot judge). Any failure raises ``InvalidAccount`` naming the account
and the field, and the live configuration is untouched, whole. Only then is
it swapped in through ``SMTPPool.configure`` / ``reconfigure`` / ``remove``,
which find the contexts already built; so a change of limits, TTLs or
credentials takes effect live: sends in flight finish on their session, new
sends use the new settings, stale sessions drain. An account whose
configuration digest did not change is not rebuilt nor touched at all, so a
push costs in proportion to what changed.

Revisions follow docs/admin-api.md: a full snapshot with the current revision
is a no-op, an older one is refused (``RevisionConflict``, 409); per-account
changes must carry a newer revision. The first snapshot is always applied, so
a gateway becomes ready even when the operator's counter starts at 0.

An ``Account`` object is replaced, never mutated, on change, except for its
rate limiter, which carries over so that a reload never hands out a fresh
burst. A request that already holds the old object finishes with it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..gcpause import collection_paused
from ..oauth2.grants import GrantError
from ..pool import AccountSettings, AuthMethod, PoolLimits, SMTPPool, TLSMode, TokenSource
from ..snapshot import AccountConfig, ConfigSnapshot, config_digest
from .identity import AccountRef
from .ratelimit import TokenBucket
from .senders import SenderIndex, SenderMatcher
from .tokens import PreparedToken, TokenSources


class RevisionConflict(Exception):
    """A push older than (or, per account, not newer than) what the gateway holds."""

    def __init__(self, current: int, offered: int) -> None:
        super().__init__(f"revision {offered} is not newer than the gateway's revision {current}")
        self.current = current
        self.offered = offered


class InvalidAccount(ValueError):
    """An account that passes the model but cannot be served: ``key`` names it, ``field`` the part at fault.

    ``field`` is a path inside the account (``spec.server.caCertificate``), or
    ``None`` when the account as a whole is at fault. No message holds a value
    from the account, so it is safe in logs, answers and conditions.
    """

    def __init__(self, key: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"account {key}: {field}: {detail}" if field else f"account {key}: {detail}")
        self.key = key
        self.detail = detail
        self.field = field


@dataclass(frozen=True, slots=True)
class Account:
    """One account as the relay uses it; immutable except for the shared ``limiter``."""

    config: AccountConfig
    settings: AccountSettings | None  # None: this gateway forwards (its connection share is 0)
    limiter: TokenBucket
    senders: SenderMatcher
    digest: str
    ref: AccountRef
    token: PreparedToken | None = None  # OAuth2 accounts this gateway sends through

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def forward_peers(self) -> list[str]:
        """Peer gateways to forward to when this gateway holds no connection share."""
        return list(self.config.share.peers) if self.settings is None and self.config.share else []

    @property
    def rate_per_minute(self) -> int | None:
        return rate_of(self.config)


def rate_of(config: AccountConfig) -> int | None:
    """This gateway's rate: the pushed share, else (standalone, or share without a rate) the spec's."""
    if config.share is not None and config.share.messages_per_minute is not None:
        return config.share.messages_per_minute
    return config.spec.rate_limit.messages_per_minute


# The model's enums mapped to the pool's (which stays independent of the CRD model); a dict, because
# calling an Enum class is the single largest cost of applying 10,000 accounts.
_TLS_MODES = {mode.value: mode for mode in TLSMode}
_AUTH_METHODS = {method.value: method for method in AuthMethod} | {"oauth2": AuthMethod.XOAUTH2}


def sends_here(config: AccountConfig) -> bool:
    """False when this gateway's connection share is 0 (it forwards to a peer)."""
    return (config.share.max_connections if config.share is not None else config.spec.pool.max_connections) > 0


def settings_of(
    config: AccountConfig, *, command_timeout: float, local_hostname: str | None, token_source: TokenSource | None = None
) -> AccountSettings | None:
    """Pool settings for an account, or ``None`` when this gateway's connection share is 0."""
    spec = config.spec
    if not sends_here(config):
        return None
    max_connections = config.share.max_connections if config.share is not None else spec.pool.max_connections
    pool = spec.pool
    creds = config.credentials
    try:
        limits = PoolLimits(
            max_connections=max_connections,
            ttl=float(pool.ttl_seconds),
            idle_timeout=float(pool.idle_timeout_seconds),
            health_check_after_idle=float(pool.health_check_after_idle_seconds),
            max_messages_per_connection=pool.max_messages_per_connection,
            acquire_timeout=float(pool.acquire_timeout_seconds),
        )
    except ValueError as exc:  # the messages name fields, never values
        raise InvalidAccount(config.key, str(exc), "spec.pool") from None
    try:
        return AccountSettings(
            host=spec.server.host,
            port=spec.server.port,
            tls=_TLS_MODES[spec.server.tls.value],
            auth=_AUTH_METHODS[spec.auth.method.value],
            username=spec.auth.oauth2.mailbox if spec.auth.oauth2 is not None else creds.username,
            password=creds.password.get_secret_value() if creds.password is not None else None,
            token=creds.token.get_secret_value() if creds.token is not None and token_source is None else None,
            token_source=token_source,
            limits=limits,
            verify_tls=spec.server.verify_certificate,
            ca_pem=spec.server.ca_certificate,
            command_timeout=command_timeout,
            local_hostname=local_hostname,
        )
    except ValueError as exc:  # only missing credentials; messages name fields, never values (AccountSettings says so)
        raise InvalidAccount(config.key, str(exc), "credentials") from None


def prepare_tls(key: str, settings: AccountSettings, serving: AccountSettings | None) -> ssl.SSLContext | None:
    """The TLS context the pool will use for ``settings``, built now so that a refusal fails the build, not the swap.

    Nothing is built when the pool keeps its context (``serving`` has the
    same session identity): the pool builds only for new identities, and so
    does this. The context is cached by ``build_ssl_context``; the caller
    holds it until the pool has taken it, so the pool's own call finds it.
    """
    if serving is not None and serving.session_key() == settings.session_key():
        return None
    try:
        return settings.build_ssl_context()
    except (ssl.SSLError, ValueError, TypeError) as exc:  # TypeError: a bundle that is not ASCII
        field = "spec.server.caCertificate" if settings.ca_pem else "spec.server.tls"
        raise InvalidAccount(key, f"the ssl module refuses it: {_ssl_reason(exc)}", field) from None


def _ssl_reason(exc: Exception) -> str:
    """OpenSSL's words without the C source location (they never quote the bundle)."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc)) or type(exc).__name__


@dataclass(frozen=True)
class _Plan:
    """A push built in full; ``contexts`` keeps the new TLS contexts alive until the pool has taken them."""

    accounts: dict[str, Account]
    contexts: list[ssl.SSLContext]


@dataclass
class AccountRegistry:
    """Accounts by ``namespace/name``, kept in step with the pool."""

    pool: SMTPPool
    command_timeout: float = 30.0
    local_hostname: str | None = None
    tokens: TokenSources = field(default_factory=TokenSources)
    revision: int = 0
    received: bool = False  # a snapshot arrived since start: the gateway may turn ready
    # Called after every change that was applied (the outbox's worker looks for messages it may now take).
    listeners: list[Callable[[], None]] = field(default_factory=list)
    # Called with an account's key when how its upstream sessions connect or log in changed (address, TLS,
    # credentials): what failed for the old ones may now succeed (the outbox retries its deferred messages).
    upstream_changed: list[Callable[[str], None]] = field(default_factory=list)
    _accounts: dict[str, Account] = field(default_factory=dict)
    _index: SenderIndex = field(default_factory=lambda: SenderIndex({}))

    def get(self, key: str) -> Account | None:
        return self._accounts.get(key)

    def accounts(self) -> dict[str, Account]:
        return dict(self._accounts)

    def sender_conflicts(self, key: str) -> list[str]:
        return self._index.conflicts(key)

    def route(self, sender: str) -> list[str]:
        """Accounts whose ``senders`` match ``sender`` most specifically (for an SMTP front door)."""
        return self._index.route(sender)

    # -- applying pushes ----------------------------------------------------

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    def apply_snapshot(self, snapshot: ConfigSnapshot) -> bool:
        """Replace the whole configuration; ``False`` when it was a no-op (same revision)."""
        if self.received and snapshot.revision < self.revision:
            raise RevisionConflict(self.revision, snapshot.revision)
        if self.received and snapshot.revision == self.revision:
            return False
        with collection_paused():  # every path to here (admin API, standalone start and reload) builds thousands
            plan = self._build_all(snapshot.accounts)  # raises before anything live changes
            for key in set(self._accounts) - set(plan.accounts):
                self._remove(key)
            for account in plan.accounts.values():
                self._install(account)
        self.revision = snapshot.revision
        self.received = True
        self._reindex()
        self._changed()
        return True

    def put_account(self, config: AccountConfig, revision: int) -> None:
        self._check_newer(revision)
        plan = self._build_all([config])  # raises before anything live changes
        account = plan.accounts[config.key]
        self._install(account)
        self.revision = revision
        self._index.update(account.key, account.senders)  # one account: not a rebuild over all of them
        self._changed()

    def delete_account(self, key: str, revision: int) -> bool:
        """``False`` when the account is unknown (nothing changes, the revision included)."""
        self._check_newer(revision)
        if key not in self._accounts:
            return False
        self._remove(key)
        self.revision = revision
        self._index.update(key, None)
        return True

    def _check_newer(self, revision: int) -> None:
        if revision <= self.revision:
            raise RevisionConflict(self.revision, revision)

    def _build_all(self, configs: Iterable[AccountConfig]) -> _Plan:
        """Everything a push needs, or ``InvalidAccount`` for the first account that cannot be served."""
        plan = _Plan({}, [])
        for config in configs:
            if config.key in plan.accounts:
                raise InvalidAccount(config.key, "listed twice in the snapshot")
            digest = config_digest(config)
            old = self._accounts.get(config.key)
            if old is not None and old.digest == digest:
                plan.accounts[config.key] = old  # unchanged: nothing to build, nothing to apply
                continue
            account = plan.accounts[config.key] = self._build(config, digest)
            if account.settings is not None:
                context = prepare_tls(config.key, account.settings, old.settings if old is not None else None)
                if context is not None:
                    plan.contexts.append(context)
        return plan

    def _build(self, config: AccountConfig, digest: str) -> Account:
        token = None
        if config.spec.auth.oauth2 is not None and sends_here(config):
            try:
                token = self.tokens.prepare(config)
            except GrantError as exc:  # the message names the Secret key, never its value
                raise InvalidAccount(config.key, str(exc), "credentials") from None
        settings = settings_of(
            config,
            command_timeout=self.command_timeout,
            local_hostname=self.local_hostname,
            token_source=token.source if token is not None else None,
        )
        if settings is None and not (config.share and config.share.peers):
            raise InvalidAccount(config.key, "share.maxConnections is 0 but there are no peers", "share.peers")
        old = self._accounts.get(config.key)
        limiter = old.limiter if old is not None else TokenBucket(None)
        return Account(
            config=config,
            settings=settings,
            limiter=limiter,  # configured on install, so a refused push leaves the old rate in force
            senders=SenderMatcher(config.spec.senders),
            digest=digest,
            ref=AccountRef(config.namespace, config.name, config.spec.access),
            token=token,
        )

    def _install(self, account: Account) -> None:
        old = self._accounts.get(account.key)
        if old is account:
            return
        account.limiter.configure(account.rate_per_minute)
        if account.token is not None:
            self.tokens.commit(account.key, account.token)
        else:
            self.tokens.discard(account.key)
        if account.settings is None:
            if old is not None and old.settings is not None:
                self.pool.remove(account.key)
        elif old is None or old.settings is None or old.digest != account.digest:
            self.pool.configure(account.key, account.settings)
            if old is not None and old.settings is not None and old.settings.session_key() != account.settings.session_key():
                for listener in self.upstream_changed:
                    listener(account.key)
        self._accounts[account.key] = account

    def _remove(self, key: str) -> None:
        account = self._accounts.pop(key)
        self.tokens.discard(key)
        if account.settings is not None:
            self.pool.remove(key)

    def _reindex(self) -> None:
        self._index = SenderIndex({key: a.senders for key, a in self._accounts.items()})
