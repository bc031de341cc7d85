"""A gateway holding many accounts builds pool structures only for the ones that send (issue 13).

The status and the metrics still report every configured account, and the
first send through an account pushed long ago goes out over STARTTLS + AUTH.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.gateway.conftest import GatewayHandle, account
from tests.smtp_servers import Upstream

ACCOUNTS = 20


async def test_only_accounts_that_send_get_pool_structures(gw: GatewayHandle, upstream_factory: Any) -> None:
    up: Upstream = upstream_factory(tls="starttls", users={"user": "secret"})
    keys = [f"shop/acct-{index:02d}" for index in range(ACCOUNTS)]
    await gw.configure(*[account(up, name=key.split("/")[1], senders=[f"*@a{i}.example"]) for i, key in enumerate(keys)])
    pool = gw.gateway.pool
    assert pool.materialised() == []

    status, body, _ = await gw.send(account_key="shop/acct-07", **{"from": "app@a7.example"})

    assert status == 200, body
    await asyncio.to_thread(up.wait_messages, 1)
    assert up.counters.logins == [("PLAIN", "user", "secret")]
    assert pool.materialised() == ["shop/acct-07"]

    response = await gw.admin("GET", "/v1/status")
    accounts = (await response.json())["accounts"]
    assert sorted(accounts) == keys
    assert all(accounts[key]["pool"] is not None for key in keys), "an unused account still reports its pool"
    assert accounts["shop/acct-07"]["healthy"] is True and accounts["shop/acct-03"]["healthy"] is None

    async with gw.http.get(gw.url + "/metrics") as metrics:
        text = await metrics.text()
    for key in keys:
        assert f'mailgate_pool_connections{{account="{key}",state="idle"}}' in text
    assert pool.materialised() == ["shop/acct-07"], "status and metrics create nothing"
