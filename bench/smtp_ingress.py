"""``python -m bench.smtp_ingress``: the gateway's SMTP ingress beside a Postfix relay, same load, same sink, one run.

Three ways of sending, each measured against both relays under the same load
(16 concurrent sessions, 2 KB messages), all delivering to the same Postfix
``smtp-sink`` on 127.0.0.1:

- ``kept``: ``smtp-source -d``, sessions that keep their connection and send
  message after message (a batch mailer);
- ``per-connection``: ``smtp-source`` without ``-d``: connect, HELO, one
  message, QUIT, as Grafana, Keycloak, GitLab, Alertmanager and msmtp do,
  from the trusted network without TLS;
- ``tls-auth``: the same with STARTTLS and AUTH PLAIN on every connection
  (what those apps really do): EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT,
  DATA, QUIT, one message per connection, the certificate verified, and TLS
  sessions resumed when the server hands out tickets (``--full-handshakes``
  turns resumption off, as in a client that keeps no session cache).
  smtp-source speaks no TLS, so this load comes from ``bench/tlsload``, a
  small Go program (standard library only) with the 16 sessions as
  goroutines of one process sharing one session cache, built at the start of
  a run and cached under ``~/.cache/mailgate/bench/tlsload/`` by its source's
  hash. It exists because the load competes with the relays for the
  machine's CPU: the Python clients it replaced spent more CPU per message
  than the ingress itself (about 2 ms against 0.5 ms for the Go program) and
  held the measured ratio down. It runs once per measurement, so each
  measurement starts with an empty session cache: up to 16 full handshakes
  before the sessions resume. Where ``go`` is missing, 16 client processes
  of this module (``_send_tls``) send instead, and the JSON says so
  (``tls_load_generator``: ``"python"`` instead of ``"go"``); their ratio
  understates the ingress.

The contenders:

1. ``ingress``: a gateway process with the SMTP ingress on its default event
   loop (uvloop when installed, as ``mailgate gateway`` runs), relaying
   through its pool (4 upstream connections); clients from 127.0.0.0/8 are
   trusted and routed to the one account, which also has an SMTP login
   (scrypt hash at the production cost) for the ``tls-auth`` clients;
2. ``postfix``: a private Postfix instance started here (own config
   directory, queue and data directory under a temporary directory; the
   system's Postfix configuration is never read or touched) with ``relayhost``
   = the sink and its queue on disk, as a deployed relay has it; STARTTLS with
   the same certificate, session tickets (tlsmgr), and AUTH through Cyrus SASL
   with a sasldb of its own. Without ``saslpasswd2`` (Debian ``sasl2-bin``)
   Postfix is measured with STARTTLS and no AUTH, and the JSON says so in
   ``postfix_tls_auth``;
3. ``direct``: smtp-source straight into smtp-sink (the ceiling, ``kept`` only);
4. references for ``per-connection`` and ``tls-auth``, relaying nothing (see
   ``serve_bare``): ``aiosmtpd``, the library the ingress builds on, stock,
   with a handler that answers 250 (is aiosmtpd the ceiling?), and
   ``asyncio``, a minimal hand-written SMTP responder on the same event loop
   (the least one Python process can spend per connection). Their rates are
   taken at the client.

Every contender is measured the same way, end to end at the sink: the time
from the first message sent until the sink has counted all of them (Postfix
acknowledges a message when it is queued, long before it is delivered).
Each contender gets an unmeasured warm-up per pattern first. The machine may
be shared: only ratios from the same run mean anything; the table shows how
busy the whole machine was during each measurement (near 100 %: CPU-bound as
a whole, and CPU per message decides). Progress goes to stderr; stdout gets a
table, then as the LAST line a JSON object with ``ingress_vs_postfix`` (kept
connections), ``per_connection_vs_postfix`` and
``tls_per_connection_vs_postfix``, the rates behind them, the references'
rates, CPU per message (the relays' and the load generator's), and
``ingress_vs_direct``. ``--quick`` finishes in about a minute.

Needs root for the Postfix instance (its daemons drop to the ``postfix`` user)
and the Debian packages of ``hack/system-deps.sh`` (plus ``sasl2-bin`` for
Postfix's AUTH), and Go for the ``tls-auth`` load (see above).

``python -m bench.smtp_ingress serve --sink-port P [--profile FILE]`` runs the
gateway contender alone (it prints ``listening PORT``; with ``--tls-dir`` it
also offers STARTTLS and the bench login), for profiling it under any load;
``python -m bench.smtp_ingress profile PATTERN [--sampler cprofile|py-spy|perf]``
does that with a sink and one pattern's load, and prints the top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import multiprocessing
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bench.common import (
    LOOPBACK,
    REPO,
    find_smtp_sink,
    format_table,
    free_port,
    go_binary,
    stop_process,
    wait_listening,
)

if TYPE_CHECKING:  # aiosmtpd is imported by the reference server only, not by the Python client processes
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

SESSIONS = 16
CONNECTIONS = 4
MESSAGE_BYTES = 2048
SENDER = "bench@shop.example"
RECIPIENT = "sink@example.org"
LOGIN = "bench"
PASSWORD = "bench-login-password-0123456789"  # a bench secret only: both relays get it, nothing else
SERVER_NAME = "relay.bench.test"  # in the certificate; the TLS clients verify it
TARGETS = {"kept": 3.0, "per-connection": 2.5, "tls-auth": 2.0}  # ingress vs Postfix, from issue 17
PATTERNS = {  # pattern: its contenders
    "kept": ("ingress", "postfix", "direct"),
    "per-connection": ("ingress", "postfix", "aiosmtpd", "asyncio"),
    "tls-auth": ("ingress", "postfix", "aiosmtpd", "asyncio"),
}
REFERENCES = ("aiosmtpd", "asyncio")  # servers that answer 250 and relay nothing: measured at the client


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


# -- load: smtp-source (kept, per-connection) --------------------------------------------


def smtp_source_path() -> str:
    for candidate in (shutil.which("smtp-source"), "/usr/sbin/smtp-source", "/usr/lib/postfix/sbin/smtp-source"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Postfix smtp-source is not installed (run hack/system-deps.sh)")


def run_load(command: list[str], what: str, *, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[str, float]:
    """A load generator process, to its end: its stdout and the CPU seconds it spent (the load has its share of the
    machine too). A failure is raised with the generator's stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, input=stdin, env=env, capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result.stdout.decode(errors="replace"), after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_source(port: int, count: int, *, keep: bool) -> float:
    """smtp-source: 16 sessions, ``count`` 2 KB messages in all; ``keep``: one connection per session (``-d``).

    Returns the CPU seconds smtp-source spent.
    """
    command = [smtp_source_path(), *(["-d"] if keep else []), "-s", str(SESSIONS), "-m", str(count)]
    command += ["-l", str(MESSAGE_BYTES), "-f", SENDER, "-t", RECIPIENT, "-M", "bench.test", f"{LOOPBACK}:{port}"]
    return run_load(command, "smtp-source")[1]


