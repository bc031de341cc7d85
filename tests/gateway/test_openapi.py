"""The OpenAPI document and docs/api.md stay true to the code."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mailgate.gateway.compose import DATE_PATTERN, SendRequest
from mailgate.gateway.openapi import Problem, SendResponse, openapi_json
from mailgate.gateway.problems import PROBLEM_TYPES
from mailgate.relay.outcomes import Reason
from mailgate.snapshot import AccountConfig
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


# --------------------------------------------------------------------------- the document says what the server does

DOCUMENT = json.loads(openapi_json())
QUICK = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BASE = {"from": "app@shop.example", "to": ["ann@example.org"], "text": "hi"}


def _documented(name: str) -> jsonschema_rs.Validator:
    """The document's schema ``name``, judged as schemathesis judges it (ECMA-262 patterns, formats asserted)."""
    return jsonschema_rs.validator_for({"components": DOCUMENT["components"], "$ref": f"#/components/schemas/{name}"},
                                       validate_formats=True)  # fmt: skip


SEND_REQUEST = _documented("SendRequest")
ACCOUNT_CONFIG = _documented("AccountConfig")


def _sendable(body: dict[str, Any]) -> bool:
    try:
        SendRequest.model_validate_json(json.dumps(body))
    except ValidationError:
        return False
    return True


def _servable(body: dict[str, Any]) -> bool:
    try:
        AccountConfig.model_validate_json(json.dumps(body))
    except ValidationError:
        return False
    return True


def assert_agree(body: dict[str, Any]) -> None:
    assert SEND_REQUEST.is_valid(body) == _sendable(body), body


PRINTABLE = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=20)
SOME_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@QUICK
@given(name=PRINTABLE | st.sampled_from(["Content-Type", "RESENT-FROM", "reply-to", "X-Reply-To", "Received", "From "]))
def test_header_names_the_document_allows_are_the_ones_the_server_takes(name: str) -> None:
    assert_agree({**BASE, "headers": {name: "x"}})


DATES = st.from_regex(DATE_PATTERN, fullmatch=True)


@QUICK
@given(value=SOME_TEXT | DATES | DATES.map(lambda v: v + "*"))
def test_dates_the_document_allows_are_the_ones_the_server_takes_and_real_days(value: str) -> None:
    assert_agree({**BASE, "headers": {"Date": value}})
    if SEND_REQUEST.is_valid({**BASE, "headers": {"date": value}}):
        parsedate_to_datetime(value)  # a documented date is a calendar day the stdlib reads


@QUICK
@given(literal=st.text(st.sampled_from("0123456789abcdefABCDEF:.%"), max_size=45), prefix=st.sampled_from(["IPv6:", "ipv6:", ""]))
def test_address_literals_the_document_allows_are_the_ones_the_server_takes(literal: str, prefix: str) -> None:
    assert_agree({**BASE, "to": [f"Ops <ops@[{prefix}{literal}]>"]})
    assert_agree({**BASE, "to": [f"ops@[{prefix}{literal}]"]})


@QUICK
@given(value=st.text(st.sampled_from("aZ09!#.-+_~ <>@\"'é\t"), max_size=40))
def test_name_address_strings_the_document_allows_are_the_ones_the_server_takes(value: str) -> None:
    assert_agree({**BASE, "to": [value]})


@QUICK
@given(
    filename=SOME_TEXT,
    content_type=st.text(st.sampled_from("ab/;= \t\"-+.mMuUlLtTiIpPrRsSgGeE"), max_size=30),
    content=st.text(st.sampled_from("QUJDRA+/=\n\r\t \x0b\xa0é-_"), max_size=24),
    content_id=st.none() | st.text(st.sampled_from("ab.@<>- "), max_size=12),
)
def test_attachments_the_document_allows_are_the_ones_the_server_takes(
    filename: str, content_type: str, content: str, content_id: str | None
) -> None:
    for attachment in (
        {"filename": filename, "content": "QUJD"},
        {"filename": "a", "contentType": content_type, "content": ""},
        {"filename": "a", "content": content},
        {"filename": "a", "content": "", "contentId": content_id},
    ):
        assert_agree({**BASE, "attachments": [attachment]})


