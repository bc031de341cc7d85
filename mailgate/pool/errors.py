"""Errors the pool raises itself; upstream answers surface as aiosmtplib exceptions."""


class PoolError(Exception):
    """Base class for failures of the pool rather than of the upstream server."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection became available before the acquire deadline (pool saturated)."""


class PoolClosed(PoolError):
    """The pool is shutting down and hands out no more connections."""


class UnknownAccount(PoolError, KeyError):
    """An account name that was never configured (or was removed)."""
