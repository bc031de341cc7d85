"""Pydantic validation errors as (field path, message) pairs: the one format every reader of input reports.

The HTTP API's ``errors`` items, standalone mode's file problems, the
operator's invalid-spec message and the CLI all say where a problem is the
same way: dotted names with ``[n]`` for list items
(``spec.access.smtpClients[0].secretRef.name``, ``attachments[0].content``,
``headers.X-Order``), so a user who met one of them reads the others.

Messages are pydantic's own, except that a validator's ``ValueError`` reads
as its text alone (pydantic prefixes ``Value error, ``). Input values are
never included: pydantic's messages name limits and expectations, not the
input, and ``include_input`` is off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["FieldProblem", "field_error", "field_path", "field_problems"]

_KEY = "[key]"  # pydantic's last location item when a mapping's key (not its value) is invalid


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One invalid field: where (``spec.pool.maxConnections``) and what is wrong with it."""

    field: str
    message: str


def field_path(loc: Iterable[int | str]) -> str:
    """``('spec', 'senders', 0)`` -> ``spec.senders[0]``; a mapping key's own error names its entry."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != _KEY:
            path += f".{part}" if path else part
    return path


def field_error(field: str, detail: str) -> PydanticCustomError:
    """An error for a validator to raise about a field below the model it runs on (``headers.X-Order``).

    Pydantic locates a model validator's error at the model itself;
    ``field_problems`` appends ``field`` to that location.
    """
    return PydanticCustomError("invalid_field", "{detail}", {"field": field, "detail": detail})


def field_problems(error: ValidationError, *, whole: str, within: tuple[int | str, ...] = ()) -> list[FieldProblem]:
    """Every problem of ``error``, in pydantic's order.

    ``within`` is where the validated value sits in what the user wrote
    (``("spec",)`` when a spec alone was validated); ``whole`` names the value
    as a whole, for a problem with no field (``body``, ``(document)``).
    """
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        context = item.get("ctx") or {}
        path = field_path((*within, *item["loc"]))
        if item["type"] == "invalid_field":
            path = f"{path}.{context['field']}" if path else str(context["field"])
        if item["type"] == "value_error" and "error" in context:
            message = str(context["error"])
        else:
            message = item["msg"]
        problems.append(FieldProblem(path or whole, message))
    return problems