# -- load: STARTTLS + AUTH per connection: bench/tlsload (Go), else Python client processes ---------------

_MESSAGE = f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench\r\n\r\n".encode() + b"".join(
    b"x" * 76 + b"\r\n" for _ in range(MESSAGE_BYTES // 78)
)
_AUTH_PLAIN = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()


@dataclass(frozen=True)
class TLSClient:
    """What the load generator needs to reach one contender: its port, the CA to verify it, resumption, AUTH."""

    port: int
    ca_file: str
    resume: bool
    auth: bool  # False only for a Postfix without SASL (see ``postfix_sasl_note``): 127.0.0.0/8 may relay anyway


TLSLOAD_SOURCE = REPO / "bench" / "tlsload"


# The fallback without Go: client processes of this module, one session each.
_contexts: dict[str, ssl.SSLContext] = {}  # per client process: one context per CA, as a real client keeps it
_sessions: dict[int, ssl.SSLSession] = {}  # per client process and port: the last session, for resumption


def _expect(reader: io.BufferedReader, code: bytes) -> None:
    """Read one (multi-line) reply; fail unless it has ``code``."""
    while True:
        line = reader.readline()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code.decode()}, got {line[:200]!r}")
        if line[3:4] != b"-":
            return


def _command(sock: socket.socket | ssl.SSLSocket, reader: io.BufferedReader, line: bytes, code: bytes) -> None:
    sock.sendall(line)
    _expect(reader, code)


