"""Errors the pool raises itself; upstream failures of a send surface as ``TransactionError`` (with its phase)."""


class PoolError(Exception):
    """Base class for failures of the pool rather than of the upstream server."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection became available before the acquire deadline (pool saturated)."""


class PoolClosed(PoolError):
    """The pool is shutting down and hands out no more connections."""


class UnknownAccount(PoolError, KeyError):
    """An account name that was never configured (or was removed)."""


class AlreadyReleased(PoolError, RuntimeError):
    """A connection handle was released already: releasing or using it again would share its session.

    Raised before anything changes, so a confused caller cannot corrupt the
    pool's ownership: the session stays with whoever owns it now.
    """
