"""``python -m bench.fuzz`` (``make fuzz``): schemathesis against a real gateway relaying to a capture SMTP server.

In this process: a capture SMTP server (``mailgate.devserver``, the one ``mailgate dev`` uses), a gateway
with its admin API and an API key, and two accounts relaying to the capture server (``accounts``). Then
``st run`` with every default check, the repository's ``schemathesis.toml`` and its hooks
(``bench/schemathesis_hooks.py``), first against the send API, then against the admin API (which replaces
the configuration, so it comes last). ``--serve`` only starts the gateway, to run ``st`` by hand.

Prints how many requests schemathesis made, how many schema-valid (positive) cases the send API got, how
many messages the capture server received and how many positive cases reached it. Exits non-zero when a check failed,
when fewer requests than ``--min-requests`` were made, or when fewer than half of the positive send cases
reached the upstream. ``tests/gateway/test_schemathesis.py`` runs the same ``run_schemathesis`` bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the hooks module imports this one's constants into st's process: keep it light
    from mailgate.devserver import CaptureStore
    from mailgate.gateway.app import Gateway

REPO = Path(__file__).resolve().parents[1]
OPENAPI = REPO / "docs" / "openapi.json"
CONFIG = REPO / "schemathesis.toml"
NAMESPACE, NAME = "fuzz", "capture"  # the account schemathesis.toml pins the send path to
SEND_OPERATIONS = frozenset({"POST /v1/accounts/{namespace}/{name}/messages", "POST /v1/messages"})
ROUTED_DOMAIN = "routed.fuzz.example"  # what fuzz/routed claims, and where the hooks move routed senders
ADMIN_TOKEN = "fuzz-admin-token"
API_KEY = "fuzz-api-key"


@dataclass
class Tally:
    """What one ``st run`` did, read from its NDJSON report (every generated case is in it)."""

    exit_code: int
    output: str
    requests: int = 0
    positive: dict[str, int] = field(default_factory=dict)  # positive cases per operation
    accepted: dict[str, int] = field(default_factory=dict)  # of which answered 2xx

    @property
    def positive_send(self) -> int:
        return sum(n for label, n in self.positive.items() if label in SEND_OPERATIONS)

    @property
    def accepted_send(self) -> int:
        return sum(n for label, n in self.accepted.items() if label in SEND_OPERATIONS)

    def read(self, report: Path) -> None:
        for line in report.read_text().splitlines():
            event = json.loads(line).get("ScenarioFinished")
            if event is None:
                continue
            recorder = event["recorder"]
            label = recorder["label"]
            self.requests += len(recorder.get("interactions", {}))
            for case_id, case in recorder.get("cases", {}).items():
                if case["value"]["meta"]["generation"]["mode"] != "positive":
                    continue
                self.positive[label] = self.positive.get(label, 0) + 1
                response = recorder["interactions"].get(case_id, {}).get("response") or {}
                if 200 <= response.get("status_code", 0) < 300:
                    self.accepted[label] = self.accepted.get(label, 0) + 1


async def run_schemathesis(
    url: str, *, tag: str, max_examples: int, seed: int, token: str, timeout: float, extra: Sequence[str] = ()
) -> Tally:
    """``st run`` on the document for one tag, with every default check and the repository's config."""
    st = Path(sys.executable).with_name("st")
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.ndjson"
        process = await asyncio.create_subprocess_exec(
            str(st), "--config-file", str(CONFIG), "run", str(OPENAPI), "--url", url, "--include-tag", tag,
            "--header", f"Authorization: Bearer {token}", "--max-examples", str(max_examples), "--seed", str(seed),
            "--workers", "1", "--request-timeout", "10", "--no-shrink", "--warnings", "off",
            "--generation-database", "none", "--report", "ndjson", "--report-ndjson-path", str(report), *extra,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        tally = Tally(await process.wait(), output.decode(errors="replace"))
        if report.exists():
            tally.read(report)
    return tally


def accounts(port: int) -> list[dict[str, Any]]:
    """``fuzz/capture`` (any sender) for the per-account path, ``fuzz/routed`` claiming the senders the hooks
    route (``ROUTED_DOMAIN``); both relay to the capture server on ``port``."""
    server = {"host": "127.0.0.1", "port": port, "tls": "none"}
    return [
        {"namespace": NAMESPACE, "name": NAME, "spec": {"server": server}},
        {"namespace": NAMESPACE, "name": "routed", "spec": {"server": server, "senders": [f"*@{ROUTED_DOMAIN}"]}},
    ]


@contextlib.asynccontextmanager
async def fuzz_gateway() -> AsyncIterator[tuple[Gateway, CaptureStore]]:
    """A gateway (API key ``API_KEY``, admin token ``ADMIN_TOKEN``) serving ``accounts``, and what it relayed."""
    from mailgate.devserver import CaptureServer, CaptureStore
    from mailgate.gateway.apikeys import ApiKeyEntry, ApiKeys, KeyRing, hash_key
    from mailgate.gateway.app import Gateway, GatewayOptions
    from mailgate.snapshot import ConfigSnapshot

    store = CaptureStore(max_messages=10**6)  # counted, not shown: keep them all
    capture = await CaptureServer(store).start()
    keys = KeyRing([ApiKeyEntry(name="fuzz", sha256=hash_key(API_KEY), accounts=["*"])])
    options = GatewayOptions(port=0, admin_port=0, admin_token=ADMIN_TOKEN, hostname="fuzz.localhost",
                             ehlo_hostname="localhost", shutdown_grace=5.0)  # fmt: skip
    gateway = Gateway(ApiKeys(keys), options)
    try:
        await gateway.start()
        await gateway.apply_snapshot(ConfigSnapshot.model_validate({"revision": 1, "accounts": accounts(capture.port)}))
        yield gateway, store
    finally:
        await gateway.stop()  # before the capture server: the pool QUITs its sessions
        await capture.stop()


async def _fuzz(args: argparse.Namespace) -> int:
    # Requests over aiohttp's line limits are answered by its parser (text/plain 400, as documented) and logged
    # as errors there; the gateway's own errors (mailgate.gateway) stay visible.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    async with fuzz_gateway() as (gateway, store):
        if args.serve:
            print(f"send API {gateway.url} (Bearer {API_KEY}), admin API {gateway.admin_url} (Bearer {ADMIN_TOKEN})", flush=True)
            await asyncio.Event().wait()  # until Ctrl-C
        common = {"seed": args.seed, "timeout": args.timeout}
        send = await run_schemathesis(gateway.url, tag="send", max_examples=args.send_examples, token=API_KEY, **common)
        delivered = len(store.messages())
        admin = await run_schemathesis(
            gateway.admin_url, tag="admin", max_examples=args.admin_examples, token=ADMIN_TOKEN, **common
        )
    return _report(send, admin, delivered, args.min_requests)


def _report(send: Tally, admin: Tally, delivered: int, min_requests: int) -> int:
    for name, tally in (("send API", send), ("admin API", admin)):
        if tally.exit_code != 0:
            print(f"--- schemathesis output, {name} ---\n{tally.output}")
    requests = send.requests + admin.requests
    # A 2xx is the upstream's acceptance, and the upstream counts what it received: the smaller of the two is
    # what surely reached it (a case schemathesis calls negative only for an ignored extra parameter arrives too).
    reached = min(delivered, send.accepted_send)
    ratio = reached / send.positive_send if send.positive_send else 0.0
    print(f"requests generated: {requests} (send API {send.requests}, admin API {admin.requests})")
    for label in sorted(send.positive):
        print(f"positive cases, {label}: {send.positive[label]}, answered 2xx: {send.accepted.get(label, 0)}")
    print(f"positive send cases: {send.positive_send}; messages the capture upstream received: {delivered}")
    print(f"delivered positive send cases: {reached} of {send.positive_send} ({ratio:.1%})")
    problems = [f"schemathesis failed on the {name} (exit {t.exit_code})" for name, t in
                (("send API", send), ("admin API", admin)) if t.exit_code != 0]  # fmt: skip
    if requests < min_requests:
        problems.append(f"only {requests} requests, fewer than {min_requests}")
    if ratio < 0.5:
        problems.append("fewer than half of the positive send cases reached the upstream")
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--send-examples", type=int, default=4000, help="schemathesis --max-examples for the send API")
    parser.add_argument("--admin-examples", type=int, default=300, help="schemathesis --max-examples for the admin API")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--min-requests", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for each st run")
    parser.add_argument("--serve", action="store_true", help="only start the gateway, to run st by hand (Ctrl-C ends)")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(_fuzz(args)))


if __name__ == "__main__":
    main()
