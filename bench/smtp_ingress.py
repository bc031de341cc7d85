"""``python -m bench.smtp_ingress``: the gateway's SMTP ingress beside a Postfix relay, same load, same sink, one run.

Three contenders receive the same load from Postfix's ``smtp-source`` (16
sessions, each reusing its connection, 2 KB messages) and deliver to the same
Postfix ``smtp-sink`` on 127.0.0.1:

1. ``ingress``: a gateway process with the SMTP ingress, relaying through its
   pool (4 upstream connections); clients from 127.0.0.0/8 are trusted and
   routed to the one account;
2. ``postfix``: a private Postfix instance started here (own config directory,
   queue and data directory under a temporary directory; the system's Postfix
   configuration is never read or touched) with ``relayhost`` = the sink and
   its queue on disk, as a deployed relay has it;
3. ``direct``: smtp-source straight into smtp-sink (the ceiling).

Every contender is measured the same way, end to end at the sink: the time
from the first message sent until the sink has counted all of them (Postfix
acknowledges a message when it is queued, long before it is delivered).
Each contender gets an unmeasured warm-up first. Prints a table, then as the
LAST line a JSON object with ``ingress_msgs_per_s``, ``postfix_msgs_per_s``,
``direct_msgs_per_s``, ``ingress_vs_postfix`` and ``ingress_vs_direct``.
``--quick`` finishes in under 60 seconds.

Needs root for the Postfix instance (its daemons drop to the ``postfix`` user)
and the Debian packages of ``hack/system-deps.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.common import LOOPBACK, find_smtp_sink, format_table, free_port, listening_process, wait_listening

SESSIONS = 16
CONNECTIONS = 4
MESSAGE_BYTES = 2048
SENDER = "bench@shop.example"
RECIPIENT = "sink@example.org"
TARGET = 1.5  # ingress_vs_postfix the issue asks for


# -- the sink, counting what arrives -------------------------------------------------


class Sink:
    """smtp-sink with its running counter (``-c``) read from stdout: how many messages completed DATA."""

    def __init__(self) -> None:
        self.port = free_port()
        command = [find_smtp_sink(), "-c", "-m", "1024"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        command += [f"{LOOPBACK}:{self.port}", "1024"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_listening(self.port, process=self.process)

    def _read(self) -> None:
        stream = self.process.stdout
        assert isinstance(stream, io.BufferedReader)
        pending = b""
        for chunk in iter(lambda: stream.read1(4096), b""):
            pending += chunk
            found = re.findall(rb"mesg=(\d+)", pending)
            pending = pending[-64:]
            if found:
                with self._changed:
                    self.count = int(found[-1])
                    self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> float:
        """Block until the sink counted ``count`` messages; the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"the sink counted {self.count} of {count} messages after {timeout:.0f} s")
                self._changed.wait(remaining)
        return time.monotonic()

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def smtp_source_path() -> str:
    for candidate in (shutil.which("smtp-source"), "/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Postfix smtp-source is not installed (run hack/system-deps.sh)")


