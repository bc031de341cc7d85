"""Standalone mode: a gateway configured from YAML files instead of an operator (``mailgate serve``, ``mailgate dev``).

``loader`` reads the SmtpAccount and Secret YAML ``kubectl apply -f`` takes
into a ``ConfigSnapshot``; ``watcher`` reloads it and the API keys file
(``gateway/apikeys.py``) on change; ``serve`` and ``dev`` assemble a gateway
around them. The gateway never imports this package: it depends on the
gateway, not the other way round.
"""

from .loader import ConfigError, load_snapshot

__all__ = ["ConfigError", "load_snapshot"]
