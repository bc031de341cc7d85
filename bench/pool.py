"""``python -m bench.pool``: mailgate's pool beside the alternatives, same sink, same run.

Four contenders send the same prebuilt 2 KB message to one Postfix
``smtp-sink`` on 127.0.0.1, with 4 connections per account:

- ``mailgate``: ``mailgate.pool.SMTPPool.send``;
- ``genro``: genro-mail-proxy 0.7.0's ``SMTPPool`` (the reference), loaded by
  file path from the installed wheel (the ``bench`` extra), driven as its
  docstring shows: ``async with pool.connection(...)`` then ``sendmail``;
- ``raw``: 4 long-lived aiosmtplib clients per account handed out through an
  ``asyncio.Queue``, no pool logic at all: the ceiling;
- ``connect_per_message``: ``aiosmtplib.send`` opening a session per message,
  which is what applications do without a gateway.

Two scenarios: ``lan`` (1 account, 16 senders, sink on loopback, CPU-bound)
and ``wan`` (8 accounts, 64 senders, the sink behind a proxy that delays every
chunk by 5 ms each way, i.e. a 10 ms round trip). Each contender first sends
one unmeasured message per connection (pools fill up), then every sender loops
until the measuring window closes. Rounds run the contenders in an ABBA
order (mailgate and raw always side by side, swapping places) so that
background noise hits all of them alike; msgs/s is all messages over all
measured seconds. ``cpu us/msg`` is this process's CPU time per message, the
figure least disturbed by other load on the machine.

Prints a table, then as the last line one JSON object with the throughputs,
latencies and the ratios ``<scenario>_mailgate_vs_<contender>``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import aiosmtplib

from bench.common import LOOPBACK, delay_proxy, format_table, latency_ms, smtp_sink
from mailgate.pool import AccountSettings, PoolLimits, SMTPPool, TLSMode

SENDER = "bench@mailgate.test"
RECIPIENT = "sink@mailgate.test"
# Every contender that lets us set it uses a fixed EHLO name: the default is a
# getfqdn() per connection, which would charge DNS to connect-per-message.
LOCAL_HOSTNAME = "bench.mailgate.test"
CONNECTIONS_PER_ACCOUNT = 4
SEND_TIMEOUT = 60.0
GENRO_REQUIREMENT = "genro-mail-proxy==0.7.0"
GENRO_POOL_FILE = "core/mail_proxy/smtp/pool.py"
TARGETS = {"lan_mailgate_vs_raw": 0.9, "wan_mailgate_vs_raw": 0.9, "wan_mailgate_vs_genro": 10.0}


def build_message(size: int = 2048) -> bytes:
    """An RFC 5322 message of exactly ``size`` bytes with short CRLF lines."""
    head = (
        f"From: Bench <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: mailgate pool benchmark\r\n"
        "Message-ID: <bench@mailgate.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[: size - len(head) - 2] + b"\r\n"
    message = head + body
    assert len(message) == size
    return message


MESSAGE = build_message()


@dataclass(frozen=True)
class Scenario:
    name: str
    accounts: int
    senders: int
    delay: float  # seconds added to every chunk, each way; 0 = straight to the sink


SCENARIOS = {
    "lan": Scenario("lan", accounts=1, senders=16, delay=0.0),
    "wan": Scenario("wan", accounts=8, senders=64, delay=0.005),
}


class Contender(Protocol):
    name: str

    async def start(self, host: str, port: int, accounts: int) -> None: ...

    async def send(self, account: int) -> None: ...

    async def stop(self) -> None: ...


class MailgateContender:
    name = "mailgate"

    async def start(self, host: str, port: int, accounts: int) -> None:
        self.pool = SMTPPool()
        self.names = [f"account-{i}" for i in range(accounts)]
        limits = PoolLimits(max_connections=CONNECTIONS_PER_ACCOUNT, acquire_timeout=SEND_TIMEOUT)
        for name in self.names:
            settings = AccountSettings(host=host, port=port, tls=TLSMode.NONE, local_hostname=LOCAL_HOSTNAME, limits=limits)
            self.pool.configure(name, settings)

    async def send(self, account: int) -> None:
        await self.pool.send(self.names[account], SENDER, [RECIPIENT], MESSAGE)

    async def stop(self) -> None:
        await self.pool.close_all(grace=5)


class GenroContender:
    """genro-mail-proxy's pool keys accounts by host:port:user; a distinct user (no password) per account."""

    name = "genro"

    async def start(self, host: str, port: int, accounts: int) -> None:
        module = load_genro_pool()
        self.pool = module.SMTPPool(ttl=300, max_per_account=CONNECTIONS_PER_ACCOUNT)
        self.host, self.port = host, port

    async def send(self, account: int) -> None:
        async with self.pool.connection(
            self.host, self.port, f"account-{account}", None, use_tls=False, timeout=SEND_TIMEOUT
        ) as smtp:
            await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)

    async def stop(self) -> None:
        await self.pool.close_all()


