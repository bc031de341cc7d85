"""Keeping one account's access token fresh, so that sending never waits for a token endpoint.

A ``TokenKeeper`` fetches a token when started and renews it ahead of expiry
(a third of its lifetime before, at most ten minutes), so senders normally
find a valid token at once. At most one request is in flight per keeper:
callers that need a token while one is being fetched wait for that request
instead of making their own, so a burst of sends (or of upstream 535s) costs
one request. Failures back off exponentially with jitter; a refusal
(``invalid_client`` ...) waits at least ``refusal_backoff``, because only a
configuration change fixes it. A token already held keeps serving until it
expires, whatever happens to its renewals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Protocol

from .endpoint import AccessToken, TokenEndpoint, TokenError, public_url, token_fingerprint
from .grants import Grant, GrantError

log = logging.getLogger("mailgate.oauth2")

_RENEW_MARGIN_CAP = 600.0  # renew at most ten minutes early: a 1 h token renews at ~50 min
_REFUSED_AGAIN_WINDOW = 60.0  # a token renewed after a 535 and refused too within this: the fault is not the token
_USE_MARGIN_CAP = 30.0  # stop handing out a token this much before it expires: it must still work when the upstream checks it


class TokenObserver(Protocol):
    """Told about every token and every failed request (status conditions, metrics)."""

    def token_issued(self, key: str, token: AccessToken) -> None: ...

    def token_failed(self, key: str, error: TokenError, retry_in: float) -> None: ...


class TokenUnavailable(Exception):
    """No valid token could be had in time; ``error`` is the last failed request, if any.

    ``str()`` is the message followed by that failure (both secret-free), so it
    can go into an SMTP reply or a problem detail as it is.
    """

    def __init__(self, message: str, error: TokenError | None) -> None:
        super().__init__(f"{message}: {error}" if error is not None else message)
        self.error = error


class TokenKeeper:
    """Keeps one account's access token fresh (see the module docstring for the rules)."""

    def __init__(
        self,
        key: str,
        grant: Grant,
        endpoint: TokenEndpoint,
        *,
        observer: TokenObserver | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 300.0,
        refusal_backoff: float = 60.0,
    ) -> None:
        self.key = key
        self._grant = grant
        self._endpoint = endpoint
        self._observer = observer
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._refusal_backoff = refusal_backoff
        self._current: AccessToken | None = None
        self._usable_until = 0.0  # monotonic; from the request's start, so never later than the endpoint's own expiry
        self._last_error: TokenError | None = None
        self._failures = 0  # consecutive, for the backoff and the recovery message
        self._next_at = 0.0  # monotonic: when the background makes its next request
        self._inflight: asyncio.Task[None] | None = None
        self._refused_at: float | None = None  # when the upstream last refused a current token (535)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the schedule changed: the background recomputes its wait
        self._settled = asyncio.Event()  # replaced after each request: waiters for "the next outcome" wait on it
        self._closed = False

    def start(self) -> None:
        """Start the background task in the running loop: fetch now, then renew ahead of expiry. Idempotent."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"oauth2-token {self.key}")

    @property
    def current(self) -> AccessToken | None:
        """The newest token while it is still usable (a safety margin before its expiry), else None."""
        if self._current is not None and time.monotonic() < self._usable_until:
            return self._current
        return None

    @property
    def expires_at(self) -> float | None:
        """When the newest token expires (Unix seconds), even once past: the remaining-lifetime metric reads 0 then."""
        return self._current.expires_at if self._current is not None else None

    @property
    def last_error(self) -> TokenError | None:
        """The last failed request; None once a token was issued after it."""
        return self._last_error

    async def token(self, timeout: float) -> str:
        """A valid token, waiting at most ``timeout`` for the first (or next) one.

        Without a token, waits for the request in flight, or for the next one
        if it is due before the deadline, and gives up (``TokenUnavailable``,
        with the failure) as soon as that request fails: while the endpoint
        fails, a caller hears so at once instead of holding its connection
        through the backoff.
        """
        self.start()
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            self._check_open()
            token = self.current
            if token is not None:
                return token.value
            retry_in = self._next_at - time.monotonic()
            if self._last_error is not None and self._inflight is None and retry_in > 0 and (waited or self._next_at >= deadline):
                raise TokenUnavailable(f"{self.key}: no access token (next request in {retry_in:.0f}s)", self._last_error)
            await self._next_outcome(deadline, timeout)
            waited = True

    async def renewed(self, rejected: str, timeout: float) -> str:
        """A token to replace ``rejected``, which the upstream refused; at most one request per call.

        If ``rejected`` is still the current token it is dropped and one fresh
        request is made (or joined); if another valid token is current already
        (someone renewed first) it is returned at once.
        """
        self.start()
        deadline = time.monotonic() + timeout
        self._check_open()
        token = self.current
        if token is not None and token.value != rejected:
            return token.value
        if self._current is not None and self._current.value == rejected:
            if self._refused_at is not None and time.monotonic() - self._refused_at < _REFUSED_AGAIN_WINDOW:
                # The previous token was refused too, moments ago: the mailbox permission or the upstream's
                # setting is at fault, and asking for token after token (one per session) would not help.
                raise TokenUnavailable(f"{self.key}: the upstream refuses freshly issued tokens too", None)
            self._refused_at = time.monotonic()
            self._current = None
            log.info("%s: upstream refused access token %s, requesting a new one", self.key, token_fingerprint(rejected))
            request = self._request()
        elif self._inflight is not None:
            request = self._inflight
        else:  # dropped by an earlier call whose request failed: the backoff decides, not this caller
            return await self.token(max(deadline - time.monotonic(), 0.0))
        done, _ = await asyncio.wait({request}, timeout=max(deadline - time.monotonic(), 0.0))
        self._check_open()
        token = self.current
        if token is not None:
            return token.value
        reason = "the request for a new access token failed" if done else f"no new access token within {timeout:g}s"
        raise TokenUnavailable(f"{self.key}: {reason}", self._last_error)

    def replace_grant(self, grant: Grant) -> None:
        """New credentials (secret rotation): fetch with them now; the current token serves until the new one arrives."""
        if grant == self._grant:
            return
        self._grant = grant
        self._failures = 0
        self._next_at = time.monotonic()
        self._wake.set()
        log.info("%s: credentials changed, requesting a token with the new ones", self.key)

    def close_soon(self) -> None:
        """``close()`` in the background, for callers that drop a keeper outside a coroutine."""
        task = asyncio.get_running_loop().create_task(self.close())
        task.add_done_callback(lambda done: done.exception())  # close() is idempotent and does not raise

    async def close(self) -> None:
        """Stop renewing; waiters get ``TokenUnavailable``. Idempotent."""
        self._closed = True
        tasks = [task for task in (self._task, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._settled.set()

    async def _run(self) -> None:
        while True:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            await asyncio.wait({self._request()})

    def _request(self) -> asyncio.Task[None]:
        """The request in flight, started if there is none: everyone joins the same one."""
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch(), name=f"oauth2-request {self.key}")
        return self._inflight

    async def _fetch(self) -> None:
        grant = self._grant
        started = time.monotonic()
        try:
            token = await self._endpoint.fetch(grant)
        except TokenError as error:
            self._failed(grant, error)
        except Exception as error:  # GrantError, or a bug: reported as a refusal, and the keeper carries on
            description = str(error) if isinstance(error, GrantError) else type(error).__name__
            self._failed(grant, TokenError("client_error", description, url=public_url(grant.token_url), retryable=False))
        else:
            self._issued(grant, token, started)
        finally:
            self._inflight = None
            settled, self._settled = self._settled, asyncio.Event()
            settled.set()
            self._wake.set()

    def _issued(self, grant: Grant, token: AccessToken, started: float) -> None:
        self._current = token
        self._usable_until = started + token.lifetime - min(token.lifetime * 0.05, _USE_MARGIN_CAP)
        if grant is self._grant:  # never at once: a token that lives shorter than its request takes must not spin
            renew_at = started + token.lifetime - min(token.lifetime / 3, _RENEW_MARGIN_CAP)
            self._next_at = max(renew_at, time.monotonic() + min(self._min_backoff, token.lifetime / 3))
        else:  # the credentials changed while this request was out: ask again with the new ones
            self._next_at = time.monotonic()
        if self._failures:
            log.info("%s: access token issued again after %d failed request(s)", self.key, self._failures)
        self._failures = 0
        self._last_error = None
        log.debug("%s: access token %s issued for %.0fs", self.key, token.fingerprint(), token.lifetime)
        if self._observer is not None:
            try:
                self._observer.token_issued(self.key, token)
            except Exception:
                log.exception("%s: token observer failed", self.key)

    def _failed(self, grant: Grant, error: TokenError) -> None:
        if grant is not self._grant:  # about credentials replaced meanwhile: irrelevant, try the new ones at once
            log.debug("%s: request with replaced credentials failed: %s", self.key, error)
            self._next_at = time.monotonic()
            return
        self._failures += 1
        self._last_error = error
        delay = min(self._max_backoff, self._min_backoff * 2 ** min(self._failures - 1, 32)) * random.uniform(0.5, 1.0)
        if not error.retryable:
            delay = max(delay, self._refusal_backoff)
        self._next_at = time.monotonic() + delay
        log.warning("%s: %s (retry in %.1fs)", self.key, error, delay)
        if self._observer is not None:
            try:
                self._observer.token_failed(self.key, error, delay)
            except Exception:
                log.exception("%s: token observer failed", self.key)

    def _check_open(self) -> None:
        if self._closed:
            raise TokenUnavailable(f"{self.key}: token keeper closed", self._last_error)

    async def _next_outcome(self, deadline: float, timeout: float) -> None:
        """Wait for the next request to settle (either way), or raise ``TokenUnavailable`` at the deadline."""
        settled = self._settled
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                await settled.wait()
        except TimeoutError:
            raise TokenUnavailable(f"{self.key}: no access token within {timeout:g}s", self._last_error) from None
