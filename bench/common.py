"""Pieces every benchmark needs: a Postfix smtp-sink, a delaying TCP proxy, the bench's Go programs, percentiles, tables.

The sink and the proxy run as separate processes so that their CPU time is
not charged to the contender measured in the benchmark's own event loop.

Run the proxy alone with ``python -m bench.common proxy --target-port P``: it
prints ``listening PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMTP_SINK_PATHS = ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the caller binds it right away)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port, or fail with a reason."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server process exited with status {process.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s") from None
            time.sleep(0.02)


def find_smtp_sink(install: bool = True) -> str:
    """Path of Postfix's smtp-sink; installs the Debian packages (hack/system-deps.sh) when missing."""
    for candidate in (shutil.which("smtp-sink"), *SMTP_SINK_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if install:
        print("smtp-sink not found: running hack/system-deps.sh", file=sys.stderr)
        subprocess.run(["bash", str(REPO / "hack" / "system-deps.sh")], check=True)
        return find_smtp_sink(install=False)
    raise RuntimeError("Postfix smtp-sink is not installed (Debian package 'postfix')")


def go_binary(source: Path) -> Path | None:
    """The Go program in ``source`` (a directory of this checkout: bench/tlsload, bench/tlssink) built and cached
    under ~/.cache/mailgate/bench/<its name>/ by its source's hash.

    ``None`` when it is not cached and ``go`` is not installed. Built with the
    standard library only: no module is downloaded (``GOPROXY=off``), and the
    machine's own toolchain is used (``GOTOOLCHAIN=local``). A build that
    fails is an error, not a reason to fall back.
    """
    digest = hashlib.sha256()
    for file in sorted(source.iterdir()):
        if file.suffix == ".go" or file.name == "go.mod":
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mailgate" / "bench"
    binary = cache / source.name / digest.hexdigest()[:16] / source.name
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOWORK": "off"}
    env.setdefault("GOCACHE", str(cache / "go-build"))
    partial = binary.with_name(f"{source.name}.{os.getpid()}")  # renamed when complete: a concurrent run sees all or nothing
    command = [go, "build", "-trimpath", "-o", str(partial), "."]
    built = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        raise RuntimeError(f"building {source} failed: {built.stderr.strip()}")
    partial.replace(binary)
    return binary


@contextlib.contextmanager
def smtp_sink(max_sessions: int = 1024) -> Iterator[int]:
    """Run smtp-sink on a free 127.0.0.1 port for the duration of the block; yields the port.

    smtp-sink accepts and discards every message as fast as C can: it measures
    the client, not the server.
    """
    port = free_port()
    command = [find_smtp_sink(), "-m", str(max_sessions)]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
    command += [f"{LOOPBACK}:{port}", "1024"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, process=process)
        yield port
    finally:
        _stop(process)


@contextlib.contextmanager
def delay_proxy(target_port: int, delay: float) -> Iterator[int]:
    """Run the delaying proxy (below) in its own process in front of 127.0.0.1:target_port; yields its port."""
    command = [sys.executable, "-m", "bench.common", "proxy", "--target-port", str(target_port), "--delay", str(delay)]
    with listening_process(command, "the delay proxy") as port:
        yield port


@contextlib.contextmanager
def listening_process(command: list[str], what: str, stop_timeout: float = 5.0) -> Iterator[int]:
    """Start a helper process that prints ``listening PORT`` first; yields PORT, then stops it (SIGTERM, then kill)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        words = process.stdout.readline().decode().split()
        if len(words) != 2 or words[0] != "listening":
            raise RuntimeError(f"{what} did not start: {process.stderr.read().decode() if process.stderr else ''}")
        yield int(words[1])
    finally:
        _stop(process, stop_timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout``: a benchmark never leaves a server behind."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a server whose pipes this module owns, and close them."""
    stop_process(process, timeout)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


# -- the delaying TCP proxy --------------------------------------------------


class _DelayedWriter:
    """Writes each chunk ``delay`` seconds after it arrived, in order, without throttling.

    Chunks queue with their due time and one timer drains everything due, so
    the delay is pure latency: many chunks can be in flight at once, as on a
    long network path.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._arm()

    def write(self, data: bytes) -> None:
        self.queue.append((self.loop.time() + self.delay, data))
        self._arm()

    def close_when_flushed(self) -> None:
        self.closing = True
        self._arm()

    def abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        if self.timer is not None or self.transport is None:
            return
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)
        elif self.closing:
            self.transport.close()

    def _flush(self) -> None:
        self.timer = None
        assert self.transport is not None
        now = self.loop.time() + 1e-4  # a timer may fire a hair early; do not spin on it
        while self.queue and self.queue[0][0] <= now:
            self.transport.write(self.queue.popleft()[1])
        self._arm()


class _Side(asyncio.Protocol):
    """One end of a proxied connection; what it reads goes, delayed, to the other end."""

    def __init__(self, outgoing: _DelayedWriter, incoming: _DelayedWriter) -> None:
        self.outgoing = outgoing  # writes to the peer of the other side
        self.incoming = incoming  # writes to this side's own transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.incoming.attach(transport)

    def data_received(self, data: bytes) -> None:
        self.outgoing.write(data)

    def eof_received(self) -> bool:
        self.outgoing.close_when_flushed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.outgoing.close_when_flushed()


async def run_proxy(target_port: int, delay: float, listen_port: int = 0) -> None:
    """Accept on 127.0.0.1 and relay to 127.0.0.1:target_port, delaying every chunk each way."""
    loop = asyncio.get_running_loop()

    def accept() -> _Side:
        to_server = _DelayedWriter(loop, delay)
        to_client = _DelayedWriter(loop, delay)
        client_side = _Side(outgoing=to_server, incoming=to_client)

        async def connect_upstream() -> None:
            try:
                await loop.create_connection(lambda: _Side(outgoing=to_client, incoming=to_server), LOOPBACK, target_port)
            except OSError:
                to_client.abort()

        task = loop.create_task(connect_upstream())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return client_side

    tasks: set[asyncio.Task[None]] = set()
    server = await loop.create_server(accept, LOOPBACK, listen_port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    async with server:
        await server.serve_forever()


# -- statistics and output --------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted values (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_ms(values: Sequence[float], pcts: Sequence[float] = (50, 99)) -> dict[str, float]:
    """{"p50": ms, "p99": ms} from latencies in seconds."""
    return {f"p{pct:g}": round(percentile(values, pct) * 1000, 2) for pct in pcts}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [line([str(h) for h in headers]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.common", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="run the delaying TCP proxy in front of a 127.0.0.1 port")
    proxy.add_argument("--target-port", type=int, required=True)
    proxy.add_argument("--delay", type=float, default=0.005, help="seconds added to every chunk, each way")
    proxy.add_argument("--listen-port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_proxy(args.target_port, args.delay, args.listen_port))


if __name__ == "__main__":
    main()
