"""What every request of both APIs goes through: a request id, errors as problem+json, one access log line.

The request id is the caller's ``X-Request-Id`` when it is a short, safe token
(so a client can correlate), else a fresh one; it is echoed in the response
header, set in problem bodies and carried by every log line of the request.
A caller-chosen id that could forge log lines (spaces, control characters,
anything long) is replaced, not trusted.

The access log line has method, path (never the query: raw-message requests
carry addresses there), status and duration; never a header or a body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..logs import request_id_var
from .problems import problem

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
REQUEST_ID = web.RequestKey("request_id", str)

access_log = logging.getLogger("mailgate.gateway.access")
log = logging.getLogger("mailgate.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERROR_SLUGS = {404: "not-found", 405: "method-not-allowed", 413: "message-too-large", 415: "unsupported-media-type"}


def request_id(request: web.Request) -> str:
    return request[REQUEST_ID]


def _error_response(exc: web.HTTPException, rid: str) -> web.StreamResponse:
    if exc.status < 400:  # redirects and the like pass through unchanged
        return exc
    slug = _HTTP_ERROR_SLUGS.get(exc.status, "invalid-request" if exc.status < 500 else "internal-error")
    # RFC 9110: a 405 says which methods the resource does support.
    headers = {"Allow": ", ".join(sorted(exc.allowed_methods))} if isinstance(exc, web.HTTPMethodNotAllowed) else None
    return problem(slug, exc.reason, request_id=rid, headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    token = request_id_var.set(rid)
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _error_response(exc, rid)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = problem("internal-error", "the gateway failed to handle the request", request_id=rid)
        response.headers[REQUEST_ID_HEADER] = rid
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %d",
                request.method,
                request.path,
                response.status,
                extra={"method": request.method, "path": request.path, "status": response.status,
                       "durationMs": round((time.perf_counter() - started) * 1000, 2)},
            )
        return response
    finally:
        request_id_var.reset(token)
