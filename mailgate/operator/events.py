"""Posts core/v1 Events about an SmtpAccount from outside kopf's handlers.

The status writer runs beside kopf, not inside a handler, so ``kopf.event``
(which needs kopf's per-handler context) is not available there. Events are
auxiliary: a failure to post one is logged and never retried or raised.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

COMPONENT = "mailgate-operator"
_MAX_MESSAGE = 1024


def event_body(ref: dict[str, Any], kind: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about ``ref`` (``apiVersion``, ``kind`` and ``metadata`` name/namespace/uid)."""
    meta = ref["metadata"]
    stamp = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": ref["apiVersion"],
            "kind": ref["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:_MAX_MESSAGE],
        "source": {"component": COMPONENT},  # the "From" column of kubectl describe
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(api_client: ApiClient, ref: dict[str, Any], kind: str, reason: str, message: str, now: datetime) -> None:
    """Post a ``kind`` (Normal or Warning) Event; failures are logged, not raised."""
    body = event_body(ref, kind, reason, message, now)
    try:
        # The client serialises a plain dict as it is; the stub only knows its model class.
        await CoreV1Api(api_client).create_namespaced_event(body["metadata"]["namespace"], body)  # type: ignore[arg-type]
    except ApiException as error:
        log.warning("event %s about %s not posted: HTTP %s %s", reason, ref["metadata"]["name"], error.status, error.reason)
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("event %s about %s not posted: %s", reason, ref["metadata"]["name"], type(error).__name__)