def run_source(port: int, count: int) -> None:
    """smtp-source: 16 sessions that keep their connection, ``count`` 2 KB messages in all."""
    command = [
        smtp_source_path(), "-d", "-s", str(SESSIONS), "-m", str(count), "-l", str(MESSAGE_BYTES),
        "-f", SENDER, "-t", RECIPIENT, "-M", "bench.test", f"{LOOPBACK}:{port}",
    ]
    result = subprocess.run(command, capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {result.stderr.decode(errors='replace').strip()}")


def measure(port: int, sink: Sink, count: int) -> float:
    """Messages per second, end to end at the sink."""
    start_count = sink.count
    started = time.monotonic()
    run_source(port, count)
    finished = sink.wait_for(start_count + count, timeout=300)
    return count / (finished - started)


# -- contender 1: the gateway's SMTP ingress, in its own process ------------------------------


async def serve_ingress(sink_port: int, profile: str | None) -> None:
    """The gateway process: one account to the sink (4 connections), SMTP ingress trusting 127.0.0.0/8."""
    from mailgate.gateway.app import Gateway, GatewayOptions, run_until_signalled
    from mailgate.gateway.auth import AllowAnyone
    from mailgate.ingress.attach import attach
    from mailgate.ingress.options import IngressOptions, parse_networks
    from mailgate.snapshot import AccountConfig, ConfigSnapshot

    gateway = Gateway(AllowAnyone(), GatewayOptions(host=LOOPBACK, port=0, admin_port=None, hostname="gw.bench.test"))
    port = free_port()
    ingress = attach(
        gateway,
        IngressOptions(
            port=port, host=LOOPBACK, hostname="gw.bench.test", trusted_networks=parse_networks("127.0.0.0/8"),
            default_account="bench/sink", max_connections=256,
        ),
    )
    account = AccountConfig.model_validate(
        {
            "namespace": "bench",
            "name": "sink",
            "spec": {
                "server": {"host": LOOPBACK, "port": sink_port, "tls": "none"},
                "pool": {"maxConnections": CONNECTIONS, "maxMessagesPerConnection": 100000, "acquireTimeoutSeconds": 60},
            },
        }
    )
    await gateway.apply_snapshot(ConfigSnapshot(revision=1, accounts=[account]))

    async def announce(app: object) -> None:
        print(f"listening {ingress.ports['smtp']}", flush=True)

    gateway.app.on_startup.append(announce)
    if profile is None:
        await run_until_signalled(gateway)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await run_until_signalled(gateway)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


@contextlib.contextmanager
def ingress_process(sink_port: int, profile: str | None = None) -> Iterator[int]:
    command = [sys.executable, "-m", "bench.smtp_ingress", "serve", "--sink-port", str(sink_port)]
    if profile:
        command += ["--profile", profile]
    # SIGTERM on the way out: the gateway drains and exits.
    with listening_process(command, "the gateway", stop_timeout=30) as port:
        yield port


# -- contender 2: a private Postfix relay -------------------------------------------------------

_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
showq unix n - n - - showq
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [{host}]:{sink_port}
smtp_dns_support_level = disabled
biff = no
"""


def postfix_path() -> str:
    for candidate in (shutil.which("postfix"), "/usr/sbin/postfix"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Postfix is not installed (run hack/system-deps.sh)")


@contextlib.contextmanager
def postfix_relay(sink_port: int) -> Iterator[int]:
    """A Postfix instance of its own under a temporary directory, relaying everything to the sink."""
    if os.geteuid() != 0:
        raise RuntimeError("the Postfix contender needs root (its daemons switch to the postfix user)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-postfix-") as temp:
        root = Path(temp)
        root.chmod(0o755)  # the daemons run as the postfix user and must reach their directories
        conf = root / "conf"
        for folder in (conf, root / "queue", root / "data"):
            folder.mkdir()
        shutil.chown(root / "data", user="postfix")
        (conf / "main.cf").write_text(_MAIN_CF.format(root=root, host=LOOPBACK, sink_port=sink_port))
        (conf / "master.cf").write_text(_MASTER_CF.format(listen=f"{LOOPBACK}:{port}"))
        postfix = [postfix_path(), "-c", str(conf)]
        started = subprocess.run([*postfix, "start"], capture_output=True, timeout=60)
        try:
            if started.returncode != 0:
                log = (root / "maillog").read_text(errors="replace") if (root / "maillog").exists() else ""
                raise RuntimeError(f"Postfix did not start: {log[-2000:]}")
            wait_listening(port, timeout=30)
            yield port
        finally:
            subprocess.run([*postfix, "stop"], capture_output=True, timeout=60)


# -- the run ---------------------------------------------------------------------------


def run(counts: dict[str, int], rounds: int, warmup: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in counts}
    sink = Sink()
    try:
        with ingress_process(sink.port) as ingress_port, postfix_relay(sink.port) as postfix_port:
            ports = {"ingress": ingress_port, "postfix": postfix_port, "direct": sink.port}
            for port in ports.values():
                measure(port, sink, warmup)
            for _ in range(rounds):
                for name, port in ports.items():
                    results[name].append(measure(port, sink, counts[name]))
    finally:
        sink.close()
    return results


def report(results: dict[str, list[float]]) -> dict[str, float]:
    best = {name: max(values) for name, values in results.items()}
    rows = [
        [name, best[name], min(values), len(values), round(best[name] / best["direct"], 3)]
        for name, values in results.items()
    ]
    print(format_table(["contender", "msgs/s (best)", "msgs/s (worst)", "rounds", "vs direct"], rows))
    summary = {
        "ingress_msgs_per_s": round(best["ingress"], 1),
        "postfix_msgs_per_s": round(best["postfix"], 1),
        "direct_msgs_per_s": round(best["direct"], 1),
        "ingress_vs_postfix": round(best["ingress"] / best["postfix"], 2),
        "ingress_vs_direct": round(best["ingress"] / best["direct"], 3),
        "sessions": SESSIONS,
        "upstream_connections": CONNECTIONS,
        "message_bytes": MESSAGE_BYTES,
        "target_ingress_vs_postfix": TARGET,
    }
    print(json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_ingress", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--quick", action="store_true", help="two short rounds (under 60 s)")
    serve = sub.add_parser("serve", help="run only the gateway contender (prints `listening PORT`)")
    serve.add_argument("--sink-port", type=int, required=True)
    serve.add_argument("--profile", metavar="FILE", help="write cProfile stats of the gateway process here on exit")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve_ingress(args.sink_port, args.profile))
        return
    if args.quick:
        counts, rounds, warmup = {"ingress": 3000, "postfix": 2000, "direct": 10000}, 2, 300
    else:
        counts, rounds, warmup = {"ingress": 12000, "postfix": 6000, "direct": 40000}, 3, 1000
    report(run(counts, rounds, warmup))


if __name__ == "__main__":
    main()
