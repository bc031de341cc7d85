"""The OpenAPI document and docs/api.md stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from mailgate.gateway.openapi import Problem, SendResponse, openapi_json
from mailgate.gateway.problems import PROBLEM_TYPES
from mailgate.gateway.relay import Reason
from tests.gateway.conftest import GatewayHandle, account
from tests.smtp_servers import Upstream

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def test_served_document_equals_the_checked_in_one(gw: GatewayHandle) -> None:
    async with gw.http.get(gw.url + "/openapi.json") as response:
        assert response.status == 200
        served = await response.read()
    assert served == openapi_json()
    assert (DOCS / "openapi.json").read_bytes() == served, "run: python -m mailgate.gateway.openapi > docs/openapi.json"


def test_document_describes_both_apis() -> None:
    import json

    doc = json.loads(openapi_json())
    assert doc["openapi"] == "3.1.0"
    send = doc["paths"]["/v1/accounts/{namespace}/{name}/messages"]["post"]
    assert set(send["requestBody"]["content"]) == {"application/json", "message/rfc822"}
    assert {"200", "400", "401", "403", "404", "413", "415", "429", "502", "503", "504"} <= set(send["responses"])
    assert "from" in doc["components"]["schemas"]["SendRequest"]["properties"]
    for path in ("/v1/config", "/v1/config/accounts/{namespace}/{name}", "/v1/status"):
        assert path in doc["paths"]


def test_every_reason_has_a_problem_type_and_the_docs_table_matches() -> None:
    assert {r.value for r in Reason} <= set(PROBLEM_TYPES)
    rows = re.findall(r"^\| `([a-z-]+)` \| (\d{3}) \| (yes|no|depends) \|", (DOCS / "api.md").read_text(), re.MULTILINE)
    documented = {slug: (int(status), retryable) for slug, status, retryable in rows}
    assert set(documented) == set(PROBLEM_TYPES)
    for slug, kind in PROBLEM_TYPES.items():
        status, retryable = documented[slug]
        assert status == kind.status, slug
        if retryable != "depends":
            assert (retryable == "yes") == kind.retryable, slug


async def test_real_answers_match_the_documented_models(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.rcpt_replies["bad@example.org"] = "550 5.1.1 no such user"
    await gw.configure(account(upstream, rateLimit={"messagesPerMinute": 10}))
    status, body, _ = await gw.send(to=["ok@example.org", "bad@example.org"])
    assert status == 200
    SendResponse.model_validate(body)
    for send in (gw.send(to=["x"]), gw.send(), gw.send(account_key="a/b")):
        status, body, _ = await send
        assert status in (400, 404, 429)
        Problem.model_validate(body)