def _send_tls(client: TLSClient, count: int) -> tuple[int, float]:
    """``count`` messages, each on its own connection with STARTTLS and AUTH PLAIN; how many sessions resumed,
    and the CPU seconds this client spent."""
    cpu = time.process_time()
    context = _contexts.get(client.ca_file)
    if context is None:
        context = _contexts[client.ca_file] = ssl.create_default_context(cafile=client.ca_file)
    resumed = 0
    for _ in range(count):
        with socket.create_connection((LOOPBACK, client.port), timeout=30) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with raw.makefile("rb") as plain:
                _expect(plain, b"220")
                _command(raw, plain, b"EHLO client.bench.test\r\n", b"250")
                _command(raw, plain, b"STARTTLS\r\n", b"220")
            session = _sessions.get(client.port) if client.resume else None
            with context.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as tls, tls.makefile("rb") as reader:
                resumed += bool(tls.session_reused)
                _command(tls, reader, b"EHLO client.bench.test\r\n", b"250")
                if client.auth:
                    _command(tls, reader, f"AUTH PLAIN {_AUTH_PLAIN}\r\n".encode(), b"235")
                _command(tls, reader, f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250")
                _command(tls, reader, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250")
                _command(tls, reader, b"DATA\r\n", b"354")
                _command(tls, reader, _MESSAGE + b".\r\n", b"250")
                _command(tls, reader, b"QUIT\r\n", b"221")
                if client.resume:  # TLS 1.3 tickets arrive after the handshake: take the session last
                    latest = tls.session  # each read of the property costs a copy of the session in OpenSSL
                    if latest is not None and latest.has_ticket:
                        _sessions[client.port] = latest
    return resumed, time.process_time() - cpu


class TLSLoad:
    """The ``tls-auth`` load, 16 concurrent sessions: ``bench/tlsload``, one Go process per measurement, or
    without Go, 16 client processes of this module started once (spawned, so no thread of this process is copied
    into them), which spend more CPU per message than the relays they load and so cap the ratio measured."""

    def __init__(self) -> None:
        self.binary = go_binary(TLSLOAD_SOURCE)
        self.generator = "python" if self.binary is None else "go"
        self.pool: Pool | None = None
        if self.binary is None:
            print("go is not installed: the tls-auth load comes from Python client processes", file=sys.stderr, flush=True)
            self.pool = multiprocessing.get_context("spawn").Pool(SESSIONS)
        self.resumed: dict[int, list[int]] = {}  # port: [resumed, connections]

    def run(self, client: TLSClient, count: int) -> float:
        """``count`` messages over the 16 sessions; the CPU seconds the load generator spent."""
        resumed, cpu = self._run_python(client, count) if self.pool is not None else self._run_go(client, count)
        tally = self.resumed.setdefault(client.port, [0, 0])
        tally[0] += resumed
        tally[1] += count
        return cpu

    def _run_go(self, client: TLSClient, count: int) -> tuple[int, float]:
        assert self.binary is not None
        command = [str(self.binary), "-host", LOOPBACK, "-port", str(client.port), "-ca", client.ca_file]
        command += ["-server-name", SERVER_NAME, "-sessions", str(SESSIONS), "-count", str(count)]
        command += [f"-resume={str(client.resume).lower()}", "-from", SENDER, "-to", RECIPIENT]
        env = {name: value for name, value in os.environ.items() if name != "TLSLOAD_AUTH_PLAIN"}
        if client.auth:
            env["TLSLOAD_AUTH_PLAIN"] = _AUTH_PLAIN  # not on the command line, which every process can read
        output, cpu = run_load(command, "bench/tlsload", stdin=_MESSAGE, env=env)
        done = re.search(r"^tlsload sent=(\d+) resumed=(\d+) seconds=", output, re.MULTILINE)
        if done is None or int(done[1]) != count:
            raise RuntimeError(f"bench/tlsload was to send {count} messages and printed {output.strip()!r}")
        return int(done[2]), cpu

    def _run_python(self, client: TLSClient, count: int) -> tuple[int, float]:
        assert self.pool is not None
        shares = [count // SESSIONS + (1 if i < count % SESSIONS else 0) for i in range(SESSIONS)]
        done = self.pool.starmap(_send_tls, [(client, share) for share in shares], chunksize=1)
        return sum(each for each, _ in done), sum(cpu for _, cpu in done)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed ECDSA P-256 certificate for ``SERVER_NAME``, used by both relays; the clients trust it."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, folder: Path) -> TLSFiles:
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                f"/CN={SERVER_NAME}",
                "-addext",
                f"subjectAltName=DNS:{SERVER_NAME}",
            ],
            check=True,
            capture_output=True,
        )
        cert.chmod(0o644)
        key.chmod(0o644)  # a throwaway bench key: Postfix's daemons (user postfix) read it too
        return cls(cert, key)


# -- contender 1: the gateway's SMTP ingress, in its own process ------------------------------


async def serve_ingress(sink_port: int, profile: str | None, tls_dir: str | None) -> None:
    """The gateway process: one account to the sink (4 connections), SMTP ingress trusting 127.0.0.0/8.

    With ``tls_dir`` (cert.pem and key.pem) the listener offers STARTTLS and
    the account has the bench login, hashed at the production scrypt cost.
    """
    from mailgate.gateway.app import Gateway, GatewayOptions, run_until_signalled
    from mailgate.gateway.auth import AllowAnyone
    from mailgate.ingress.attach import attach
    from mailgate.ingress.options import IngressOptions, parse_networks
    from mailgate.passwords import hash_password
    from mailgate.snapshot import AccountConfig, ConfigSnapshot

    gateway = Gateway(AllowAnyone(), GatewayOptions(host=LOOPBACK, port=0, admin_port=None, hostname="gw.bench.test"))
    port = free_port()
    tls = {"tls_cert": f"{tls_dir}/cert.pem", "tls_key": f"{tls_dir}/key.pem"} if tls_dir else {}
    ingress = attach(
        gateway,
        IngressOptions(
            port=port,
            host=LOOPBACK,
            hostname="gw.bench.test",
            trusted_networks=parse_networks("127.0.0.0/8"),
            default_account="bench/sink",
            max_connections=256,
            **tls,  # type: ignore[arg-type]
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
            "smtpClients": [{"username": LOGIN, "passwordHash": hash_password(PASSWORD)}] if tls_dir else [],
        }
    )
    await gateway.apply_snapshot(ConfigSnapshot(revision=1, accounts=[account]))

    async def announce() -> None:
        """``listening PORT`` once the listener is bound, whenever in the gateway's start-up that happens."""
        while "smtp" not in ingress.ports:  # noqa: ASYNC110  # the gateway signals no such moment: poll it
            await asyncio.sleep(0.01)
        print(f"listening {ingress.ports['smtp']}", flush=True)

    announcing = asyncio.get_running_loop().create_task(announce())  # referenced until the gateway stops
    if profile is None:
        await run_until_signalled(gateway)
        announcing.cancel()
        return
    import cProfile

    # CPU time, not wall time: on a shared machine a woken peer process often takes the CPU right inside a
    # send(), and a wall clock would charge that wait to the write.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        await run_until_signalled(gateway)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)
        announcing.cancel()


@contextlib.contextmanager
def server_process(command: list[str], what: str) -> Iterator[tuple[int, int]]:
    """A server of this module in its own process (it prints ``listening PORT``); yields its port and process id."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stderr is not None
        words = process.stdout.readline().decode().split()
        if len(words) != 2 or words[0] != "listening":
            raise RuntimeError(f"{what} did not start: {process.stderr.read().decode()}")
        yield int(words[1]), process.pid
    finally:
        stop_process(process, timeout=30)  # SIGTERM: the server drains and exits
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def ingress_process(
    sink_port: int, tls: TLSFiles, event_loop: str, profile: str | None = None
) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """The gateway contender in its own process (under cProfile with ``profile``); yields its port and process id."""
    command = [sys.executable, "-m", "bench.smtp_ingress", "serve", "--sink-port", str(sink_port)]
    command += ["--tls-dir", str(tls.cert.parent), "--event-loop", event_loop]
    if profile is not None:
        command += ["--profile", profile]
    return server_process(command, "the gateway")


# -- references: servers that only answer 250, relaying nothing ---------------------------------
#
# They show where the ceiling of one Python process is under each pattern: ``aiosmtpd`` is the
# library the ingress builds on, untouched (its own STARTTLS and AUTH, a handler that answers 250);
# ``asyncio`` is a hand-written SMTP responder on the same event loop, the least a Python server
# can do per connection (accept, TLS handshake, a dozen reads and writes). Nothing reaches the sink:
# their rate is measured at the client, when the load has finished.


def _bare_login(login: bytes, password: bytes) -> bool:
    return hmac.compare_digest(login, LOGIN.encode()) and hmac.compare_digest(password, PASSWORD.encode())


class _Answer250:
    """aiosmtpd handler and authenticator: every message is taken (and dropped), the bench login logs in."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object) -> AuthResult:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and _bare_login(auth_data.login, auth_data.password)
        return AuthResult(success=ok)


class _BareSMTP(asyncio.Protocol):
    """Just enough SMTP for the bench's clients (smtp-source and ``_send_tls``), with STARTTLS and AUTH PLAIN."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.secure = False
        self.buffer = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(b"220 bare.bench.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer, self.in_data = self.buffer[end + 5 :], False
                self.transport.write(b"250 2.0.0 OK\r\n")
                continue
            line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                return
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                offers = b"250-STARTTLS\r\n" if self.tls is not None and not self.secure else b""
                offers += b"250-AUTH PLAIN\r\n" if self.secure else b""
                self.transport.write(b"250-bare.bench.test\r\n250-PIPELINING\r\n" + offers + b"250 8BITMIME\r\n")
            elif verb == b"STAR" and self.tls is not None and not self.secure:
                self.transport.pause_reading()  # the next bytes are the TLS handshake's
                self.transport.write(b"220 2.0.0 Ready to start TLS\r\n")
                self.buffer = b""
                asyncio.get_running_loop().create_task(self._start_tls(self.tls))
                return
            elif verb == b"AUTH":
                blob = base64.b64decode(line.split()[-1])
                parts = blob.split(b"\0")
                ok = self.secure and len(parts) == 3 and _bare_login(parts[1], parts[2])
                self.transport.write(b"235 2.7.0 OK\r\n" if ok else b"535 5.7.8 No\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # so that a text of no lines ends at CRLF.CRLF too
                self.transport.write(b"354 Go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self.transport.write(b"250 2.0.0 OK\r\n")

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            upgraded = await loop.start_tls(self.transport, self, context, server_side=True)
        except OSError:  # ssl.SSLError, a reset
            self.transport.abort()
            return
        self.transport, self.secure = cast(asyncio.Transport, upgraded), True


async def serve_bare(kind: str, tls_dir: str) -> None:
    """A reference server on 127.0.0.1 until SIGTERM: ``aiosmtpd`` or ``asyncio`` (see above)."""
    import signal

    from aiosmtpd.smtp import SMTP

    from mailgate.ingress.tls import server_context

    loop = asyncio.get_running_loop()
    context = server_context(f"{tls_dir}/cert.pem", f"{tls_dir}/key.pem")  # the ingress's own server context
    answer = _Answer250()
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # as the ingress has it (aiosmtpd logs every command)
    warnings.simplefilter("ignore")  # aiosmtpd warns on every AUTH that its authenticator API may change

    def session() -> asyncio.Protocol:
        if kind == "asyncio":
            return _BareSMTP(context)
        return SMTP(answer, hostname="bare.bench.test", tls_context=context, authenticator=answer, loop=loop)

    server = await loop.create_server(session, LOOPBACK, 0, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def bare_process(kind: str, tls: TLSFiles, event_loop: str) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """A reference server in its own process, on the gateway's event loop; yields its port and process id."""
    command = [sys.executable, "-m", "bench.smtp_ingress", "bare", kind, "--tls-dir", str(tls.cert.parent)]
    return server_process([*command, "--event-loop", event_loop], f"the {kind} reference server")


# -- contender 2: a private Postfix relay -------------------------------------------------------

_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
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
myhostname = {server_name}
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
relayhost = [{host}]:{sink_port}
smtp_dns_support_level = disabled
biff = no
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_session_cache_database = btree:{root}/data/smtpd_scache
smtpd_tls_auth_only = yes
"""

# Cyrus SASL, server side: PLAIN against a sasldb of this instance (see ``postfix_relay``). Debian's Postfix
# looks for smtpd.conf in $config_directory/sasl whatever cyrus_sasl_config_path says: both point there.
_SASL_MAIN_CF = """\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {root}/conf/sasl
smtpd_sasl_local_domain = {server_name}
"""
_SASL_SMTPD_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: {root}/conf/sasl/sasldb2
mech_list: PLAIN LOGIN
"""


def postfix_path() -> str:
    for candidate in (shutil.which("postfix"), "/usr/sbin/postfix"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Postfix is not installed (run hack/system-deps.sh)")


def postfix_sasl_note() -> str | None:
    """Why Postfix cannot offer AUTH here, or ``None`` when it can (Cyrus SASL support and ``saslpasswd2``)."""
    types = subprocess.run(["postconf", "-a"], capture_output=True, text=True).stdout.split()
    if "cyrus" not in types:
        return "this Postfix has no Cyrus SASL server support (postconf -a)"
    if shutil.which("saslpasswd2") is None:
        return "saslpasswd2 is missing (Debian package sasl2-bin)"
    return None


@contextlib.contextmanager
def postfix_relay(sink_port: int, tls: TLSFiles, sasl: bool) -> Iterator[tuple[int, int]]:
    """A Postfix instance of its own under a temporary directory, relaying everything to the sink.

    Yields its port and the process id of its master (whose children are all its daemons).
    """
    if os.geteuid() != 0:
        raise RuntimeError("the Postfix contender needs root (its daemons switch to the postfix user)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-postfix-") as temp:
        root = Path(temp)
        root.chmod(0o755)  # the daemons run as the postfix user and must reach their directories
        conf = root / "conf"
        for folder in (conf, root / "queue", root / "data", conf / "sasl"):
            folder.mkdir()
        shutil.chown(root / "data", user="postfix")
        main_cf = _MAIN_CF.format(
            root=root, host=LOOPBACK, sink_port=sink_port, server_name=SERVER_NAME, cert=tls.cert, key=tls.key
        )
        if sasl:
            main_cf += _SASL_MAIN_CF.format(root=root, server_name=SERVER_NAME)
            (conf / "sasl" / "smtpd.conf").write_text(_SASL_SMTPD_CONF.format(root=root))
            subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(conf / "sasl" / "sasldb2"), "-u", SERVER_NAME, LOGIN],
                input=PASSWORD.encode(),
                check=True,
                capture_output=True,
            )
            shutil.chown(conf / "sasl" / "sasldb2", user="postfix")
        (conf / "main.cf").write_text(main_cf)
        (conf / "master.cf").write_text(_MASTER_CF.format(listen=f"{LOOPBACK}:{port}"))
        postfix = [postfix_path(), "-c", str(conf)]
        started = subprocess.run([*postfix, "start"], capture_output=True, timeout=60)
        try:
            if started.returncode != 0:
                log = (root / "maillog").read_text(errors="replace") if (root / "maillog").exists() else ""
                raise RuntimeError(f"Postfix did not start: {log[-2000:]}")
            wait_listening(port, timeout=30)
            yield port, int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
        finally:
            subprocess.run([*postfix, "stop"], capture_output=True, timeout=60)


