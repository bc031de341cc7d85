"""Pooled, authenticated upstream SMTP sessions, one pool per account."""

from .connection import CloseReason, Phase, PooledConnection, TransactionError, TransactionResult
from .errors import AlreadyReleased, PoolClosed, PoolError, PoolTimeout, UnknownAccount
from .pool import HealthCheck, SendResult, SMTPPool, describe_error
from .settings import DEFAULT_PORTS, AccountSettings, AuthMethod, PoolLimits, TLSMode, TokenSource

__all__ = [
    "DEFAULT_PORTS",
    "AccountSettings",
    "AlreadyReleased",
    "AuthMethod",
    "CloseReason",
    "HealthCheck",
    "Phase",
    "PoolClosed",
    "PoolError",
    "PoolLimits",
    "PoolTimeout",
    "PooledConnection",
    "SMTPPool",
    "SendResult",
    "TLSMode",
    "TokenSource",
    "TransactionError",
    "TransactionResult",
    "UnknownAccount",
    "describe_error",
]
