"""Standalone mode: a gateway configured from YAML files instead of an operator (``mailgate serve``, ``mailgate dev``).

``loader`` reads the SmtpAccount and Secret YAML ``kubectl apply -f`` takes
into a ``ConfigSnapshot``; ``apikeys`` authenticates callers with hashed API
keys; ``watcher`` reloads both on change; ``serve`` and ``dev`` assemble a
gateway around them. Nothing here is imported by the in-cluster gateway
unless it is given ``--api-keys``.
"""

from .apikeys import ApiKeys, KeyRing, load_keys
from .loader import ConfigError, load_snapshot

__all__ = ["ApiKeys", "ConfigError", "KeyRing", "load_keys", "load_snapshot"]
