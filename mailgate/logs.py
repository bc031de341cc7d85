"""Logging for the gateway: text or one JSON object per line, each with the current request id.

The request id lives in a context variable set by the HTTP middleware, so a
log line written anywhere below a handler (relay, pool) carries it without
being passed around. What is logged is chosen by the callers; this module
adds no request data of its own (no headers, no bodies: credentials travel
in both).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("mailgate_request_id", default=None)

_STANDARD = frozenset(vars(logging.makeLogRecord({})))  # attributes every record has; the rest are `extra`


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "requestId", ...extra}``; exceptions as ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id is not None:
            entry["requestId"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in ("request_id", "message"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the request id in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        record.rid = f" [{request_id}]" if request_id else ""
        return super().format(record)


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """Install one stderr handler on the root logger (replacing earlier ones: safe to call twice)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
