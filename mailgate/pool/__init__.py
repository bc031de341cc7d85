"""Pooled, authenticated upstream SMTP sessions, one pool per account."""

from .connection import CloseReason, PooledConnection, TransactionResult
from .errors import PoolClosed, PoolError, PoolTimeout, UnknownAccount
from .pool import HealthCheck, SendResult, SMTPPool, describe_error
from .settings import DEFAULT_PORTS, AccountSettings, AuthMethod, PoolLimits, TLSMode

__all__ = [
    "DEFAULT_PORTS",
    "AccountSettings",
    "AuthMethod",
    "CloseReason",
    "HealthCheck",
    "PoolClosed",
    "PoolError",
    "PoolLimits",
    "PoolTimeout",
    "PooledConnection",
    "SMTPPool",
    "SendResult",
    "TLSMode",
    "TransactionResult",
    "UnknownAccount",
    "describe_error",
]
