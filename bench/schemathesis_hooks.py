"""schemathesis hooks for docs/openapi.json (``schemathesis.toml`` loads them): what one request cannot say.

JSON Schema states each value's own constraints. A few server rules relate a value to another one (the
account in the path and in the body, a pool's two timeouts, header names alike but for case), to another
request (revisions only move forward, an Idempotency-Key replays its first answer), to the configuration
(a routed send needs a sender an account claims) or to the body's media type (``from``/``to`` apply to
message/rfc822 only). The document states those in its descriptions; these hooks keep generated requests
clear of them. A hook only ever turns a value the schema accepts into another one it accepts, so a
schema-violating case stays one.
"""

from __future__ import annotations

import copy
import itertools
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote

import schemathesis
from schemathesis import Case, GenerationMode, HookContext
from schemathesis.core.parameters import ParameterLocation

from bench.fuzz import ROUTED_DOMAIN

_SEND = ["sendMessage", "sendMessageRouted"]
_MAX_SECONDS = 86400  # PoolSpec's bound of ttlSeconds and healthCheckAfterIdleSeconds
_REQUEST_NUMBERS = itertools.count(1)
_REVISIONS = itertools.count(int(time.time() * 1000))  # newer than any earlier run's, against the same gateway
_F = TypeVar("_F", bound=Callable[..., Any])
_RAW_FROM = re.compile(r"^(From: [^\r\n]*@)[A-Za-z0-9.-]+", re.MULTILINE)

# A raw message body is a string in the document; on the wire it is that string's UTF-8 bytes.
schemathesis.serializer.alias("message/rfc822", "text/plain")


def _hook(name: str, operations: str | list[str]) -> Callable[[_F], _F]:
    """``schemathesis.hook(name).apply_to(operation_id=operations)``, whose filter chain mypy cannot see."""
    register: Any = schemathesis.hook(name)
    return cast(Callable[[_F], _F], register.apply_to(operation_id=operations))


def _negative(case: Case, location: ParameterLocation) -> bool:
    component = case.meta.components.get(location) if case.meta is not None else None
    return component is not None and component.mode == GenerationMode.NEGATIVE


def _non_negative_integer(value: Any) -> bool:
    """A JSON integer of 0 or more (2.0 is one too); a boolean or a fraction is a type violation, left alone."""
    return (type(value) is int or (type(value) is float and value.is_integer())) and value >= 0


# --------------------------------------------------------------------------- send API


@_hook("map_case", _SEND)
def one_request_per_idempotency_key(context: HookContext, case: Case) -> Case:
    """A valid generated key, made unique: a key seen before replays (or, with another body, refuses) instead."""
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if case.headers and isinstance(key, str) and not _negative(case, ParameterLocation.HEADER):
        headers = case.headers.copy()
        headers["Idempotency-Key"] = f"{next(_REQUEST_NUMBERS)}:{key}"[:255]
        case.headers = headers
    return case


@_hook("map_case", _SEND)
def header_names_once(context: HookContext, case: Case) -> Case:
    """Header names are case-insensitive: of X-Tag and x-tag, a valid body keeps the first (the server refuses both)."""
    body = case.body
    headers = body.get("headers") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(headers, dict) and not _negative(case, ParameterLocation.BODY):
        kept: dict[str, Any] = {}
        for name, value in headers.items():
            if name.lower() not in {seen.lower() for seen in kept}:
                kept[name] = value
        case.body = {**body, "headers": kept}
    return case


@_hook("filter_case", _SEND)
def envelope_parameters_with_a_raw_message(context: HookContext, case: Case) -> bool:
    """An invalid from/to is refused with a message/rfc822 body; a JSON body carries its own envelope and the
    gateway ignores them, so a JSON case whose only violation is in from/to tests nothing the document promises."""
    violated = _negative(case, ParameterLocation.QUERY) and not _negative(case, ParameterLocation.BODY)
    return not (violated and case.media_type == "application/json" and {"from", "to"} & set(case.query or {}))


@_hook("map_case", "sendMessageRouted")
def sender_routes_to_an_account(context: HookContext, case: Case) -> Case:
    """A valid sender, moved to the domain an account claims: routing refuses (403) a sender no account claims,
    which a random domain always is. The local part, display name and address form stay as generated."""
    if _negative(case, ParameterLocation.BODY) or _negative(case, ParameterLocation.QUERY):
        return case
    query, body = case.query or {}, case.body
    if isinstance(body, str):  # message/rfc822: the From field, and the envelope sender when given
        case.body = _RAW_FROM.sub(lambda match: match.group(1) + ROUTED_DOMAIN, body, count=1)
        if isinstance(query.get("from"), str):
            case.query = {**query, "from": _routed(query["from"])}
    elif isinstance(body, dict):
        sender = body.get("from")
        address = sender.get("address") if isinstance(sender, dict) else None
        if isinstance(sender, str):
            case.body = {**body, "from": _routed(sender)}
        elif isinstance(sender, dict) and isinstance(address, str):
            case.body = {**body, "from": {**sender, "address": _routed(address)}}
    return case


def _routed(address: str) -> str:
    """``local@x`` / ``Name <local@x>`` with the domain replaced."""
    at = address.rfind("@")
    return address if at < 0 else address[: at + 1] + ROUTED_DOMAIN + (">" if address.endswith(">") else "")


# --------------------------------------------------------------------------- admin API


@_hook("map_case", ["putConfig", "putAccount", "deleteAccount"])
def revisions_move_forward(context: HookContext, case: Case) -> Case:
    """A valid revision, made newer than the last: an older one is refused (409) whatever the rest says."""
    body, query = case.body, case.query or {}
    if isinstance(body, dict) and _non_negative_integer(body.get("revision")) and not _negative(case, ParameterLocation.BODY):
        case.body = {**body, "revision": next(_REVISIONS)}
    elif "revision" in query and not _negative(case, ParameterLocation.QUERY):
        case.query = {**query, "revision": next(_REVISIONS)}
    return case


@_hook("map_case", "putAccount")
def path_names_the_body_account(context: HookContext, case: Case) -> Case:
    """The path names the account the body describes (the server refuses a body for another account)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("namespace"), str) and isinstance(body.get("name"), str):
        names = {key: quote(str(body[key]), safe="") for key in ("namespace", "name")}  # path values travel quoted
        case.path_parameters = {**(case.path_parameters or {}), **names}
    return case


@_hook("map_case", ["putAccount", "putConfig"])
def health_check_below_ttl(context: HookContext, case: Case) -> Case:
    """healthCheckAfterIdleSeconds below ttlSeconds, in every account's pool."""
    body: Any = copy.deepcopy(case.body)  # changed in place below; the generated value stays as drawn
    accounts = body.get("accounts") if isinstance(body, dict) and "accounts" in body else [body]
    for account in accounts if isinstance(accounts, list) else []:
        spec = account.get("spec") if isinstance(account, dict) else None
        pool = spec.get("pool") if isinstance(spec, dict) else None
        if isinstance(pool, dict):
            _health_check_below_ttl(pool)
    case.body = body
    return case


def _health_check_below_ttl(pool: dict[str, Any]) -> None:
    ttl, health = pool.get("ttlSeconds", 300), pool.get("healthCheckAfterIdleSeconds", 10)  # the model's defaults
    if not (_non_negative_integer(ttl) and _non_negative_integer(health)):
        return  # a type violation: a negative case, left as it is
    if 1 <= ttl <= _MAX_SECONDS and health <= _MAX_SECONDS and health >= ttl:
        pool["healthCheckAfterIdleSeconds"] = int(ttl) - 1