class RawContender:
    """The ceiling: connected clients in a queue, nothing else."""

    name = "raw"

    async def start(self, host: str, port: int, accounts: int) -> None:
        self.queues: list[asyncio.Queue[aiosmtplib.SMTP]] = []
        self.clients: list[aiosmtplib.SMTP] = []
        for _ in range(accounts):
            queue: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
            for _ in range(CONNECTIONS_PER_ACCOUNT):
                client = aiosmtplib.SMTP(
                    hostname=host, port=port, start_tls=False, local_hostname=LOCAL_HOSTNAME, timeout=SEND_TIMEOUT
                )
                self.clients.append(client)
                queue.put_nowait(client)
            self.queues.append(queue)
        await asyncio.gather(*(client.connect() for client in self.clients))

    async def send(self, account: int) -> None:
        queue = self.queues[account]
        client = await queue.get()
        try:
            await client.sendmail(SENDER, [RECIPIENT], MESSAGE)
        finally:
            queue.put_nowait(client)

    async def stop(self) -> None:
        await asyncio.gather(*(client.quit() for client in self.clients), return_exceptions=True)
        for client in self.clients:
            client.close()


class ConnectPerMessageContender:
    name = "connect_per_message"

    async def start(self, host: str, port: int, accounts: int) -> None:
        self.host, self.port = host, port

    async def send(self, account: int) -> None:
        await aiosmtplib.send(
            MESSAGE,
            sender=SENDER,
            recipients=[RECIPIENT],
            hostname=self.host,
            port=self.port,
            start_tls=False,
            local_hostname=LOCAL_HOSTNAME,
            timeout=SEND_TIMEOUT,
        )

    async def stop(self) -> None:
        return None


CONTENDERS: dict[str, Callable[[], Contender]] = {
    "mailgate": MailgateContender,
    "genro": GenroContender,
    "raw": RawContender,
    "connect_per_message": ConnectPerMessageContender,
}


# Neighbours in this order are measured back to back, in both orders over two rounds.
RUN_ORDER = ["genro", "mailgate", "raw", "connect_per_message"]


def load_genro_pool() -> ModuleType:
    """The reference pool module, by file path: importing its package would pull its whole service."""
    try:
        distribution = importlib.metadata.distribution("genro-mail-proxy")
    except importlib.metadata.PackageNotFoundError:
        print(f"installing the bench extra: {GENRO_REQUIREMENT}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", GENRO_REQUIREMENT], check=True)
        distribution = importlib.metadata.distribution("genro-mail-proxy")
    if distribution.version != "0.7.0":
        raise RuntimeError(f"the reference is genro-mail-proxy 0.7.0, found {distribution.version}")
    path = distribution.locate_file(GENRO_POOL_FILE)
    spec = importlib.util.spec_from_file_location("genro_mail_proxy_smtp_pool", str(path))
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Measurement:
    """One contender in one scenario over all rounds."""

    messages: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process only: the sink and the proxy run in their own
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6 if self.messages else 0.0


async def measure(contender: Contender, scenario: Scenario, port: int, duration: float, into: Measurement) -> None:
    """Warm up with one message per connection, then let every sender loop until the window closes."""
    await contender.start(LOOPBACK, port, scenario.accounts)
    try:
        warm_up = min(scenario.senders, scenario.accounts * CONNECTIONS_PER_ACCOUNT)
        await asyncio.gather(*(contender.send(i % scenario.accounts) for i in range(warm_up)))
        latencies: list[float] = []
        errors: list[BaseException] = []
        cpu_started = time.process_time()
        started = time.perf_counter()
        closes = started + duration

        async def sender(index: int) -> None:
            account = index % scenario.accounts
            while time.perf_counter() < closes:
                begin = time.perf_counter()
                try:
                    await contender.send(account)
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    errors.append(exc)
                    continue
                latencies.append(time.perf_counter() - begin)

        await asyncio.gather(*(sender(i) for i in range(scenario.senders)))
        into.seconds += time.perf_counter() - started
        into.cpu_seconds += time.process_time() - cpu_started
        into.messages += len(latencies)
        into.latencies.extend(latencies)
        into.errors += len(errors)
        if errors and into.first_error is None:
            into.first_error = f"{type(errors[0]).__name__}: {errors[0]}"
    finally:
        await contender.stop()


