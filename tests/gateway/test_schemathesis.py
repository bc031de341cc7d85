"""schemathesis fuzzes both APIs from the project's own OpenAPI document.

A bounded number of generated requests per operation, against a real gateway
relaying to a real aiosmtpd upstream: every answer must be declared by the
document (status, content type, schema), errors must be problem+json, and no
request may crash or hang the gateway.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.gateway.conftest import ADMIN_TOKEN, GatewayHandle, account
from tests.smtp_servers import Upstream

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)

pytestmark = pytest.mark.timeout(240)


async def _schemathesis(*args: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("st")
    process = await asyncio.create_subprocess_exec(
        str(st), "run", str(OPENAPI), "--checks", CHECKS, "--max-examples", "25", "--seed", "20261128",
        "--request-timeout", "10", "--max-response-time", "10", "--no-shrink", "--warnings", "off", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=200)
    return await process.wait(), output.decode(errors="replace")


def _cases(output: str) -> int:
    """How many requests schemathesis generated: a run that tested nothing must not pass."""
    match = re.search(r"(\d+) generated", output)
    return int(match.group(1)) if match else 0


async def test_send_api_conforms_to_its_openapi_document(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    code, output = await _schemathesis("--url", gw.url, "--include-tag", "send")
    assert code == 0, output[-6000:]
    assert _cases(output) >= 100, output[-3000:]
    assert await gw.http.get(f"{gw.url}/livez") is not None  # still answering after the fuzzing


async def test_admin_api_conforms_to_its_openapi_document(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    code, output = await _schemathesis(
        "--url", gw.admin_url, "--include-tag", "admin", "--header", f"Authorization: Bearer {ADMIN_TOKEN}"
    )
    assert code == 0, output[-6000:]
    assert _cases(output) >= 100, output[-3000:]
