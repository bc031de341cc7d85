"""`mailgate serve` as a user runs it: a real child process, real HTTP, real aiosmtpd upstreams.

Every test's gateway runs with a sentinel upstream password; the fixture
checks at the end that the sentinel never appeared in anything it printed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from mailgate.gateway.apikeys import generate_key, hash_key
from tests.standalone.support import MESSAGE, SENTINEL, account_yaml, write_atomically

pytestmark = pytest.mark.timeout(120)


def keys_yaml(*entries: tuple[str, str, list[str]]) -> str:
    lines = [f"  - {{name: {name}, sha256: {hash_key(key)}, accounts: {accounts}}}" for name, key, accounts in entries]
    return "keys:\n" + "\n".join(lines) + "\n"


async def post(session: aiohttp.ClientSession, url: str, key: str | None = None, account: str = "shop/billing") -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with session.post(f"{url}/v1/accounts/{account}/messages", json=MESSAGE, headers=headers) as response:
        await response.read()
        return response.status


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", *args], capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_without_api_keys_or_with_a_broken_file(tmp_path: Path, upstream_factory) -> None:
    upstream = upstream_factory(users={"billing": SENTINEL})
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(upstream))

    result = run_cli("serve", "-f", str(accounts), "--port", "0")
    assert result.returncode == 2
    assert "--api-keys FILE" in result.stderr and "--insecure-no-auth" in result.stderr

    accounts.write_text(account_yaml(upstream).replace(f"port: {upstream.port}", "port: 70000"))
    result = run_cli("serve", "-f", str(accounts), "--insecure-no-auth", "--port", "0")
    assert result.returncode == 2
    assert (
        f"{accounts}: document 2 (SmtpAccount shop/billing): spec.server.port: Input should be less than or equal to 65535"
        in result.stderr
    )
    assert SENTINEL not in result.stdout + result.stderr


async def test_api_keys_decide_who_may_send_through_which_account(tmp_path: Path, upstream_factory, serve) -> None:
    upstream = upstream_factory(users={"billing": SENTINEL})
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(upstream) + "---\n" + account_yaml(upstream, name="news", secret="news-smtp"))
    ci_key, ops_key = generate_key(), generate_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(keys_yaml(("ci", ci_key, ["shop/billing"])))
    gateway = serve("-f", str(accounts), "--api-keys", str(keys))
    await gateway.wait_ready()

    async with aiohttp.ClientSession() as session:
        assert await post(session, gateway.url) == 401
        assert await post(session, gateway.url, key=generate_key()) == 401
        assert await post(session, gateway.url, key=ci_key, account="shop/news") == 403
        assert await post(session, gateway.url, key=ci_key) == 200
        [received] = await asyncio.to_thread(upstream.wait_messages, 1)
        assert received.login == "billing" and received.rcpt_tos == ["ana@example.com"]

        # A new key in the keys file works without a restart; the old one keeps working.
        write_atomically(keys, keys_yaml(("ci", ci_key, ["shop/billing"]), ("ops", ops_key, ["shop/*"])))
        deadline = time.monotonic() + 15
        while (status := await post(session, gateway.url, key=ops_key, account="shop/news")) == 401:
            assert time.monotonic() < deadline, "the new key was never accepted"
            await asyncio.sleep(0.05)
        assert status == 200
        assert await post(session, gateway.url, key=ci_key) == 200
    assert ci_key not in gateway.output() and ops_key not in gateway.output()
    assert "API keys file reloaded: keys: ci, ops" in gateway.output()


async def test_reload_while_clients_send_continuously(tmp_path: Path, upstream_factory, serve) -> None:
    """Move the account to another upstream with another password under load: no request fails."""
    first = upstream_factory(users={"billing": SENTINEL})
    second = upstream_factory(users={"billing": SENTINEL + "-rotated"})
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(first))
    gateway = serve("-f", str(accounts), "--insecure-no-auth")
    await gateway.wait_ready()

    statuses: list[int] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + 30

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set() and len(statuses) < 2000 and time.monotonic() < deadline:
            statuses.append(await post(session, gateway.url))

    async def wait_for(condition, what: str) -> None:
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(8)]
        try:
            await wait_for(lambda: len(first.messages) >= 20, "messages through the first upstream")
            write_atomically(accounts, account_yaml(second))
            await wait_for(lambda: len(second.messages) >= 20, "messages through the second upstream")
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert statuses and set(statuses) == {200}, {status: statuses.count(status) for status in set(statuses)}
    assert len(first.messages) + len(second.messages) == len(statuses)
    assert {login[2] for login in second.counters.logins} == {SENTINEL + "-rotated"}
    await gateway.wait_output("revision 2")


async def test_a_broken_file_keeps_the_last_good_configuration(tmp_path: Path, upstream_factory, serve) -> None:
    first = upstream_factory(users={"billing": SENTINEL})
    second = upstream_factory(users={"billing": SENTINEL})
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(first))
    gateway = serve("-f", str(accounts), "--insecure-no-auth", "--log-level", "debug")
    await gateway.wait_ready()

    # Written in place, not renamed: the watcher may also see a half-written file, which must not matter.
    accounts.write_text(account_yaml(second).replace("tls: none", "tls: sometimes"))
    await gateway.wait_output(f"{accounts}: document 2 (SmtpAccount shop/billing): spec.server.tls: Input should be")
    assert "still serving revision 1" in gateway.output()
    # A YAML syntax error on the password's own line: reported by position, the line itself never printed.
    accounts.write_text(account_yaml(second).replace(f"password: {SENTINEL}", f"password: {SENTINEL}: oops"))
    await gateway.wait_output(f"{accounts}: document 1: invalid YAML: line 4, column")
    async with aiohttp.ClientSession() as session:
        assert await post(session, gateway.url) == 200
        assert len(await asyncio.to_thread(first.wait_messages, 1)) == 1

        accounts.write_text(account_yaml(second))
        await gateway.wait_output("revision 2")
        assert await post(session, gateway.url) == 200
        assert len(await asyncio.to_thread(second.wait_messages, 1)) == 1
    assert len(first.messages) == 1


async def test_serve_with_the_smtp_ingress_relays_an_smtp_client(tmp_path: Path, upstream_factory, serve) -> None:
    """`mailgate serve --smtp-port`: an SMTP-only app on a trusted network relays through the account."""
    import smtplib

    from tests.standalone.support import _free_port

    upstream = upstream_factory(users={"billing": SENTINEL})
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(account_yaml(upstream).replace("  pool:", "  senders: ['*@shop.example']\n  pool:"))
    smtp_port = _free_port()
    process = serve(
        "-f", str(accounts), "--insecure-no-auth",
        "--smtp-port", str(smtp_port), "--smtp-host", "127.0.0.1", "--smtp-trusted-networks", "127.0.0.0/8",
    )  # fmt: skip
    await process.wait_ready()

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            return client.sendmail(
                "app@shop.example", ["rcpt@example.org"], b"Subject: via smtp\r\n\r\nrouted by sender\r\n"
            )

    assert await asyncio.to_thread(send) == {}
    [received] = await asyncio.to_thread(upstream.wait_messages, 1)
    assert received.mail_from == "app@shop.example"
    assert received.login == "billing"
    assert b"routed by sender" in received.data
    assert received.data.startswith(b"Received: ")
