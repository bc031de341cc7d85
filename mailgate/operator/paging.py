"""Paged LISTs as raw JSON, one page at a time: 10,000 objects never make one response.

Raw JSON (``_preload_content=False``) because the client's models would cost
far more than the data; the caller reads the fields it needs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException


async def listed(list_page: Callable[..., Awaitable[object]], page_size: int, **options: Any) -> AsyncIterator[dict[str, Any]]:
    """The items of ``list_page(limit=..., _continue=..., **options)``, following ``continue`` tokens."""
    token: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page_size, "_preload_content": False, **options}
        if token:
            params["_continue"] = token
        response = cast(aiohttp.ClientResponse, await list_page(**params))  # what the client returns without _preload_content
        async with response:
            if response.status != 200:
                raise ApiException(status=response.status, reason=response.reason)
            page = json.loads(await response.read())
        for item in page.get("items") or ():
            yield item
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return