# -- the run ---------------------------------------------------------------------------


def drive(pattern: str, port: int, count: int, load: TLSLoad, client: TLSClient) -> float:
    """``count`` messages to ``port`` the way ``pattern`` sends them, until the last was acknowledged; the load's CPU seconds."""
    if pattern == "tls-auth":
        return load.run(client, count)
    return run_source(port, count, keep=pattern == "kept")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rsplit(")", 1)[1].split()  # the fields after "(comm)", from the state on


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children, those it reaped and those still running.

    Postfix works in a family of processes under its master (smtpd, cleanup,
    qmgr, smtp, ...): their sum is what it spends on the load, as the one
    gateway process's own time is for the ingress. Kernel threads (disk
    writes) count for neither.
    """
    fields = _stat(pid)
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                child = _stat(int(entry.name))
                if int(child[1]) == pid:
                    ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def host_ticks() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far, all cores (``/proc/stat``): whether a run was CPU-bound."""
    with open("/proc/stat") as file:
        values = [int(value) for value in file.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])  # user .. steal; guest time is already in user


class Bench:
    """The sink, both relays and the TLS clients, up for the whole run; ``measure`` drives one contender once."""

    def __init__(self, stack: contextlib.ExitStack, *, event_loop: str, resume: bool) -> None:
        self.sink = Sink()
        stack.callback(self.sink.close)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-bench-tls-")))
        folder.chmod(0o755)
        self.tls = TLSFiles.create(folder)
        self.sasl_note = postfix_sasl_note()
        self.load = TLSLoad()
        stack.callback(self.load.close)
        self.resume = resume
        servers = {
            "ingress": ingress_process(self.sink.port, self.tls, event_loop),
            "postfix": postfix_relay(self.sink.port, self.tls, sasl=self.sasl_note is None),
            **{kind: bare_process(kind, self.tls, event_loop) for kind in REFERENCES},
        }
        self.ports = {"direct": self.sink.port}
        self.pids: dict[str, int] = {}
        for name, server in servers.items():
            self.ports[name], self.pids[name] = stack.enter_context(server)
        self.cpu: dict[tuple[str, str], list[float]] = {}  # CPU milliseconds per message, per measurement
        self.host: dict[tuple[str, str], list[float]] = {}  # the machine's busy share (all cores), per measurement
        self.load_cpu: dict[tuple[str, str], list[float]] = {}  # the load generator's CPU milliseconds per message

    def measure(self, pattern: str, contender: str, count: int) -> float:
        """Messages per second, end to end at the sink; the contender's CPU time per message goes to ``cpu``."""
        port, pid = self.ports[contender], self.pids.get(contender)
        start_count = self.sink.count
        cpu = cpu_seconds(pid) if pid is not None else 0.0
        host = host_ticks()
        started = time.monotonic()
        auth = contender != "postfix" or self.sasl_note is None
        load_cpu = drive(pattern, port, count, self.load, TLSClient(port, str(self.tls.cert), self.resume, auth))
        self.load_cpu.setdefault((pattern, contender), []).append(load_cpu * 1000 / count)
        if contender in REFERENCES:
            finished = time.monotonic()
        else:
            finished = self.sink.wait_for(start_count + count, timeout=300)
        busy, total = (after - before for after, before in zip(host_ticks(), host, strict=True))
        share = busy / max(total, 1)
        self.host.setdefault((pattern, contender), []).append(share)
        if pid is not None:
            self.cpu.setdefault((pattern, contender), []).append((cpu_seconds(pid) - cpu) * 1000 / count)
        rate = count / (finished - started)
        line = f"  {pattern:>14} {contender:>8}: {count:>6} messages, {rate:8.1f} msg/s, host {100 * share:3.0f}% busy"
        print(line, file=sys.stderr, flush=True)
        return rate

    def resumed_share(self, contender: str) -> float | None:
        resumed, total = self.load.resumed.get(self.ports[contender], [0, 0])
        return round(resumed / total, 3) if total else None


