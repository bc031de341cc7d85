"""`mailgate serve`: an edit that passes the model but cannot be applied changes nothing (issue 18, item 5).

A real child process reloading real files, real aiosmtpd upstreams. The
broken edit is logged as one line naming the account and the field, the
previous configuration keeps serving whole, the same edit saved again is
tried again, and a fix applies.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp
import pytest

from tests.smtp_servers import Upstream
from tests.standalone.support import MESSAGE, SENTINEL, ServeProcess, start_serve, write_atomically

pytestmark = pytest.mark.timeout(120)

BAD_CA = "-----BEGIN CERTIFICATE-----\nMIIBnot-a-certificate\n-----END CERTIFICATE-----\n"
FAILURE = "shop/c: spec.server.caCertificate"


def account(upstream: Upstream, name: str, sender_domain: str, ca_pem: str | None = None) -> str:
    """Account ``shop/<name>`` with login auth (the sentinel password) and its Secret."""
    server = f"{{host: 127.0.0.1, port: {upstream.port}, tls: {upstream.tls}}}"
    if upstream.tls != "none":
        pem = ca_pem if ca_pem is not None else upstream.ca.ca_pem if upstream.ca else ""
        server = (
            f"\n    host: 127.0.0.1\n    port: {upstream.port}\n    tls: {upstream.tls}\n    caCertificate: |\n"
            + textwrap.indent(pem, "      ")
        )
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {name}-smtp, namespace: shop}}
stringData: {{username: {name}, password: {SENTINEL}}}
---
apiVersion: mailgate.dev/v1alpha1
kind: SmtpAccount
metadata: {{name: {name}, namespace: shop}}
spec:
  server: {server}
  auth: {{method: login, secretRef: {{name: {name}-smtp}}}}
  senders: ["*@{sender_domain}"]
---
"""


async def post(session: aiohttp.ClientSession, url: str, account: str, sender: str) -> int:
    message = {**MESSAGE, "from": sender}
    path = f"/v1/accounts/{account}/messages" if account else "/v1/messages"
    async with session.post(url + path, json=message) as response:
        await response.read()
        return response.status


async def delivered(session: aiohttp.ClientSession, url: str, account: str, sender: str, upstream: Upstream) -> None:
    before = len(upstream.messages)
    assert await post(session, url, account, sender) == 200
    await asyncio.to_thread(upstream.wait_messages, before + 1)


async def until_count(process: ServeProcess, text: str, count: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while process.output().count(text) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{text!r} not seen {count} times:\n{process.output()}"
        await asyncio.sleep(0.05)


async def test_an_edit_that_fails_to_apply_keeps_the_old_configuration_and_is_retried(
    tmp_path: Path, upstream_factory, serve
) -> None:
    up_a = upstream_factory(users={"a": SENTINEL})
    up_b = upstream_factory(users={"b": SENTINEL})
    up_c = upstream_factory(tls="starttls", users={"c": SENTINEL})
    files = tmp_path / "accounts.yaml"
    good = account(up_a, "a", "a.example") + account(up_b, "b", "b.example")
    files.write_text(good)
    gateway = serve("-f", str(files), "--insecure-no-auth")
    await gateway.wait_ready()

    broken = account(up_a, "a", "a.example") + account(up_c, "c", "b.example", ca_pem=BAD_CA)
    async with aiohttp.ClientSession() as session:
        await delivered(session, gateway.url, "shop/b", "x@b.example", up_b)

        write_atomically(files, broken)
        await until_count(gateway, FAILURE, 1)
        [line] = [line for line in gateway.output().splitlines() if FAILURE in line]
        assert "revision 1" in line and "Traceback" not in gateway.output()
        assert "MIIBnot" not in gateway.output()
        await delivered(session, gateway.url, "shop/b", "x@b.example", up_b)
        await delivered(session, gateway.url, "", "y@b.example", up_b)  # routing still points at b
        assert await post(session, gateway.url, "shop/c", "x@b.example") == 404

        write_atomically(files, broken)  # saved again, unchanged: tried again, not remembered as applied
        await until_count(gateway, FAILURE, 2)
        await delivered(session, gateway.url, "shop/b", "x@b.example", up_b)

        write_atomically(files, account(up_a, "a", "a.example") + account(up_c, "c", "b.example"))
        await gateway.wait_output("account files reloaded: revision 2, accounts: shop/a, shop/c")
        await delivered(session, gateway.url, "shop/c", "x@b.example", up_c)
        await delivered(session, gateway.url, "", "y@b.example", up_c)
        assert await post(session, gateway.url, "shop/b", "x@b.example") == 404
    assert up_c.messages[0].login == "c"


def test_serve_refuses_to_start_with_an_account_it_cannot_apply(tmp_path: Path, upstream_factory) -> None:
    up_c = upstream_factory(tls="starttls", users={"c": SENTINEL})
    files = tmp_path / "accounts.yaml"
    files.write_text(account(up_c, "c", "c.example", ca_pem=BAD_CA))
    process = start_serve(tmp_path, "-f", str(files), "--insecure-no-auth")
    try:
        code = process.process.wait(60)
    finally:
        process.stop()
    output = process.output()
    assert code == 2, output
    assert FAILURE in output and SENTINEL not in output and "Traceback" not in output