def run(scenarios: Sequence[Scenario], contenders: Sequence[str], duration: float, rounds: int) -> dict[str, Measurement]:
    """Every (scenario, contender) pair, ``rounds`` times, the contender order rotating each round."""
    results = {f"{s.name}_{c}": Measurement() for s in scenarios for c in contenders}
    with smtp_sink() as sink_port:
        for scenario in scenarios:
            if scenario.delay:
                with delay_proxy(sink_port, scenario.delay) as proxy_port:
                    _rounds(scenario, proxy_port, contenders, duration, rounds, results)
            else:
                _rounds(scenario, sink_port, contenders, duration, rounds, results)
    return results


def _rounds(
    scenario: Scenario, port: int, contenders: Sequence[str], duration: float, rounds: int, results: dict[str, Measurement]
) -> None:
    # An unrecorded warm-up run: the first run after the sink and proxy start is slower for whoever goes first.
    asyncio.run(measure(RawContender(), scenario, port, min(duration, 0.5), Measurement()))
    order = sorted(contenders, key=RUN_ORDER.index)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            # A fresh event loop per run: nothing left over from one contender slows the next.
            asyncio.run(measure(CONTENDERS[name](), scenario, port, duration, results[f"{scenario.name}_{name}"]))


def summarize(results: dict[str, Measurement], scenarios: Sequence[Scenario], contenders: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        for name in contenders:
            result = results[f"{scenario.name}_{name}"]
            key = f"{scenario.name}_{name}"
            summary[f"{key}_msgs_per_s"] = round(result.rate, 1)
            for label, value in latency_ms(result.latencies).items():
                summary[f"{key}_{label}_ms"] = value
            summary[f"{key}_cpu_us_per_msg"] = round(result.cpu_us_per_message, 1)
            summary[f"{key}_errors"] = result.errors
        if "mailgate" in contenders:
            ours = results[f"{scenario.name}_mailgate"].rate
            for other in contenders:
                theirs = results[f"{scenario.name}_{other}"].rate
                if other != "mailgate":
                    summary[f"{scenario.name}_mailgate_vs_{other}"] = round(ours / theirs, 3) if theirs else None
    checked = {key: summary[key] for key in TARGETS if key in summary}
    summary["targets"] = TARGETS
    summary["targets_met"] = all(value is not None and value >= TARGETS[key] for key, value in checked.items())
    return summary


def table(results: dict[str, Measurement], scenarios: Sequence[Scenario], contenders: Sequence[str]) -> str:
    rows: list[list[object]] = []
    for scenario in scenarios:
        raw = results.get(f"{scenario.name}_raw")
        for name in contenders:
            result = results[f"{scenario.name}_{name}"]
            latency = latency_ms(result.latencies)
            versus_raw = result.rate / raw.rate if raw and raw.rate else float("nan")
            rows.append(
                [
                    scenario.name,
                    name,
                    result.rate,
                    latency["p50"],
                    latency["p99"],
                    versus_raw,
                    result.cpu_us_per_message,
                    result.messages,
                    result.errors,
                ]
            )
    headers = ["scenario", "contender", "msgs/s", "p50 ms", "p99 ms", "vs raw", "cpu us/msg", "messages", "errors"]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, three rounds (under 45 s in all)")
    parser.add_argument("--duration", type=float, help="seconds measured per contender and round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per scenario")
    parser.add_argument("--scenarios", default="lan,wan", help="comma-separated subset of: " + ",".join(SCENARIOS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    args = parser.parse_args(argv)
    duration = args.duration or (0.8 if args.quick else 3.0)
    rounds = args.rounds or (3 if args.quick else 5)
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",")]
    contenders = args.contenders.split(",")
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    results = run(scenarios, contenders, duration, rounds)
    for key, result in results.items():
        if result.errors:
            print(f"{key}: {result.errors} failed sends, first: {result.first_error}", file=sys.stderr)
    print(f"mailgate pool benchmark: {rounds} round(s) of {duration:g} s per contender, 2 KB message, "
          f"{CONNECTIONS_PER_ACCOUNT} connections per account, Postfix smtp-sink")
    print(table(results, scenarios, contenders))
    summary = summarize(results, scenarios, contenders)
    summary.update(duration_s=duration, rounds=rounds, wall_s=round(time.monotonic() - started, 1))
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