@pytest.mark.parametrize(
    "fields",
    [
        {"to": [], "cc": ["a@example.org"]},
        {"to": [], "bcc": []},
        {"text": None, "html": "<p>x</p>"},
        {"text": None},
        {"text": None, "attachments": [{"filename": "a", "content": ""}]},
        {"text": ""},
        {"from": "jörg@bücher.example"},
        {"from": {"name": "Jörg", "address": "jörg@bücher.example"}},
        {"from": " app@shop.example"},
        {"from": "app@shop.example "},
        {"from": "Ops < ops@shop.example>"},
        {"from": '"quoted"@shop.example'},
        {"from": {"name": "n" * 257, "address": "a@shop.example"}},
        {"from": {"name": "Ops", "address": "Ops <a@shop.example>"}},
        {"subject": "tab\tin it"},
        {"headers": {"Message-ID": "<a.b@c.d>"}},
        {"headers": {"message-id": "no-brackets@c.d"}},
        {"headers": {"X-Note": "für Sie"}},
    ],
)
def test_document_and_server_agree_on_examples(fields: dict[str, Any]) -> None:
    assert_agree({**BASE, **fields})


def test_the_one_form_the_document_states_narrower_than_the_server() -> None:
    """IDNA is no regular language: the Name <address> pattern spells out ASCII addresses, the description says the rest."""
    body = {**BASE, "from": "Jörg <jörg@bücher.example>"}
    assert _sendable(body) and not SEND_REQUEST.is_valid(body)
    address = DOCUMENT["components"]["schemas"]["SendRequest"]["properties"]["to"]["items"]
    assert "International addresses" in address["description"]


def _account(**spec: Any) -> dict[str, Any]:
    return {"namespace": "shop", "name": "billing", "spec": {"server": {"host": "smtp.example.com"}, **spec}}


@pytest.mark.parametrize(
    "body",
    [
        _account(),
        {**_account(), "spec": {"server": {"host": "smtp.example.com:25"}}},
        {**_account(), "spec": {"server": {"host": "2001:db8::25"}}},
        _account(senders=["*@shop.example", "app@*.shop.example"]),
        _account(senders=["app\x85@shop.example"]),
        _account(senders=["app\ufeff@shop.example"]),
        _account(auth={"method": "login"}),
        _account(auth={"method": "login", "secretRef": {"name": "s"}}),
        _account(auth={"method": "login", "secretRef": None}),
        _account(auth={"method": "none", "oauth2": None}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "google", "mailbox": "a@shop.example"}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "google", "mailbox": "a@shop.example", "clientId": None}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "microsoft", "mailbox": "a@shop.example", "clientId": "c"}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "microsoft", "mailbox": "a@shop.example", "clientId": "c", "tenantId": "t"}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "generic", "mailbox": "a@shop.example", "clientId": "c"}}),
        _account(auth={"method": "oauth2", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "generic", "mailbox": "a@shop.example", "clientId": "c",
                                  "tokenUrl": "https://login.example.com/token"}}),
        _account(auth={"method": "login", "secretRef": {"name": "s"},
                       "oauth2": {"provider": "google", "mailbox": "a@shop.example"}}),
    ],
)  # fmt: skip
def test_document_and_server_agree_on_accounts(body: dict[str, Any]) -> None:
    assert ACCOUNT_CONFIG.is_valid(body) == _servable(body), body


@pytest.mark.parametrize(
    ("method", "path", "allowed"), [("PUT", "/v1/accounts/a/b/messages", "GET, HEAD, POST"), ("POST", "/livez", "GET, HEAD")]
)
async def test_405_answers_say_which_methods_the_path_has(gw: GatewayHandle, method: str, path: str, allowed: str) -> None:
    async with gw.http.request(method, gw.url + path) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allowed
        assert response.content_type == "application/problem+json"
    admin = await gw.admin("POST", "/v1/status")
    assert (admin.status, admin.headers["Allow"]) == (405, "GET, HEAD")