Results = dict[tuple[str, str], list[float]]
STARTED = time.monotonic()


def run(bench: Bench, counts: dict[tuple[str, str], int], rounds: int, warmup: int) -> Results:
    """Warm every contender up on every pattern, then ``rounds`` rounds of everything, interleaved."""
    results: Results = {key: [] for key in counts}
    print("warm-up", file=sys.stderr, flush=True)
    for pattern, contender in counts:
        bench.measure(pattern, contender, warmup)
    bench.cpu.clear()
    bench.host.clear()
    bench.load_cpu.clear()
    for round_number in range(rounds):
        print(f"round {round_number + 1} of {rounds}", file=sys.stderr, flush=True)
        for pattern, contender in counts:
            results[pattern, contender].append(bench.measure(pattern, contender, counts[pattern, contender]))
    return results


def report(results: Results, bench: Bench) -> dict[str, object]:
    best = {key: max(values) for key, values in results.items()}
    cpu = {key: min(values) for key, values in bench.cpu.items()}  # the least disturbed measurement
    host = {key: max(values) for key, values in bench.host.items()}
    load_cpu = {key: min(values) for key, values in bench.load_cpu.items()}
    rows = [
        [
            pattern,
            contender,
            best[pattern, contender],
            min(values),
            len(values),
            round(best[pattern, contender] / best[pattern, "postfix"], 2),
            round(cpu.get((pattern, contender), 0.0), 3),
            round(load_cpu[pattern, contender], 3),
            round(100 * host[pattern, contender]),
        ]
        for (pattern, contender), values in results.items()
    ]
    headers = ["pattern", "contender", "msgs/s (best)", "msgs/s (worst)", "rounds", "vs postfix", "CPU ms/msg"]
    headers += ["load CPU ms/msg", "host busy %"]
    print(format_table(headers, rows))

    def ratio(pattern: str) -> float:
        return round(best[pattern, "ingress"] / best[pattern, "postfix"], 2)

    summary: dict[str, object] = {
        "ingress_msgs_per_s": round(best["kept", "ingress"], 1),
        "postfix_msgs_per_s": round(best["kept", "postfix"], 1),
        "direct_msgs_per_s": round(best["kept", "direct"], 1),
        "ingress_vs_postfix": ratio("kept"),
        "ingress_vs_direct": round(best["kept", "ingress"] / best["kept", "direct"], 3),
        "ingress_per_connection_msgs_per_s": round(best["per-connection", "ingress"], 1),
        "postfix_per_connection_msgs_per_s": round(best["per-connection", "postfix"], 1),
        "per_connection_vs_postfix": ratio("per-connection"),
        "ingress_tls_per_connection_msgs_per_s": round(best["tls-auth", "ingress"], 1),
        "postfix_tls_per_connection_msgs_per_s": round(best["tls-auth", "postfix"], 1),
        "tls_per_connection_vs_postfix": ratio("tls-auth"),
        "postfix_tls_auth": "STARTTLS + AUTH PLAIN (Cyrus SASL, sasldb)"
        if bench.sasl_note is None
        else f"STARTTLS only, no AUTH: {bench.sasl_note}",
        "tls_resumed_share": {name: bench.resumed_share(name) for name in ("ingress", "postfix")},
        "tls_load_generator": bench.load.generator,  # "go" (bench/tlsload), or "python" where Go is missing
        # CPU time per message (the gateway process; Postfix's master and all its daemons): steadier than
        # throughput on a shared machine, and what a deployment pays for.
        "cpu_ms_per_msg": {
            pattern: {name: round(cpu[pattern, name], 3) for name in ("ingress", "postfix")} for pattern in PATTERNS
        },
        # what the load generator itself spent (smtp-source, or the TLS load): on two cores it competes
        "load_cpu_ms_per_msg": {
            pattern: {name: round(load_cpu[pattern, name], 3) for name in ("ingress", "postfix")} for pattern in PATTERNS
        },
        "postfix_cpu_vs_ingress": {pattern: round(cpu[pattern, "postfix"] / cpu[pattern, "ingress"], 2) for pattern in PATTERNS},
        "sessions": SESSIONS,
        "upstream_connections": CONNECTIONS,
        "message_bytes": MESSAGE_BYTES,
        "target_ingress_vs_postfix": TARGETS["kept"],
        "target_per_connection_vs_postfix": TARGETS["per-connection"],
        "target_tls_per_connection_vs_postfix": TARGETS["tls-auth"],
        # The ceilings of one Python process on the same event loop (see serve_bare), rates at the client:
        "reference_msgs_per_s": {
            pattern: {kind: round(best[pattern, kind], 1) for kind in REFERENCES} for pattern in ("per-connection", "tls-auth")
        },
        "reference_cpu_ms_per_msg": {
            pattern: {kind: round(cpu[pattern, kind], 3) for kind in REFERENCES} for pattern in ("per-connection", "tls-auth")
        },
        "per_connection_vs_bare_aiosmtpd": round(best["per-connection", "ingress"] / best["per-connection", "aiosmtpd"], 2),
        "tls_per_connection_vs_bare_aiosmtpd": round(best["tls-auth", "ingress"] / best["tls-auth", "aiosmtpd"], 2),
        "elapsed_s": round(time.monotonic() - STARTED, 1),
    }
    print(json.dumps(summary))
    return summary


