"""schemathesis, with every default check, against a real gateway relaying to a real aiosmtpd upstream.

The bounded run of ``make fuzz`` (``bench/fuzz.py``, the same ``run_schemathesis`` and the same
``schemathesis.toml``): a fixed seed and ~25 cases per operation and phase. Every answer must be declared
by the document (status, content type, schema, headers), schema-valid requests must be accepted and
schema-violating ones refused, a 405 must say ``Allow``, and no request may crash or hang the gateway.
Schema-valid sends must also reach the upstream: a document looser than the server would be answered 400.
"""

from __future__ import annotations

import pytest

from bench.fuzz import API_KEY, NAME, NAMESPACE, ROUTED_DOMAIN, Tally, run_schemathesis
from mailgate.gateway.apikeys import ApiKeyEntry, ApiKeys, KeyRing, hash_key
from tests.gateway.conftest import ADMIN_TOKEN, GatewayFactory, GatewayHandle, account
from tests.smtp_servers import Upstream

SEED = 20261128
pytestmark = pytest.mark.timeout(420)


@pytest.fixture
async def fuzz_gw(gateway_factory: GatewayFactory, upstream: Upstream) -> GatewayHandle:
    """The accounts ``schemathesis.toml`` and the hooks expect, both relaying to ``upstream``; callers use API keys."""
    keys = KeyRing([ApiKeyEntry(name="fuzz", sha256=hash_key(API_KEY), accounts=["*"])])
    gw = await gateway_factory(ApiKeys(keys))
    await gw.configure(
        account(upstream, namespace=NAMESPACE, name=NAME),
        account(upstream, namespace=NAMESPACE, name="routed", senders=[f"*@{ROUTED_DOMAIN}"]),
    )
    return gw


def _passed(tally: Tally, at_least: int) -> None:
    assert tally.exit_code == 0, tally.output[-8000:]
    assert tally.requests >= at_least, tally.output[-3000:]  # a run that tested nothing must not pass


async def test_send_api_conforms_and_valid_requests_are_delivered(fuzz_gw: GatewayHandle, upstream: Upstream) -> None:
    tally = await run_schemathesis(fuzz_gw.url, tag="send", max_examples=25, seed=SEED, token=API_KEY, timeout=360)
    _passed(tally, at_least=200)
    assert tally.positive_send >= 20, tally.positive
    assert len(upstream.messages) * 2 >= tally.positive_send, (len(upstream.messages), tally.positive, tally.accepted)
    async with fuzz_gw.http.get(f"{fuzz_gw.url}/livez") as response:  # still answering after the fuzzing
        assert response.status == 200


async def test_admin_api_conforms_to_its_openapi_document(fuzz_gw: GatewayHandle) -> None:
    tally = await run_schemathesis(fuzz_gw.admin_url, tag="admin", max_examples=25, seed=SEED, token=ADMIN_TOKEN, timeout=360)
    _passed(tally, at_least=200)
    assert sum(tally.accepted.values()) >= 10, tally.accepted  # configurations were applied, not only refused
