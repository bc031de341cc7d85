"""``python -m bench.queue``: durable acceptance and queue drain, mailgate's queue beside a Postfix relay, one run.

Every contender relays for a realistic account: its upstream speaks STARTTLS
(certificate verified against a private CA) and wants AUTH, and it gets the
same number of upstream connections (``CONNECTIONS``: the account's
``maxConnections``, Postfix's ``default_destination_concurrency_limit``; both
reconnect after 100 messages). That upstream is the same for everyone:
``bench/tlssink``, a small Go program (standard library only; STARTTLS with
the bench's certificate, AUTH PLAIN or LOGIN required, pipelining, every
message counted once its 250 was sent, nothing kept), built at the start of
a run and cached under ``~/.cache/mailgate/bench/tlssink/`` by its source's
hash. It replaced a Postfix ``smtpd`` of its own (STARTTLS and AUTH required,
Cyrus SASL) that proxied each transaction to a counting ``smtp-sink``
(``smtpd_proxy_filter``) because that upstream competed with the contenders
for the two cores: its processes spent 0.7 to 0.8 ms of CPU per message
(``upstream_cpu_ms_per_msg``), nearly as much as the gateways it served (0.9
to 1.3 ms), so every run was CPU-bound near 1,000 msgs/s whoever relayed, and
every ratio was compressed towards 1; bench/tlssink spends 0.1 to 0.2 ms. Where
``go`` is missing (or with ``--postfix-upstream``) that Postfix upstream is
used still, and the JSON says which (``upstream``: ``"go-tlssink"`` or
``"postfix-smtpd"``). Messages are 2 KB, one recipient.

The contenders, all with their queues on the same disk (``/tmp``):

- ``sqlite``: ``mailgate gateway --queue sqlite:///...`` (WAL, synchronous=FULL),
  SMTP ingress on, clients from 127.0.0.0/8 trusted, accounts in
  ``delivery.mode: queue`` routed by sender;
- ``postgres``: the same with ``--queue postgresql://...`` on a PostgreSQL
  started here (tests/queue/postgres.py: Debian's ``postgresql``, ``initdb``
  as the postgres user, fsync on); skipped, and reported null, when it cannot
  be started;
- ``postfix``: a private Postfix instance (own config, queue and data
  directories; the system's Postfix is never touched) with ``relayhost`` =
  the TLS upstream, ``smtp_tls_security_level = secure``, SASL client, TLS
  connection reuse through ``tlsproxy``; its queue files are fsync'd before
  it answers 250, as always.

The patterns, one after the other, ``e2e`` and ``drain`` first; within a
pattern, each contender in turn in every round (the order rotates from round
to round, so the machine's noise spreads over all). The accept patterns come
last because what they leave behind differs: Postfix's queue is emptied
(``postsuper -d``) after each, while the gateways have no bulk delete and keep
every message accepted for the dead upstream as deferred, so they carry that
growing backlog (their delivery loop's look-ups cost more with it) through
the accept patterns, never into ``e2e`` or ``drain``:

- ``accept-smtp``: ``smtp-source`` (16 sessions that keep their connection)
  sends N messages from a sender whose account's upstream is down (a port
  where nothing listens; Postfix: ``sender_dependent_relayhost_maps`` to that
  port). The rate is N over the time until the last 250: every 250 is a
  durable commit (for the gateways the enqueued count is checked against N,
  for Postfix the messages deleted from its queue afterwards). Between
  measurements the gateway's delivery loop is let finish its failed attempts
  (every message deferred; ``attempted_s`` is how long that took after the
  last 250) and Postfix's queue is emptied, so no contender's leftovers run
  during another's measurement;
- ``accept-http``: ``wrk`` (16 connections) POSTs the same message as JSON
  to the same account for S seconds; each ``202 Accepted`` is a durable
  commit (the enqueued count is checked against wrk's). Compared with
  Postfix's best ``accept-smtp`` (Postfix has no HTTP door);
- ``e2e``: the issue's measure: ``smtp-source`` sends N messages through a
  live account; the rate is N over the time until the upstream counted all
  of them. ``accept`` is the same N over the time until smtp-source's last 250
  (for the gateways the enqueued count is checked: every message went through
  the durable queue, none was relayed directly);
- ``drain``: N messages wait in the queue, never attempted, when the upstream
  "comes back"; the rate is N over the time from that moment until the
  upstream counted all of them. Postfix: smtp-source sends them from a sender
  its ``check_sender_access`` puts on HOLD, then ``postsuper -H ALL`` and
  ``postqueue -f`` (timed). Gateways: the bench enqueues them into the
  gateway's own store (``open_store``, what another replica's door does) for
  an account the gateway does not serve yet, sends one message through its
  door (a SQLite gateway hears of enqueues in its own process only; a
  PostgreSQL one hears the backlog's NOTIFY too), then adds the account over
  the admin API (timed: the delivery loop notices due work it may now take
  at its next one-second poll). ``first_ms`` is when the first message
  arrived, ``steady`` the rate from then on.

After every measurement the sink's count must equal the messages the bench
has had delivered so far, warm-ups included: a duplicate, or a leftover of an
earlier measurement, fails the run. Each (pattern, contender) gets an
unmeasured warm-up first (``accept-http`` in ``--quick``: one request only).
Reported per pattern: the best round (the least disturbed on a shared machine), the worst,
and CPU milliseconds per message (the gateway process, plus the PostgreSQL
server for ``postgres``; Postfix's master and all its daemons; the upstream's
and the load generators' CPU counts for nobody, the upstream's is reported on
its own as ``upstream_cpu_ms_per_msg``). Prints a table, then as the
LAST line one JSON object: ``accept_vs_postfix_sqlite`` and
``accept_vs_postfix_postgres`` (HTTP 202 vs Postfix's SMTP 250),
``smtp_accept_vs_postfix_sqlite``/``_postgres``, ``drain_vs_postfix`` (SQLite;
``drain_vs_postfix_postgres``), the issue's ``sqlite_accept_msgs_per_s``,
``sqlite_delivered_msgs_per_s``, ``postgres_*``, ``postfix_msgs_per_s``,
``sqlite_vs_postfix``, ``postgres_vs_postfix`` (e2e, delivered), the
absolute rates, the drain's first-delivery times and steady rates, and what
a dead upstream costs the gateways (``dead_upstream_attempted_s``,
``dead_upstream_log_lines_per_msg``). Progress goes to stderr. ``--quick``
stays under 90 s on two cores; ``--patterns drain,e2e`` runs a subset.

Needs root (Postfix's daemons switch to the postfix user; PostgreSQL runs as
the postgres user) and the Debian packages of ``hack/system-deps.sh``
(postfix, sasl2-bin, wrk, postgresql). Loopback only; every wait has a
deadline; every process it starts is stopped on the way out, on an error or
SIGTERM too. ``--profile DIR`` runs each gateway under cProfile and leaves
``DIR/gateway-<backend>.prof`` behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import LOOPBACK, REPO, format_table, free_port, go_binary, stop_process, wait_listening
from bench.gateway import lua_string, parse_wrk
from bench.smtp_ingress import Sink, cpu_seconds, postfix_path, smtp_source_path

SESSIONS = 16  # smtp-source sessions, wrk connections
CONNECTIONS = 8  # upstream connections of every contender
MESSAGES_PER_CONNECTION = 100  # mailgate's default maxMessagesPerConnection; Postfix is given the same
MESSAGE_BYTES = 2048
NAMESPACE = "bench"
SENDERS = {"dead": "dead@bench.test", "live": "live@bench.test", "drain": "drain@bench.test"}  # account name: sender
RECIPIENT = "rcpt@example.org"
SERVER_NAME = "upstream.bench.test"  # in the upstream's certificate, beside IP 127.0.0.1
UPSTREAM_LOGIN = "relay@upstream.bench.test"
UPSTREAM_PASSWORD = "bench-upstream-password-0123456789"  # a bench secret only
ADMIN_TOKEN = "bench-queue-admin-token"
TARGET = 1.5  # issue 15: both backends at least 1.5x Postfix, end to end
PATTERNS: dict[str, tuple[str, ...]] = {  # in the order they run (the docstring says why)
    "e2e": ("postfix", "sqlite", "postgres"),
    "drain": ("postfix", "sqlite", "postgres"),
    "accept-smtp": ("postfix", "sqlite", "postgres"),
    "accept-http": ("sqlite", "postgres"),
}
BASELINE = {"accept-smtp": "accept-smtp", "accept-http": "accept-smtp", "e2e": "e2e", "drain": "drain"}  # Postfix's
WAIT = 120.0  # the deadline of any one wait
TLSSINK_SOURCE = REPO / "bench" / "tlssink"


@dataclass(frozen=True)
class Sizes:
    accept: int  # messages per accept-smtp measurement
    http_seconds: int  # wrk takes whole seconds
    e2e: int
    drain: int
    rounds: int
    warmup: int  # messages per warm-up
    http_warmup: int  # seconds of wrk per warm-up; 0: none, the one request of ``check_http`` only (a second of
    # wrk is a thousand or two messages the delivery loop must then attempt: --quick cannot afford it)


QUICK = Sizes(accept=500, http_seconds=1, e2e=500, drain=500, rounds=2, warmup=50, http_warmup=0)
FULL = Sizes(accept=5000, http_seconds=5, e2e=4000, drain=4000, rounds=3, warmup=300, http_warmup=1)


def deadline_wait(ready: Callable[[], bool], what: str, timeout: float = WAIT, step: float = 0.05) -> None:
    """Poll ``ready`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def smtp_source(port: int, count: int, sender: str) -> None:
    """``count`` 2 KB messages over ``SESSIONS`` kept connections; fails unless every one was answered 250."""
    command = [smtp_source_path(), "-d", "-s", str(SESSIONS), "-m", str(count), "-l", str(MESSAGE_BYTES)]
    command += ["-f", sender, "-t", RECIPIENT, "-M", "client.bench.test", f"{LOOPBACK}:{port}"]
    result = subprocess.run(command, capture_output=True, timeout=WAIT)
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {result.stderr.decode(errors='replace').strip()[-500:]}")


def backlog_message(n: int) -> bytes:
    """A 2 KB message, as big as smtp-source's, for the backlog the bench enqueues itself."""
    head = f"From: {SENDERS['drain']}\r\nTo: {RECIPIENT}\r\nSubject: backlog {n}\r\n\r\n".encode()
    body = (b"x" * 76 + b"\r\n") * (MESSAGE_BYTES // 78 + 1)
    return head + body[: MESSAGE_BYTES - len(head)]


# -- TLS material ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A self-signed ECDSA certificate for the upstream, valid for SERVER_NAME and 127.0.0.1; it is its own CA."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, folder: Path) -> Certificate:
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={SERVER_NAME}",
                "-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:{LOOPBACK}",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        cert.chmod(0o644)
        key.chmod(0o644)  # a throwaway key: Postfix's daemons (user postfix) read it
        return cls(cert, key)


# -- private Postfix instances -----------------------------------------------------------------

_BASE_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
biff = no
"""

# The upstream: STARTTLS and AUTH required, every transaction proxied to smtp-sink as it happens (no queue file).
_UPSTREAM_MAIN_CF = """\
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_session_cache_database = btree:{root}/data/smtpd_scache
smtpd_proxy_filter = {host}:{sink_port}
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {root}/conf/sasl
smtpd_sasl_local_domain = {server_name}
"""
_UPSTREAM_SASL_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: {root}/conf/sasl/sasldb2
mech_list: PLAIN LOGIN
"""
_UPSTREAM_MASTER_CF = """\
{listen} inet n - n - - smtpd
rewrite unix - - n - - trivial-rewrite
anvil unix - - n - 1 anvil
tlsmgr unix - - n 1000? 1 tlsmgr
proxymap unix - - n - - proxymap
cleanup unix n - n - 0 cleanup
postlog unix-dgram n - n - 1 postlogd
"""

# The contender: relays to the upstream with verified TLS and AUTH; the dead account's sender goes to a port
# where nothing listens; the drain sender's messages are put on hold as they arrive.
_RELAY_MAIN_CF = """\
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_sender_restrictions = check_sender_access inline:{{ {drain}=HOLD }}
relayhost = [{host}]:{upstream_port}
sender_dependent_relayhost_maps = inline:{{ {dead}=[{host}]:{dead_port} }}
default_destination_concurrency_limit = {connections}
smtp_connection_reuse_count_limit = {per_connection}
smtp_tls_security_level = secure
smtp_tls_policy_maps = inline:{{ {{ [{host}]:{upstream_port} = secure match={server_name} }} }}
smtp_tls_CAfile = {cert}
smtp_tls_connection_reuse = yes
smtp_tls_session_cache_database = btree:{root}/data/smtp_scache
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = inline:{{ [{host}]:{upstream_port}={login}:{password} }}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
"""
_RELAY_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
tlsproxy unix - - n - 0 tlsproxy
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


@dataclass(frozen=True)
class Postfix:
    """One private Postfix instance under a temporary directory."""

    root: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def pid(self) -> int:
        return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])

    def run(self, program: str, *args: str) -> str:
        """A Postfix command on this instance (``postsuper``, ``postqueue``); its stderr (where they report)."""
        result = subprocess.run([program, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
        return result.stderr

    def held(self) -> int:
        return len(os.listdir(self.root / "queue" / "hold"))

    def log_tail(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def postfix_instance(
    main_cf: str, master_cf: str, values: dict[str, object], prepare: Callable[[Path], None] | None = None
) -> Iterator[Postfix]:
    """Start a Postfix of its own; ``main_cf`` and ``master_cf`` are templates over ``values`` and root, host,
    hostname, listen (this instance's directory, address, name and listening socket).

    ``prepare(root)`` runs after the directories exist and before the start (SASL databases and the like).
    """
    if os.geteuid() != 0:
        raise RuntimeError("the Postfix instances need root (their daemons switch to the postfix user)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-queue-postfix-") as temp:
        root = Path(temp)
        root.chmod(0o755)  # the daemons run as the postfix user and must reach their directories
        for folder in ("conf", "queue", "data"):
            (root / folder).mkdir()
        shutil.chown(root / "data", user="postfix")
        values = {**values, "root": root, "host": LOOPBACK, "hostname": SERVER_NAME, "listen": f"{LOOPBACK}:{port}"}
        (root / "conf" / "main.cf").write_text((_BASE_MAIN_CF + main_cf).format(**values))
        (root / "conf" / "master.cf").write_text(master_cf.format(**values))
        if prepare is not None:
            prepare(root)
        postfix = [postfix_path(), "-c", str(root / "conf")]
        started = subprocess.run([*postfix, "start"], capture_output=True, timeout=60)
        instance = Postfix(root, port)
        try:
            if started.returncode != 0:
                raise RuntimeError(f"Postfix did not start: {started.stderr.decode(errors='replace')}{instance.log_tail()}")
            wait_listening(port, timeout=30)
            yield instance
        finally:
            subprocess.run([*postfix, "stop"], capture_output=True, timeout=60)


def upstream(sink_port: int, certificate: Certificate) -> contextlib.AbstractContextManager[Postfix]:
    """The shared upstream: STARTTLS + AUTH in front of the counting smtp-sink."""
    values = {"sink_port": sink_port, "cert": certificate.cert, "key": certificate.key, "server_name": SERVER_NAME}

    def prepare(root: Path) -> None:
        sasl = root / "conf" / "sasl"
        sasl.mkdir()
        (sasl / "smtpd.conf").write_text(_UPSTREAM_SASL_CONF.format(root=root))
        user, realm = UPSTREAM_LOGIN.split("@")
        subprocess.run(
            ["saslpasswd2", "-p", "-c", "-f", str(sasl / "sasldb2"), "-u", realm, user],
            input=UPSTREAM_PASSWORD.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
        shutil.chown(sasl / "sasldb2", user="postfix")

    return postfix_instance(_UPSTREAM_MAIN_CF, _UPSTREAM_MASTER_CF, values, prepare)


class GoUpstream(Sink):
    """``bench/tlssink``: the shared upstream in one Go process, STARTTLS and AUTH required, counting as smtp-sink
    does (``mesg=N`` lines on its stdout, read by ``Sink``'s reader, so ``wait_for`` and the exact-count checks
    are the same for both upstreams)."""

    def __init__(self, binary: Path, certificate: Certificate, log: Path) -> None:
        # Not Sink.__init__, which starts smtp-sink: this starts bench/tlssink and shares the rest.
        command = [str(binary), "-listen", f"{LOOPBACK}:0", "-hostname", SERVER_NAME, "-user", UPSTREAM_LOGIN]
        command += ["-cert", str(certificate.cert), "-key", str(certificate.key)]
        env = {**os.environ, "TLSSINK_PASSWORD": UPSTREAM_PASSWORD}  # not on the command line, which all can read
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr)
        assert self.process.stdout is not None
        words = self.process.stdout.readline().split()  # "listening PORT", before any count
        if len(words) != 2 or words[0] != b"listening":
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"bench/tlssink did not start: {log.read_text(errors='replace')[-500:]}")
        self.port = int(words[1])
        self.count = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Stop it; show what it reported on stderr (failed sessions: TLS, AUTH, I/O), if anything."""
        super().close()
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        if lines:
            tail = "\n".join(line[:300] for line in lines[-3:])
            print(f"bench/tlssink: {len(lines)} log lines; the last:\n{tail}", file=sys.stderr)


def postfix_relay(upstream_port: int, dead_port: int, certificate: Certificate) -> contextlib.AbstractContextManager[Postfix]:
    values = {
        "upstream_port": upstream_port, "dead_port": dead_port, "cert": certificate.cert, "server_name": SERVER_NAME,
        "login": UPSTREAM_LOGIN, "password": UPSTREAM_PASSWORD, "connections": CONNECTIONS,
        "per_connection": MESSAGES_PER_CONNECTION, "dead": SENDERS["dead"], "drain": SENDERS["drain"],
    }  # fmt: skip
    return postfix_instance(_RELAY_MAIN_CF, _RELAY_MASTER_CF, values)


# -- the gateway contenders ---------------------------------------------------------------------


def http_call(port: int, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def account_config(name: str, upstream_port: int, ca_pem: str) -> dict[str, Any]:
    """A queue-mode account on a STARTTLS upstream with AUTH, claiming its one sender."""
    return {
        "namespace": NAMESPACE,
        "name": name,
        "spec": {
            "server": {"host": LOOPBACK, "port": upstream_port, "tls": "starttls", "caCertificate": ca_pem},
            "auth": {"method": "login", "secretRef": {"name": "upstream-login"}},
            "pool": {"maxConnections": CONNECTIONS, "maxMessagesPerConnection": MESSAGES_PER_CONNECTION},
            "senders": [SENDERS[name]],
            "delivery": {"mode": "queue"},
        },
        "credentials": {"username": UPSTREAM_LOGIN, "password": UPSTREAM_PASSWORD},
    }


_ENQUEUED = re.compile(r'^mailgate_queue_enqueued_total\{account="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


@dataclass
class GatewayProcess:
    """``mailgate gateway`` with a durable queue and the SMTP ingress, configured over its admin API."""

    backend: str
    queue_url: str
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    smtp_port: int
    log: Path
    extra_pids: tuple[int, ...] = ()  # processes whose CPU is the contender's too (the PostgreSQL server)
    revision: int = 0

    def admin(self, method: str, path: str, body: object = None) -> bytes:
        status, answer = http_call(self.admin_port, method, path, body, token=ADMIN_TOKEN)
        if status not in (200, 204):
            raise RuntimeError(f"admin {method} {path} answered {status}: {answer[:500]!r}")
        return answer

    def configure(self, accounts: list[dict[str, Any]]) -> None:
        self.revision += 1
        self.admin("PUT", "/v1/config", {"revision": self.revision, "accounts": accounts})

    def put_account(self, config: dict[str, Any]) -> None:
        self.revision += 1
        self.admin("PUT", f"/v1/config/accounts/{config['namespace']}/{config['name']}?revision={self.revision}", config)

    def delete_account(self, name: str) -> None:
        self.revision += 1
        self.admin("DELETE", f"/v1/config/accounts/{NAMESPACE}/{name}?revision={self.revision}")

    def enqueued(self, account: str) -> int:
        status, text = http_call(self.port, "GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        counts = {key: float(value) for key, value in _ENQUEUED.findall(text.decode())}
        return int(counts.get(f"{NAMESPACE}/{account}", 0))

    def pending(self, account: str) -> bool:
        """Whether the account has a message queued or being sent (deferred ones are at rest)."""
        for state in ("queued", "sending"):
            status, text = http_call(self.port, "GET", f"/v1/accounts/{NAMESPACE}/{account}/messages?state={state}&limit=1")
            if status != 200:
                raise RuntimeError(f"listing {state} messages answered {status}: {text[:300]!r}")
            if json.loads(text)["items"]:
                return True
        return False

    def wait_quiet(self, account: str) -> None:
        deadline_wait(lambda: not self.pending(account), f"the {self.backend} gateway to finish its {account} attempts", step=0.1)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in (self.process.pid, *self.extra_pids))


@contextlib.contextmanager
def gateway_process(backend: str, queue_url: str, folder: Path, profile: Path | None) -> Iterator[GatewayProcess]:
    port, admin_port, smtp_port = free_port(), free_port(), free_port()
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile / f"gateway-{backend}.prof")]
    command = [
        *python, "-m", "mailgate", "gateway", "--host", LOOPBACK, "--port", str(port), "--admin-port", str(admin_port),
        "--insecure-no-auth", "--log-level", "warning", "--hostname", "gw.bench.test", "--ehlo-hostname", "gw.bench.test",
        "--shutdown-grace", "5", "--queue", queue_url, "--queue-owner", f"bench-{backend}",
        # Deferred messages of the dead account must not come back during the run.
        "--queue-retry-delay", "3600", "--queue-max-retry-delay", "4000",
        "--smtp-port", str(smtp_port), "--smtp-host", LOOPBACK, "--smtp-trusted-networks", "127.0.0.0/8",
        "--smtp-hostname", "gw.bench.test", "--smtp-max-connections", "256",
    ]  # fmt: skip
    log = folder / f"gateway-{backend}.log"
    with log.open("wb") as stderr:
        env = {**os.environ, "MAILGATE_ADMIN_TOKEN": ADMIN_TOKEN}
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        for listening in (admin_port, port, smtp_port):
            wait_listening(listening, timeout=30, process=process)
        yield GatewayProcess(backend, queue_url, process, port, admin_port, smtp_port, log)
    finally:
        stop_process(process, timeout=30)


async def _enqueue_backlog(url: str, count: int) -> None:
    from mailgate.queue import NewMessage, open_store

    store = await open_store(url)
    try:
        account = f"{NAMESPACE}/drain"
        messages = [NewMessage(account, SENDERS["drain"], [RECIPIENT], backlog_message(n)) for n in range(count)]
        await asyncio.wait_for(asyncio.gather(*(store.enqueue(m) for m in messages)), WAIT)
    finally:
        await store.close()


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    rate: float  # messages per second
    cpu_ms: float | None = None  # CPU milliseconds per message
    upstream_cpu_ms: float | None = None  # the shared upstream's, for the same messages
    extra: dict[str, float] = field(default_factory=dict)


class Bench:
    """Everything up for the whole run; ``measure`` drives one contender through one pattern once."""

    def __init__(self, stack: contextlib.ExitStack, *, postgres: bool, profile: Path | None, go_upstream: bool) -> None:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailgate-bench-queue-")))
        folder.chmod(0o755)
        self.folder = folder
        self.certificate = Certificate.create(folder)
        ca_pem = self.certificate.cert.read_text()
        binary = go_binary(TLSSINK_SOURCE) if go_upstream else None
        self.sink: Sink
        self.upstream_pids: tuple[int, ...]  # whose CPU is the shared upstream's
        if binary is not None:
            self.upstream_kind = "go-tlssink"
            self.sink = GoUpstream(binary, self.certificate, folder / "tlssink.log")
            stack.callback(self.sink.close)
            upstream_port, self.upstream_pids = self.sink.port, (self.sink.process.pid,)
        else:
            self.upstream_kind = "postfix-smtpd"
            if go_upstream:
                print("go is not installed: the upstream is a Postfix smtpd in front of smtp-sink", file=sys.stderr)
            self.sink = Sink()
            stack.callback(self.sink.close)
            postfix_upstream = stack.enter_context(upstream(self.sink.port, self.certificate))
            upstream_port, self.upstream_pids = postfix_upstream.port, (postfix_upstream.pid, self.sink.process.pid)
        self.dead_port = free_port()  # nothing listens there: the dead account's upstream
        self.postfix = stack.enter_context(postfix_relay(upstream_port, self.dead_port, self.certificate))
        self.accounts = {
            "dead": account_config("dead", self.dead_port, ca_pem),
            "live": account_config("live", upstream_port, ca_pem),
            "drain": account_config("drain", upstream_port, ca_pem),
        }
        self.delivered = 0  # what the sink must have counted: every message of e2e and drain so far
        self.postgres_note: str | None = None
        urls = {"sqlite": f"sqlite://{folder / 'queue.db'}"}
        pg_pids: tuple[int, ...] = ()
        if postgres:
            try:
                from tests.queue.postgres import PostgresServer

                server = stack.enter_context(PostgresServer())
                urls["postgres"] = server.create_database("mailgate")
                pg_pids = (int((server.data / "postmaster.pid").read_text().split()[0]),)
            except (RuntimeError, OSError, KeyError) as exc:  # no package, no postgres user, initdb failed
                self.postgres_note = f"PostgreSQL could not be started: {str(exc)[:300]}"
        else:
            self.postgres_note = "skipped (--no-postgres)"
        if self.postgres_note:
            print(f"postgres: {self.postgres_note}", file=sys.stderr)
        self.gateways: dict[str, GatewayProcess] = {}
        self.log_lines: dict[str, int] = {}
        self.dead_enqueued: dict[str, int] = {}  # messages accepted for the dead account, warm-ups included
        stack.callback(self._read_logs)  # runs once the gateways stopped
        for backend, url in urls.items():
            gateway = stack.enter_context(gateway_process(backend, url, folder, profile))
            if backend == "postgres":
                gateway.extra_pids = pg_pids
            gateway.configure([self.accounts["dead"], self.accounts["live"]])
            self.gateways[backend] = gateway
        self.wrk_script = folder / "post.lua"
        self.wrk_script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {lua_string(json.dumps(http_body()))}\n"
        )

    def contenders(self, pattern: str) -> list[str]:
        return [name for name in PATTERNS[pattern] if name == "postfix" or name in self.gateways]

    def check_http(self) -> None:
        """One request per gateway before anything is measured: a queue-mode account answers 202."""
        for gateway in self.gateways.values():
            status, body = http_call(gateway.port, "POST", f"/v1/accounts/{NAMESPACE}/dead/messages", http_body())
            if status != 202:
                raise RuntimeError(f"the {gateway.backend} gateway answered {status}, not 202: {body[:300]!r}")
            gateway.wait_quiet("dead")

    def _cpu(self, contender: str) -> float:
        return cpu_seconds(self.postfix.pid) if contender == "postfix" else self.gateways[contender].cpu()

    def _upstream_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.upstream_pids)

    def measure(self, pattern: str, contender: str, size: int) -> Measurement:
        """One measurement: ``size`` messages (seconds for accept-http); fails if the sink counted one too many or few."""
        started = time.monotonic()
        cpu, upstream_cpu = self._cpu(contender), self._upstream_cpu()
        if pattern == "accept-http":
            result = self._accept_http(self.gateways[contender], size)
            count = result.extra["count"]
        else:
            count = int(size)
            run = {"accept-smtp": self._accept_smtp, "e2e": self._e2e, "drain": self._drain}[pattern]
            result = run(contender, count)
        result.cpu_ms = (self._cpu(contender) - cpu) * 1000 / count
        result.upstream_cpu_ms = (self._upstream_cpu() - upstream_cpu) * 1000 / count
        measured = time.monotonic()
        self._settle(pattern, contender, int(count))
        if pattern.startswith("accept") and contender != "postfix":
            result.extra["attempted_s"] = time.monotonic() - measured
        if pattern in ("e2e", "drain"):
            self.delivered += int(count)
        self.check_sink(f"{pattern} {contender}")
        print(
            f"{pattern} {contender}: {count:.0f} messages, {result.rate:,.1f} msgs/s "
            f"({measured - started:.1f} s with the set-up, then {time.monotonic() - measured:.1f} s to settle)",
            file=sys.stderr,
        )
        return result

    def check_sink(self, after: str) -> None:
        """The sink counted exactly what the bench had delivered: no message lost, none twice, no leftover."""
        if self.sink.count != self.delivered:
            raise RuntimeError(f"after {after} the sink counted {self.sink.count} messages, not {self.delivered}")

    def _accept_smtp(self, contender: str, count: int) -> Measurement:
        port = self.postfix.port if contender == "postfix" else self.gateways[contender].smtp_port
        before = 0 if contender == "postfix" else self.gateways[contender].enqueued("dead")
        started = time.monotonic()
        smtp_source(port, count, SENDERS["dead"])
        rate = count / (time.monotonic() - started)
        if contender != "postfix":
            enqueued = self.gateways[contender].enqueued("dead") - before
            if enqueued != count:
                raise RuntimeError(f"the {contender} gateway answered {count} 250s but enqueued {enqueued}")
        return Measurement(rate)

    def _accept_http(self, gateway: GatewayProcess, seconds: int) -> Measurement:
        before = gateway.enqueued("dead")
        wrk = shutil.which("wrk")
        if wrk is None:
            raise RuntimeError("wrk is not installed (hack/system-deps.sh)")
        target = f"http://{LOOPBACK}:{gateway.port}/v1/accounts/{NAMESPACE}/dead/messages"
        command = [wrk, "-t1", f"-c{SESSIONS}", f"-d{seconds}s", "--latency", "--timeout", "30s"]
        command += ["-s", str(self.wrk_script), target]
        out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + WAIT)
        result = parse_wrk(out.stdout, seconds)
        if result["errors"] or result["socket_errors"]:
            raise RuntimeError(f"wrk saw errors: {result['errors']} non-2xx, socket errors {result['socket_errors']!r}")
        enqueued = gateway.enqueued("dead") - before
        if not result["count"] <= enqueued <= result["count"] + SESSIONS:  # wrk drops the answers still in flight
            raise RuntimeError(f"{result['count']} requests answered 202 but the {gateway.backend} gateway enqueued {enqueued}")
        return Measurement(result["msgs_per_s"], extra={"count": result["count"], "p99_ms": result.get("p99", 0.0)})

    def _e2e(self, contender: str, count: int) -> Measurement:
        port = self.postfix.port if contender == "postfix" else self.gateways[contender].smtp_port
        before = 0 if contender == "postfix" else self.gateways[contender].enqueued("live")
        base = self.sink.count
        started = time.monotonic()
        smtp_source(port, count, SENDERS["live"])
        accepted = time.monotonic()
        finished = self._delivered(contender, "live", base + count)
        if contender != "postfix":
            enqueued = self.gateways[contender].enqueued("live") - before
            if enqueued != count:
                raise RuntimeError(f"the {contender} gateway delivered {count} messages but enqueued {enqueued}")
        return Measurement(count / (finished - started), extra={"accept_msgs_per_s": count / (accepted - started)})

    def _drain(self, contender: str, count: int) -> Measurement:
        base = self.sink.count
        if contender == "postfix":
            smtp_source(self.postfix.port, count, SENDERS["drain"])
            deadline_wait(lambda: self.postfix.held() >= count, "Postfix to hold the backlog")
            started = time.monotonic()
            self.postfix.run("postsuper", "-H", "ALL")
            self.postfix.run("postqueue", "-f")
        else:
            gateway = self.gateways[contender]
            asyncio.run(_enqueue_backlog(gateway.queue_url, count))
            # A SQLite gateway learns of enqueues made in its own process only: one message through its door wakes
            # its loop (a PostgreSQL one also hears the backlog's NOTIFY). Once that one is tried, the loop knows of
            # the backlog it may not take yet and looks again every second.
            status, body = http_call(gateway.port, "POST", f"/v1/accounts/{NAMESPACE}/dead/messages", http_body())
            if status != 202:
                raise RuntimeError(f"the {contender} gateway answered {status}, not 202: {body[:300]!r}")
            gateway.wait_quiet("dead")
            started = time.monotonic()
            gateway.put_account(self.accounts["drain"])
        first = self._delivered(contender, "drain", base + 1)
        finished = self._delivered(contender, "drain", base + count)
        steady = (count - 1) / max(finished - first, 1e-6)
        return Measurement(count / (finished - started), extra={"first_ms": (first - started) * 1000, "steady": steady})

    def _delivered(self, contender: str, account: str, total: int) -> float:
        """When the sink counted ``total`` messages; on a timeout, fail with what the contender still holds."""
        try:
            return self.sink.wait_for(total, timeout=WAIT)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {contender} holds: {self._holding(contender, account)}") from None

    def _holding(self, contender: str, account: str) -> str:
        """The contender's undelivered messages, a few of each state with their last reply, for a failure report."""
        if contender == "postfix":
            listing = subprocess.run(["postqueue", "-c", str(self.postfix.conf), "-p"], capture_output=True, text=True)
            return listing.stdout[-1500:]
        gateway, found = self.gateways[contender], []
        for state in ("queued", "sending", "deferred"):
            path = f"/v1/accounts/{NAMESPACE}/{account}/messages?state={state}&limit=3"
            status, body = http_call(gateway.port, "GET", path)
            found.append(f"{state}: {body[:600].decode(errors='replace') if status == 200 else status}")
        return "; ".join(found)

    def _settle(self, pattern: str, contender: str, count: int) -> None:
        """Let a contender finish what the measurement left it, so it does not run during the next one."""
        if contender == "postfix":
            if pattern.startswith("accept"):
                report = self.postfix.run("postsuper", "-d", "ALL")
                deleted = re.search(r"Deleted: (\d+) message", report)
                if deleted is None or int(deleted.group(1)) != count:
                    raise RuntimeError(f"Postfix answered {count} 250s but held {deleted and deleted.group(1)} messages")
            return
        gateway = self.gateways[contender]
        account = {"accept-smtp": "dead", "accept-http": "dead", "e2e": "live", "drain": "drain"}[pattern]
        gateway.wait_quiet(account)
        if pattern == "drain":
            gateway.delete_account("drain")

    def _read_logs(self) -> None:
        """Count each gateway's log lines (warnings and errors) and show the last few."""
        for gateway in self.gateways.values():
            lines = gateway.log.read_text(errors="replace").splitlines() if gateway.log.exists() else []
            self.log_lines[gateway.backend] = len(lines)
            if lines:
                tail = "\n".join(line[:300] for line in lines[-3:])
                print(
                    f"{gateway.backend} gateway: {len(lines)} log lines (warnings and errors); the last:\n{tail}", file=sys.stderr
                )


def http_body() -> dict[str, Any]:
    """The JSON request for the dead account whose message is about 2 KB."""
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    text = (line * (MESSAGE_BYTES // len(line) + 1))[: MESSAGE_BYTES - 300]
    return {"from": SENDERS["dead"], "to": [RECIPIENT], "subject": "mailgate queue benchmark", "text": text}


Results = dict[tuple[str, str], list[Measurement]]


def run(bench: Bench, sizes: Sizes, patterns: Sequence[str]) -> Results:
    """Pattern by pattern in ``PATTERNS`` order: warm every contender up, then ``rounds`` rounds in which the
    contenders' order rotates."""
    size_of = {"accept-smtp": sizes.accept, "accept-http": sizes.http_seconds, "e2e": sizes.e2e, "drain": sizes.drain}
    bench.check_http()
    results: Results = {}
    for pattern in (name for name in PATTERNS if name in patterns):
        warmup = sizes.http_warmup if pattern == "accept-http" else sizes.warmup
        for contender in bench.contenders(pattern) if warmup else ():
            bench.measure(pattern, contender, warmup)
        names = bench.contenders(pattern)
        for index in range(sizes.rounds):
            shift = index % len(names)
            for contender in names[shift:] + names[:shift]:
                results.setdefault((pattern, contender), []).append(bench.measure(pattern, contender, size_of[pattern]))
    time.sleep(1.0)  # a late duplicate of the last measurement
    bench.check_sink("the last measurement")
    bench.dead_enqueued = {name: gateway.enqueued("dead") for name, gateway in bench.gateways.items()}
    return results


def report(results: Results, bench: Bench, sizes: Sizes) -> dict[str, Any]:
    best = {key: max(values, key=lambda m: m.rate) for key, values in results.items()}
    worst = {key: min(m.rate for m in values) for key, values in results.items()}

    def rate(pattern: str, contender: str) -> float | None:
        found = best.get((pattern, contender))
        return round(found.rate, 1) if found else None

    def ratio(pattern: str, contender: str) -> float | None:
        mine, theirs = best.get((pattern, contender)), best.get((BASELINE[pattern], "postfix"))
        return round(mine.rate / theirs.rate, 2) if mine and theirs else None

    rows = []
    for (pattern, contender), found in best.items():
        extra = ", ".join(f"{key} {value:,.1f}" for key, value in found.extra.items() if key not in ("count", "p99_ms"))
        cpu = min((m.cpu_ms for m in results[pattern, contender] if m.cpu_ms is not None), default=0.0)
        rows.append([pattern, contender, found.rate, worst[pattern, contender], len(results[pattern, contender]),
                     ratio(pattern, contender) or "-", round(cpu, 3), extra or "-"])  # fmt: skip
    print(
        f"{SESSIONS} client sessions, {CONNECTIONS} upstream connections (STARTTLS + AUTH, {bench.upstream_kind}), "
        f"{MESSAGE_BYTES} B messages, "
        f"{sizes.rounds} rounds, {os.cpu_count()} CPUs"
    )
    headers = ["pattern", "contender", "msgs/s (best)", "msgs/s (worst)", "rounds", "vs postfix", "CPU ms/msg"]
    headers.append("notes (best round)")
    print(format_table(headers, rows))

    def e2e_accept(contender: str) -> float | None:
        return noted("e2e", contender, "accept_msgs_per_s")

    def first_ms(contender: str) -> float | None:
        return noted("drain", contender, "first_ms")

    def noted(pattern: str, contender: str, key: str) -> float | None:
        found = best.get((pattern, contender))
        return round(found.extra[key], 1) if found and key in found.extra else None

    summary: dict[str, Any] = {
        "accept_vs_postfix_sqlite": ratio("accept-http", "sqlite"),
        "accept_vs_postfix_postgres": ratio("accept-http", "postgres"),
        "smtp_accept_vs_postfix_sqlite": ratio("accept-smtp", "sqlite"),
        "smtp_accept_vs_postfix_postgres": ratio("accept-smtp", "postgres"),
        "drain_vs_postfix": ratio("drain", "sqlite"),
        "drain_vs_postfix_postgres": ratio("drain", "postgres"),
        "sqlite_vs_postfix": ratio("e2e", "sqlite"),
        "postgres_vs_postfix": ratio("e2e", "postgres"),
        "sqlite_accept_msgs_per_s": e2e_accept("sqlite"),
        "sqlite_delivered_msgs_per_s": rate("e2e", "sqlite"),
        "postgres_accept_msgs_per_s": e2e_accept("postgres"),
        "postgres_delivered_msgs_per_s": rate("e2e", "postgres"),
        "postfix_msgs_per_s": rate("e2e", "postfix"),
        "postfix_accept_msgs_per_s": e2e_accept("postfix"),
        "http_accept_msgs_per_s": {name: rate("accept-http", name) for name in ("sqlite", "postgres")},
        "smtp_accept_msgs_per_s": {name: rate("accept-smtp", name) for name in ("sqlite", "postgres", "postfix")},
        "drain_msgs_per_s": {name: rate("drain", name) for name in ("sqlite", "postgres", "postfix")},
        "drain_first_delivery_ms": {name: first_ms(name) for name in ("sqlite", "postgres", "postfix")},
        "drain_steady_msgs_per_s": {name: noted("drain", name, "steady") for name in ("sqlite", "postgres", "postfix")},
        # After accepting for a dead upstream, the gateways try every message once (and log each failure):
        # seconds from the last answer to the last attempt, and log lines per message accepted for it.
        "dead_upstream_attempted_s": {name: noted("accept-smtp", name, "attempted_s") for name in ("sqlite", "postgres")},
        "dead_upstream_log_lines_per_msg": {
            name: round(bench.log_lines.get(name, 0) / count, 2) for name, count in bench.dead_enqueued.items() if count
        },
        "cpu_ms_per_msg": {
            pattern: {
                name: round(min(m.cpu_ms or 0.0 for m in results[pattern, name]), 3)
                for name in PATTERNS[pattern]
                if (pattern, name) in results
            }
            for pattern in PATTERNS
        },
        # The shared upstream's CPU per message delivered (CPU it competes with the contenders for).
        "upstream_cpu_ms_per_msg": {
            pattern: {
                name: round(min(m.upstream_cpu_ms or 0.0 for m in results[pattern, name]), 3)
                for name in PATTERNS[pattern]
                if (pattern, name) in results
            }
            for pattern in ("e2e", "drain")
        },
        "upstream": bench.upstream_kind,
        "postgres": bench.postgres_note or "ok",
        "sessions": SESSIONS,
        "upstream_connections": CONNECTIONS,
        "message_bytes": MESSAGE_BYTES,
        "counts": {"accept": sizes.accept, "http_seconds": sizes.http_seconds, "e2e": sizes.e2e, "drain": sizes.drain},
        "target_vs_postfix": TARGET,
    }
    print(json.dumps(summary))
    return summary


def _exit_on_signal(number: int, frame: object) -> None:
    """SIGTERM or SIGHUP: unwind like an error, so every server started is stopped; a second signal cannot cut that short."""
    for ignored in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(ignored, signal.SIG_IGN)
    raise SystemExit(128 + number)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two short rounds (under 90 s)")
    parser.add_argument("--no-postgres", action="store_true", help="measure only SQLite and Postfix")
    parser.add_argument("--postfix-upstream", action="store_true", help="the Postfix smtpd + smtp-sink upstream, as without go")
    parser.add_argument("--profile", metavar="DIR", type=Path, help="run the gateways under cProfile; stats land in DIR")
    parser.add_argument(
        "--patterns", default=",".join(PATTERNS), help=f"comma-separated subset of {', '.join(PATTERNS)} (default: all)"
    )
    args = parser.parse_args(argv)
    patterns = [name.strip() for name in args.patterns.split(",") if name.strip()]
    unknown = set(patterns) - set(PATTERNS)
    if unknown or not patterns:
        parser.error(f"unknown patterns: {', '.join(sorted(unknown)) or '(none given)'}")
    sizes = QUICK if args.quick else FULL
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _exit_on_signal)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        bench = Bench(stack, postgres=not args.no_postgres, profile=args.profile, go_upstream=not args.postfix_upstream)
        print(f"setup took {time.monotonic() - started:.1f} s", file=sys.stderr)
        results = run(bench, sizes, patterns)
    print(f"took {time.monotonic() - started:.1f} s", file=sys.stderr)
    report(results, bench, sizes)


if __name__ == "__main__":
    main()