# -- profiling the gateway under one pattern -------------------------------------------------


def profile(
    pattern: str, count: int, top: int, sampler: str, event_loop: str, resume: bool, native: bool, save: str | None
) -> None:
    """The gateway alone (sink, no Postfix) under ``count`` messages of ``pattern``, after a warm-up.

    ``cprofile``: the whole gateway process under cProfile, timed in CPU time
    (exact call counts, but its overhead inflates Python-heavy paths, and a
    coroutine counts one call per resumption); ``py-spy``: sampled from
    outside at 250 Hz without stopping it (needs ``py-spy``, ``pip install
    py-spy``), with ``native`` the C frames too; it samples wall time, so a
    process preempted inside a system call (a send() waking the peer on a
    busy machine) is charged to that call. ``perf``: ``perf record`` on CPU
    time, shares by library (kernel, libpython, uvloop, OpenSSL) and symbol.
    Prints the top entries by own time and by cumulative time.
    """
    with contextlib.ExitStack() as stack:
        sink = Sink()
        stack.callback(sink.close)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-bench-profile-")))
        folder.chmod(0o755)
        tls = TLSFiles.create(folder)
        load = TLSLoad()
        stack.callback(load.close)
        stats = folder / "ingress.prof"
        with ingress_process(sink.port, tls, event_loop, profile=str(stats) if sampler == "cprofile" else None) as (port, pid):
            client = TLSClient(port, str(tls.cert), resume, auth=True)
            drive(pattern, port, 300, load, client)
            sink.wait_for(300, timeout=120)
            spy = None
            if sampler == "py-spy":
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                command = [py_spy, "record", "-p", str(pid), "-r", "250", "--nonblocking", "--format", "raw", "-o", str(stats)]
                command += ["--native"] if native else []
            elif sampler == "perf":
                command = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(stats)]
            if sampler != "cprofile":
                spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)  # the sampler attaches
            cpu = cpu_seconds(pid)
            started = time.monotonic()
            drive(pattern, port, count, load, client)
            finished = sink.wait_for(300 + count, timeout=300)
            cpu = cpu_seconds(pid) - cpu
            if spy is not None:
                spy.send_signal(2)  # SIGINT: the sampler writes its file and exits
                _, errors = spy.communicate(timeout=60)
                if not stats.exists():
                    raise RuntimeError(f"py-spy wrote nothing: {errors.decode(errors='replace')[-2000:]}")
        rate = count / (finished - started)
        print(f"{pattern}: {count} messages, {rate:.1f} msg/s, {cpu * 1000 / count:.3f} ms CPU/msg ({sampler})")
        if save is not None:
            shutil.copyfile(stats, save)
        if sampler == "cprofile":
            import pstats

            for order in ("tottime", "cumulative"):
                pstats.Stats(str(stats), stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(top)
        elif sampler == "perf":
            for keys in ("dso", "dso,sym"):
                report = ["perf", "report", "-i", str(stats), "--stdio", "--sort", keys, "--percent-limit", "0.7"]
                lines = subprocess.run(report, capture_output=True, text=True, check=True).stdout.splitlines()
                print("\n".join(line for line in lines if line.strip() and not line.startswith("#")))
        else:
            _print_samples(stats.read_text(), top)


def _print_samples(collapsed: str, top: int) -> None:
    """py-spy's collapsed stacks (``frame;frame;... count``): the top frames by own and by cumulative samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = [re.sub(r" \((?:.*/)?([^/:]+)(?::\d+)?\)$", r" (\1)", frame) for frame in stack.split(";")]  # no line
        samples += int(number)
        own[frames[-1]] = own.get(frames[-1], 0) + int(number)
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + int(number)
    for title, table in (("own", own), ("cumulative", total)):
        print(f"\n{samples} samples; top {top} by {title} share")
        for frame, hits in sorted(table.items(), key=lambda item: -item[1])[:top]:
            print(f"{100 * hits / samples:6.1f}%  {frame}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_ingress", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--quick", action="store_true", help="two short rounds (about a minute)")
    parser.add_argument("--full-handshakes", action="store_true", help="tls-auth clients never resume a TLS session")
    loops = ["auto", "asyncio"]
    parser.add_argument("--event-loop", choices=loops, default="auto", help="the gateway's loop (auto: uvloop if installed)")
    serve = sub.add_parser("serve", help="run only the gateway contender (prints `listening PORT`)")
    serve.add_argument("--sink-port", type=int, required=True)
    serve.add_argument("--profile", metavar="FILE", help="write cProfile stats of the gateway process here on exit")
    serve.add_argument("--tls-dir", metavar="DIR", help="offer STARTTLS with DIR/cert.pem and DIR/key.pem, and the bench login")
    serve.add_argument("--event-loop", choices=loops, default="auto")
    bare = sub.add_parser("bare", help="run one reference server (prints `listening PORT`)")
    bare.add_argument("kind", choices=REFERENCES)
    bare.add_argument("--tls-dir", metavar="DIR", required=True)
    bare.add_argument("--event-loop", choices=loops, default="auto")
    prof = sub.add_parser("profile", help="the gateway alone under one pattern's load; prints its top entries")
    prof.add_argument("pattern", choices=list(PATTERNS))
    prof.add_argument("--count", type=int, default=3000)
    prof.add_argument("--top", type=int, default=15)
    prof.add_argument("--sampler", choices=["cprofile", "py-spy", "perf"], default="cprofile")
    prof.add_argument("--native", action="store_true", help="py-spy: C frames too (OpenSSL, uvloop)")
    prof.add_argument("--save", metavar="FILE", help="keep the sampler's raw output here")
    args = parser.parse_args(argv)
    if args.command in ("serve", "bare"):
        from mailgate.gateway.main import loop_factory

        with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
            if args.command == "serve":
                runner.run(serve_ingress(args.sink_port, args.profile, args.tls_dir))
            else:
                runner.run(serve_bare(args.kind, args.tls_dir))
        return
    if args.command == "profile":
        resume = not args.full_handshakes
        profile(args.pattern, args.count, args.top, args.sampler, args.event_loop, resume, args.native, args.save)
        return
    # messages per measurement, per contender in the order of PATTERNS
    if args.quick:
        per_pattern = {"kept": (3000, 1500, 8000), "per-connection": (2000, 1000, 1500, 2500), "tls-auth": (1000, 500, 600, 1000)}
        rounds, warmup = 2, 150
    else:
        per_pattern = {"kept": (12000, 6000, 40000), "per-connection": (6000, 3000, 4000, 8000)}
        per_pattern["tls-auth"] = (3000, 2000, 2000, 3000)
        rounds, warmup = 3, 1000
    counts = {
        (pattern, contender): count
        for pattern, contenders in PATTERNS.items()
        for contender, count in zip(contenders, per_pattern[pattern], strict=True)
    }
    with contextlib.ExitStack() as stack:
        bench = Bench(stack, event_loop=args.event_loop, resume=not args.full_handshakes)
        report(run(bench, counts, rounds, warmup), bench)


if __name__ == "__main__":
    main()
