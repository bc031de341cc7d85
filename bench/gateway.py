"""``python -m bench.gateway``: the HTTP gateway beside raw SMTP, same sink, same message, same run.

Both contenders send a 2 KB text message to one Postfix ``smtp-sink`` on
127.0.0.1 with 4 upstream connections and 64 requests in flight:

- ``gateway``: ``mailgate gateway`` in its own process, configured through
  its admin API; the load is JSON POSTs from ``wrk`` (64 connections, one
  thread, a Lua script for the body): a C load generator in a separate
  process, so the Python gateway is what is measured;
- ``raw``: a separate Python process with 4 long-lived aiosmtplib
  connections handed out through a queue to 64 tasks that ``sendmail`` a
  prebuilt message in a loop: the ceiling for relaying from Python.

Rounds alternate the contenders so that background noise hits both alike;
each round runs a short unmeasured warm-up first (sessions open, caches
fill). Prints a table, then as the LAST line a JSON object with
``gateway_msgs_per_s``, ``raw_msgs_per_s``, ``gateway_vs_raw`` and ``p99_ms``
(the gateway's). ``--quick`` finishes in well under 45 seconds.

Run ``python -m bench.gateway raw --port P --seconds S`` alone to drive a
sink with the raw contender; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.common import LOOPBACK, REPO, format_table, free_port, latency_ms, smtp_sink, stop_process, wait_listening
from mailgate.gateway.compose import SendRequest, compose_message

CONNECTIONS = 4
CONCURRENCY = 64
MESSAGE_BYTES = 2048
SENDER = "bench@mailgate.test"
RECIPIENT = "sink@mailgate.test"
EHLO = "bench.mailgate.test"
ADMIN_TOKEN = "bench-admin-token"
TARGET = 0.6


def request_body(size: int = MESSAGE_BYTES) -> dict[str, Any]:
    """The JSON request whose built message is ``size`` bytes (give or take the Message-ID's length)."""
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body: dict[str, Any] = {"from": f"Bench <{SENDER}>", "to": [RECIPIENT], "subject": "mailgate gateway benchmark"}
    body["text"] = ""
    overhead = len(compose_message(SendRequest.model_validate({**body, "text": "x"}), hostname=EHLO).data) - 3
    text = (line * (size // len(line) + 1))[: size - overhead - 2]
    body["text"] = text.rstrip("\n") + "\n"
    return body


def raw_message() -> bytes:
    """The same message, built once: the raw contender sends these bytes every time."""
    return compose_message(SendRequest.model_validate(request_body()), hostname=EHLO).data


# -- the raw contender (its own process) ------------------------------------------------


async def raw_load(port: int, seconds: float, warmup: float) -> dict[str, Any]:
    message = raw_message()
    connections: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        smtp = aiosmtplib.SMTP(hostname=LOOPBACK, port=port, local_hostname=EHLO, start_tls=False, use_tls=False)
        await smtp.connect()
        connections.put_nowait(smtp)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def sender() -> None:
        while (now := loop.time()) < stop_at:
            smtp = await connections.get()
            try:
                await smtp.sendmail(SENDER, [RECIPIENT], message)
            finally:
                connections.put_nowait(smtp)
            # Let the task woken by the put take the session: otherwise this task takes it straight back,
            # 4 tasks do all the work and the latencies describe only them.
            await asyncio.sleep(0)
            if now >= measure_from:
                latencies.append(loop.time() - now)

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    while not connections.empty():
        await connections.get_nowait().quit()
    return {"count": len(latencies), "seconds": seconds, **latency_ms(latencies)}


def run_raw(port: int, seconds: float, warmup: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.gateway", "raw", "--port", str(port), "--seconds", str(seconds)]
    command += ["--warmup", str(warmup)]
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, timeout=seconds + warmup + 60)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["msgs_per_s"] = result["count"] / seconds
    return result


# -- the gateway contender ------------------------------------------------------------------


@contextmanager
def gateway_process(sink_port: int) -> Iterator[str]:
    """``mailgate gateway`` on free loopback ports, configured for the sink; yields its base URL."""
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "mailgate", "gateway", "--host", LOOPBACK, "--port", str(port),
        "--admin-port", str(admin_port), "--insecure-no-auth", "--log-level", "warning",
        "--hostname", EHLO, "--ehlo-hostname", EHLO, "--shutdown-grace", "5",
    ]  # fmt: skip
    env = {**os.environ, "MAILGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(admin_port, timeout=20, process=process)
        snapshot = {
            "revision": 1,
            "accounts": [
                {
                    "namespace": "bench",
                    "name": "sink",
                    "spec": {
                        "server": {"host": LOOPBACK, "port": sink_port, "tls": "none"},
                        "pool": {"maxConnections": CONNECTIONS, "maxMessagesPerConnection": 100000, "ttlSeconds": 3600},
                    },
                }
            ],
        }
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{admin_port}/v1/config",
            data=json.dumps(snapshot).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop_process(process)
        if process.stderr is not None:
            errors = process.stderr.read().decode().strip()
            process.stderr.close()
            if errors:
                print(f"gateway log (warnings and errors):\n{errors}", file=sys.stderr)


def wrk_script(directory: Path) -> Path:
    script = directory / "post.lua"
    body = json.dumps(request_body())
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {lua_string(body)}\n"
    )
    return script


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str, seconds: float) -> dict[str, Any]:
    """Requests, errors and latency percentiles (ms) from ``wrk --latency`` output."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    pcts = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE):
        pcts[f"p{pct}"] = round(float(value) * _UNITS[unit], 2)
    return {
        "count": requests,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0),
        "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
        "msgs_per_s": requests / seconds,  # wrk's own Requests/sec divides by its elapsed time; same window
        **pcts,
    }


def run_wrk(url: str, script: Path, seconds: float) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        subprocess.run(["bash", str(REPO / "hack" / "system-deps.sh")], check=True)
        wrk = shutil.which("wrk")
    assert wrk is not None, "wrk is not installed (Debian package 'wrk')"
    target = f"{url}/v1/accounts/bench/sink/messages"
    command = [wrk, "-t1", f"-c{CONCURRENCY}", f"-d{seconds:g}s", "--latency", "--timeout", "30s", "-s", str(script), target]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(out.stdout, seconds)


# -- the run ----------------------------------------------------------------------------------


def run(rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    gateway_runs: list[dict[str, Any]] = []
    raw_runs: list[dict[str, Any]] = []
    with smtp_sink() as sink_port, tempfile.TemporaryDirectory() as tmp:
        script = wrk_script(Path(tmp))
        with gateway_process(sink_port) as url:
            for _ in range(rounds):
                run_wrk(url, script, warmup)  # warm-up: sessions open, caches fill
                gateway_runs.append(run_wrk(url, script, seconds))
                raw_runs.append(run_raw(sink_port, seconds, warmup))
    size = len(raw_message())
    rows = []
    for name, runs in (("gateway (HTTP JSON, wrk)", gateway_runs), ("raw (aiosmtplib, 4 sessions)", raw_runs)):
        for i, r in enumerate(runs, 1):
            rows.append([f"{name} round {i}", round(r["msgs_per_s"], 1), r["p50"], r["p99"], r.get("errors", 0)])
    print(f"message {size} bytes, {CONNECTIONS} upstream connections, {CONCURRENCY} concurrent requests, "
          f"{rounds} round(s) of {seconds:g} s, {os.cpu_count()} CPUs")  # fmt: skip
    print(format_table(["contender", "msgs/s", "p50 ms", "p99 ms", "errors"], rows))
    gateway_rate = statistics.median(r["msgs_per_s"] for r in gateway_runs)
    raw_rate = statistics.median(r["msgs_per_s"] for r in raw_runs)
    summary = {
        "gateway_msgs_per_s": round(gateway_rate, 1),
        "raw_msgs_per_s": round(raw_rate, 1),
        "gateway_vs_raw": round(gateway_rate / raw_rate, 3),
        "p50_ms": round(statistics.median(r["p50"] for r in gateway_runs), 2),
        "p99_ms": round(statistics.median(r["p99"] for r in gateway_runs), 2),
        "raw_p99_ms": round(statistics.median(r["p99"] for r in raw_runs), 2),
        "gateway_errors": sum(r["errors"] for r in gateway_runs),
        "message_bytes": size,
        "target_gateway_vs_raw": TARGET,
    }
    print(json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (under 45 s)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    sub = parser.add_subparsers(dest="command")
    raw = sub.add_parser("raw", help="run only the raw contender against a sink (prints one JSON line)")
    raw.add_argument("--port", type=int, required=True)
    raw.add_argument("--seconds", type=float, default=5.0)
    raw.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "raw":
        print(json.dumps(asyncio.run(raw_load(args.port, args.seconds, args.warmup))))
        return
    rounds = args.rounds or (2 if args.quick else 3)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    started = time.monotonic()
    summary = run(rounds, seconds, warmup=1.0)
    if summary["gateway_errors"]:
        print(f"warning: {summary['gateway_errors']} gateway requests failed", file=sys.stderr)
    print(f"took {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
