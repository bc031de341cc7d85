"""Faults end to end (issue 8): the apiserver restarts, a gateway is SIGKILLed mid-send, and secret hygiene.

Everything is real: the session's kube-apiserver, the operator and gateways as
processes, aiosmtpd upstreams. Load loops are bounded in count and time.
"""

from __future__ import annotations

import base64
import email
import json
import secrets
import smtplib
import ssl
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.client import HTTPException
from typing import Any

from tests.k8s.cluster import free_ports
from tests.k8s.operator.harness import Answer, GatewayProcess, Mesh, eventually, exchange, http
from tests.smtp_servers import Received, TestCA, Upstream


@dataclass(frozen=True)
class Request:
    """One request of a load and what came of it."""

    tag: str  # its Subject: how the upstream's copy is matched to it
    result: int | str  # the status code, or the name of what cut the request short
    body: Any = None


def _cut_short(error: OSError | HTTPException) -> str:
    """Name what ended a request without an answer (urllib wraps a refused connection in a URLError)."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return type(error.reason).__name__
    return type(error).__name__


class Load:
    """Client threads that send through one gateway until stopped (at most ``limit`` requests each, 60 s).

    Each request carries a tag of its own as its Subject, so what the upstream
    received can be matched, message by message, with what each request was told.
    """

    def __init__(self, name: str, send: Callable[[str], tuple[int, Any]], clients: int = 2, limit: int = 400) -> None:
        self.name = name
        self.requests: list[Request] = []
        self._send = send
        self._limit = limit
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(worker,)) for worker in range(clients)]

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + 60
        for number in range(self._limit):
            if self._stop.wait(0.01) or time.monotonic() > deadline:  # pacing, not synchronisation
                return
            tag = f"{self.name}-{worker}-{number}"
            try:
                code, body = self._send(tag)
            except (OSError, HTTPException) as error:  # refused, reset or cut short: the gateway is gone
                self.requests.append(Request(tag, _cut_short(error)))
                return
            self.requests.append(Request(tag, code, body))

    def count(self) -> int:
        return len(self.requests)

    def results(self) -> list[str]:
        """The distinct results, for assertion messages."""
        return sorted({str(request.result) for request in self.requests})

    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


# --------------------------------------------------------------------------- delivered == acknowledged

NEVER_ARRIVED = "ConnectionRefusedError"  # the request never reached a gateway: nothing can have been sent
MAYBE_DELIVERED = {"delivery-unknown", "upstream-timeout"}  # the gateway's own "the upstream may have it"


def _slug(body: Any) -> str:
    return str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else ""


def _promise(request: Request) -> str:
    """What the answer told the client: "sent" (200), "unknown" (cut short, or "may have been delivered"), "not sent".

    Every other answer (503 "retry later", a refusal) says the upstream does not have the message.
    """
    if request.result == 200:
        return "sent"
    if request.result == NEVER_ARRIVED:
        return "not sent"
    if isinstance(request.result, str) or _slug(request.body) in MAYBE_DELIVERED:
        return "unknown"
    return "not sent"


def _subject(message: Received) -> str:
    return str(email.message_from_bytes(message.data)["Subject"])


def reconcile(upstream: Upstream, requests: list[Request]) -> dict[str, list[str]]:
    """Check every answer's promise against what the upstream received, and sort the unknowns by what happened.

    Returns the tags by ledger: "sent", "not sent", and the unknowns split
    into "unknown, delivered" and "unknown, not delivered".
    """
    received = Counter(_subject(message) for message in upstream.messages)
    ledger: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        ledger[_promise(request)].append(request.tag)
    assert not set(received) - {r.tag for r in requests}, "the upstream got messages nobody sent"
    assert not [tag for tag, copies in received.items() if copies > 1], "a message reached the upstream twice"
    assert not [tag for tag in ledger["sent"] if not received[tag]], "answered 200 but never delivered"
    assert not [tag for tag in ledger["not sent"] if received[tag]], "answered 'nothing sent' but delivered"
    ledger["unknown, delivered"] = [tag for tag in ledger["unknown"] if received[tag]]
    ledger["unknown, not delivered"] = [tag for tag in ledger["unknown"] if not received[tag]]
    return ledger


# --------------------------------------------------------------------------- apiserver restart


def _tokens_accepted(gateways: list[GatewayProcess], key: str, token: str, seen: list[int]) -> bool:
    """Whether every gateway sends for ``token`` now; every status answered is kept in ``seen``."""
    codes = [gateway.send(key, token=token, subject="after the restart")[0] for gateway in gateways]
    seen.extend(codes)
    return all(code == 200 for code in codes)


def test_the_operator_reconverges_after_an_apiserver_restart_and_loses_no_account(mesh: Mesh, upstream_factory) -> None:
    """The gateways check callers with TokenReviews: the data plane outlives the apiserver, new callers wait for it."""
    upstream = upstream_factory(users={"app": "pw"})
    gateways = [mesh.gateway(f"gw-{index}", index=index, token_review=True) for index in (1, 2)]
    operator = mesh.operator(resync=1.0)
    access = {"serviceAccounts": [f"{mesh.namespace}/sender"]}
    for name in ("kept", "changed"):
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
        mesh.apply_account(name, upstream, pool={"maxConnections": 2}, access=access)
    for name in ("kept", "changed"):
        mesh.wait_condition(name, "Ready", "True")
    keys = [f"{mesh.namespace}/{name}" for name in ("kept", "changed")]
    operator_pid = operator.proc.pid  # type: ignore[union-attr]
    reviewed, unseen = mesh.caller_token(), mesh.caller_token()  # two tokens of the allowed ServiceAccount
    for gateway in gateways:  # each gateway reviews ``reviewed`` now and caches the verdict (60 s)
        assert gateway.send(keys[0], token=reviewed)[0] == 200
        assert gateway.send(keys[0], token="not-a-token")[0] == 401  # callers really are checked

    missing: list[str] = []
    with Load("kept", lambda tag: gateways[0].send(keys[0], token=reviewed, subject=tag), clients=1, limit=5000) as load:
        upstream.wait_messages(3)
        control_plane_pids = mesh.cp.pids
        with mesh.cp.apiserver_stopped():
            during = {gateway.name: gateway.post(keys[1], token=unseen) for gateway in gateways}
            cached = {gateway.name: gateway.post(keys[1], token=reviewed) for gateway in gateways}
            for gateway in gateways:  # the data plane never needed the apiserver: nothing was dropped meanwhile
                missing += [f"{gateway.name}:{key}" for key in keys if gateway.account(key) is None]
            sent_during = load.count()
            eventually(lambda: load.count() > sent_during + 3, "sends while the apiserver is away")
        assert mesh.cp.pids != control_plane_pids and len(mesh.cp.pids) == len(control_plane_pids)
        sent_before = load.count()
        eventually(lambda: load.count() > sent_before + 3, "sends after the restart")
    assert not missing, missing
    assert load.requests and load.results() == ["200"], load.results()
    # a token no gateway has seen cannot be checked: "retry later", never a false 401
    verdicts = {name: (answer.status, _slug(answer.body)) for name, answer in during.items()}
    assert verdicts == dict.fromkeys(during, (503, "auth-unavailable")), during
    assert all(answer.headers.get("Retry-After") for answer in during.values()), during
    assert {name: answer.status for name, answer in cached.items()} == dict.fromkeys(cached, 200), cached
    seen: list[int] = []
    eventually(partial(_tokens_accepted, gateways, keys[1], unseen, seen), "the unseen token to work after the restart")
    assert 401 not in seen and 403 not in seen, seen
    assert _tokens_accepted(gateways, keys[1], mesh.caller_token(), seen), seen  # a token minted after the restart

    mesh.secret("fresh-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("fresh", upstream, access=access)
    mesh.patch_account("changed", {"pool": {"maxConnections": 4}})
    mesh.wait_condition("fresh", "Ready", "True", generation=1, timeout=60)
    mesh.wait_condition("changed", "Synced", "True", generation=2, timeout=60)
    mesh.wait_served(f"{mesh.namespace}/changed", lambda r: r["pool"]["maxConnections"] == 2, "the new split [2, 2]")
    mesh.wait_served(f"{mesh.namespace}/fresh", lambda r: True, "the new account on every gateway")
    assert operator.proc is not None and operator.proc.pid == operator_pid, "the operator must survive, not restart"
    for name in ("kept", "changed", "fresh"):
        assert mesh.condition(name, "Ready")["status"] == "True"  # type: ignore[index]
        for gateway in gateways:
            code, body = gateway.send(f"{mesh.namespace}/{name}", token=reviewed)
            assert code == 200, (gateway.name, name, body)
    mesh.cp.wait_for_service_account(mesh.namespace)  # the shared control plane answers as before


# --------------------------------------------------------------------------- a gateway SIGKILLed mid-send


def _connections(report: dict[str, Any] | None) -> int:
    """The connection share a gateway serves an account with (0: not there, or forwarding)."""
    return report["pool"]["maxConnections"] if report and report["pool"] else 0


def _held_of(upstream: Upstream, prefix: str) -> list[str]:
    """Tags of the messages the upstream holds the reply to, sent by the load named ``prefix``."""
    return [tag for tag in map(_subject, list(upstream.held)) if tag.startswith(f"{prefix}-")]


def test_a_gateway_killed_mid_send_acknowledged_exactly_what_the_upstream_received(mesh: Mesh, upstream_factory) -> None:
    """SIGKILL while the upstream holds one of the victim's messages; then delivered == acknowledged.

    Every 200 (both gateways) is in the upstream exactly once, no "nothing
    sent" answer is, and the request the upstream held at the kill is cut
    short, delivered, and accounted as "delivery unknown".
    """
    upstream = upstream_factory(users={"app": "pw"})
    survivor = mesh.gateway("gw-1", index=1)
    victim = mesh.gateway("gw-2", index=2)
    operator = mesh.operator(resync=1.0)
    mesh.secret("busy-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("busy", upstream, pool={"maxConnections": 2})
    key = f"{mesh.namespace}/busy"
    mesh.wait_condition("busy", "Ready", "True")
    full_pushes = operator.metric("mailgate_operator_push_duration_seconds_count", kind="full")

    steady_load = Load("steady", lambda tag: survivor.send(key, subject=tag))
    doomed_load = Load("doomed", lambda tag: victim.send(key, subject=tag))
    with steady_load as steady, doomed_load as doomed:
        eventually(lambda: steady.count() >= 5 and doomed.count() >= 5, "both gateways under load")
        upstream.hold_replies()  # messages go in, their verdicts wait: sends stay in flight
        in_flight = eventually(partial(_held_of, upstream, "doomed"), "the upstream to hold a message of the victim's")
        victim.kill()  # SIGKILL mid-send: no drain, no goodbye
        upstream.release_replies()
        eventually(doomed.finished, "the victim's clients to notice")
        mesh.set_ready("gw-2", False)  # what the kubelet reports next; then the ReplicaSet makes a new pod
        mesh.cp.delete_pod(mesh.gateway_namespace, "gw-2")
        mesh.gateways.pop("gw-2")
        replacement = mesh.gateway("gw-3", index=3, ready=False)
        eventually(replacement.ready, "the replacement to get its snapshot and turn ready", timeout=30)
        assert replacement.account(key) is not None
        mesh.set_ready("gw-3", True)
        eventually(lambda: [_connections(g.account(key)) for g in (survivor, replacement)] == [1, 1],
                   "the split [1, 1] over the survivor and the replacement")  # fmt: skip
        sent = steady.count()
        eventually(lambda: steady.count() > sent + 3, "the survivor still sending after the replacement")
    code, body = replacement.send(key, subject="replacement-0")
    assert code == 200, body

    ledger = reconcile(upstream, [*steady.requests, *doomed.requests, Request("replacement-0", code, body)])
    cut_short = {r.tag: r.result for r in doomed.requests if isinstance(r.result, str)}
    assert set(in_flight) <= set(cut_short), (in_flight, cut_short)  # the kill, not an answer, ended them
    assert set(in_flight) <= set(ledger["unknown, delivered"]), (in_flight, dict(ledger))
    assert steady.results() == ["200"], steady.results()  # the survivor never failed a request
    assert any(r.result == 200 for r in doomed.requests), doomed.results()
    assert operator.metric("mailgate_operator_push_duration_seconds_count", kind="full") > full_pushes
    mesh.wait_condition("busy", "Ready", "True")
    eventually(lambda: (mesh.account("busy") or {})["status"]["gateways"]["total"] == 2, "status to count 2 gateways")


# --------------------------------------------------------------------------- secret hygiene


def _sentinel(kind: str) -> str:
    return f"SENTINEL-{kind}-{secrets.token_hex(8)}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _forms(secret: str) -> set[str]:
    """The secret, and what it looks like inside any base64 text (a Secret's data, an AUTH PLAIN or XOAUTH2 line).

    Base64 of a longer text shows the secret in one of three alignments; the
    4-character groups made of the secret's bytes alone are the same in every
    text of that alignment, so searching those three cores finds it anywhere.
    """
    forms = {secret}
    for offset in range(3):
        encoded = _b64("\0" * offset + secret)
        forms.add(encoded[4 if offset else 0 : 4 * ((offset + len(secret)) // 3)])
    return forms


def _token_forms(token: str) -> set[str]:
    """A ServiceAccount token (a JWT) as ``_forms`` finds it, and its signature alone (header and claims are not secret)."""
    return _forms(token) | {token.rsplit(".", 1)[-1]}


def _smtp_session(host: str, port: int, ca_pem: str, user: str, wrong: str, right: str, tag: str) -> tuple[bool, list[str]]:
    """One SMTP ingress session: STARTTLS, AUTH PLAIN with a wrong password (refused), AUTH LOGIN, one message.

    Returns whether the message was relayed, and every reply the gateway gave.
    """
    replies: list[str] = []

    def note(reply: tuple[int, bytes]) -> int:
        replies.append(f"{reply[0]} {reply[1].decode(errors='replace')}")
        return reply[0]

    with smtplib.SMTP(host, port, timeout=10) as client:  # the greeting says nothing of ours
        note(client.ehlo())
        note(client.starttls(context=ssl.create_default_context(cadata=ca_pem)))
        note(client.ehlo())
        note(client.docmd("AUTH", "PLAIN " + _b64(f"\0{user}\0{wrong}")))
        note(client.docmd("AUTH", "LOGIN " + _b64(user)))
        if note(client.docmd(_b64(right))) != 235:
            return False, replies
        note(client.mail("app@shop.example"))
        note(client.rcpt("rcpt@example.net"))
        message = f"From: app@shop.example\r\nTo: rcpt@example.net\r\nSubject: {tag}\r\n\r\nhello\r\n"
        return note(client.data(message.encode())) == 250, replies


def _answer_text(answers: list[Answer]) -> tuple[str, str]:
    """The bodies and the headers of HTTP answers, as text to search."""
    return json.dumps([a.body for a in answers]), json.dumps([a.headers for a in answers])


def test_no_secret_reaches_logs_metrics_status_events_or_errors(mesh: Mesh, upstream_factory, test_ca: TestCA) -> None:
    """Every credential, right and wrong, through every door; searched raw and in base64 wherever output goes."""
    upstream_secrets = {k: _sentinel(k) for k in ("pw", "badpw", "token", "badtoken")}
    right_pw, wrong_pw, right_token, wrong_token = upstream_secrets.values()
    smtp_pw, smtp_badpw, bad_admin = _sentinel("smtppw"), _sentinel("smtpbadpw"), _sentinel("admintoken")
    caller, intruder = mesh.caller_token(), mesh.caller_token("intruder")  # allowed, and not allowed on any account
    foreign = mesh.cp.token(mesh.namespace, "sender", audience="vault")  # a real token for another audience
    sentinels = {
        **upstream_secrets, "smtp client password": smtp_pw, "wrong smtp client password": smtp_badpw,
        "admin token": mesh.token, "wrong admin token": bad_admin,
    }  # fmt: skip
    forms = {name: _forms(secret) for name, secret in sentinels.items()}
    forms |= {name: _token_forms(jwt) for name, jwt in (("caller", caller), ("intruder", intruder), ("foreign", foreign))}
    every_form: set[str] = set().union(*forms.values())
    wire = [f"\0alice\0{right_pw}", f"user=bob\x01auth=Bearer {right_token}\x01\x01", smtp_pw, f"\0login\0{smtp_badpw}"]
    assert all(any(form in _b64(line) for form in every_form) for line in wire), "the search must see secrets inside base64"

    password_host = upstream_factory(tls="starttls", users={"alice": right_pw})
    token_host = upstream_factory(tls="implicit", tokens={"bob": right_token})
    ips = [mesh.ip(index) for index in (1, 2)]
    smtp_port = free_ports(1)[0]
    ingress_cert = test_ca.ca.issue_cert(*ips)
    cert_file, key_file = mesh.workdir / "ingress.crt", mesh.workdir / "ingress.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in ingress_cert.cert_chain_pems))
    ingress_cert.private_key_pem.write_to_path(str(key_file))
    debug = ("--log-level", "debug")  # the most a log can say
    ingress = ("--smtp-port", str(smtp_port), "--smtp-tls-cert", str(cert_file), "--smtp-tls-key", str(key_file))
    gateways = [
        mesh.gateway(f"gw-{index}", index=index, token_review=True, extra_args=(*debug, *ingress, "--smtp-host", ip))
        for index, ip in zip((1, 2), ips, strict=True)
    ]
    operator = mesh.operator("--standalone", *debug)
    tls = {"host": "127.0.0.1", "caCertificate": test_ca.ca_pem}
    access = {"serviceAccounts": [f"{mesh.namespace}/sender"]}
    mesh.secret("pw-smtp", {"username": "alice", "password": wrong_pw})
    mesh.secret("pw-login", {"username": "app-login", "password": smtp_pw})
    mesh.apply_account("pw", password_host, server={**tls, "port": password_host.port, "tls": "starttls"},
                       access={**access, "smtpClients": [{"secretRef": {"name": "pw-login"}}]})  # fmt: skip
    mesh.secret("tok-smtp", {"username": "bob", "token": wrong_token})
    mesh.apply_account("tok", token_host, server={**tls, "port": token_host.port, "tls": "implicit"},
                       auth={"method": "xoauth2", "secretRef": {"name": "tok-smtp"}}, access=access)  # fmt: skip
    keys = {name: f"{mesh.namespace}/{name}" for name in ("pw", "tok")}
    answers: list[Answer] = []  # every send API answer, with its headers
    failing: dict[str, str] = {}  # each SmtpAccount while its upstream refused the login

    def send(gateway: GatewayProcess, name: str, expect: set[int]) -> None:
        answer = gateway.post(keys[name], token=caller)
        answers.append(answer)
        assert answer.status in expect, answer

    def sends_everywhere(name: str) -> bool:
        batch = [gateway.post(keys[name], token=caller) for gateway in gateways]
        answers.extend(batch)  # refusals until the rotation arrives
        return all(answer.status == 200 for answer in batch)

    # 1. wrong credentials: the upstreams refuse AUTH, errors flow to clients, status and Events
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "Synced", "True")
        for gateway in gateways:
            send(gateway, name, {502, 503})
        mesh.wait_condition(name, "UpstreamHealthy", "False", "UpstreamError")
        failing[name] = json.dumps(mesh.account(name))
    assert {login[2] for login in password_host.counters.logins} == {wrong_pw}  # the refusals really happened
    assert {login[2] for login in token_host.counters.logins} == {wrong_token}

    # 2. a rotation to the right credentials: mail flows, over HTTP and over the SMTP ingress
    mesh.secret("pw-smtp", {"username": "alice", "password": right_pw})
    mesh.secret("tok-smtp", {"username": "bob", "token": right_token})
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "CredentialsResolved", "True")
        eventually(partial(sends_everywhere, name), f"{name} to send through every gateway")
    password_host.wait_messages(2)
    token_host.wait_messages(2)
    smtp_replies: list[str] = []

    def relays_over_smtp(gateway: GatewayProcess) -> bool:
        relayed, replies = _smtp_session(gateway.ip, smtp_port, test_ca.ca_pem, "app-login", smtp_badpw, smtp_pw, gateway.name)
        smtp_replies.extend(replies)
        return relayed

    for gateway in gateways:
        eventually(partial(relays_over_smtp, gateway), f"a login and a message through {gateway.name}'s SMTP ingress")
    assert {_subject(message) for message in password_host.messages} >= {"gw-1", "gw-2"}

    # 3. a missing key: reported, the last good credentials still served; callers who may not send
    mesh.secret("pw-smtp", {"username": "alice", "pasword": right_pw})
    mesh.secret("tok-smtp", {"username": "bob", "tokne": right_token})
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "CredentialsResolved", "False", "KeyMissing")
        send(gateways[0], name, {200})
    answers.append(gateways[0].post(f"{mesh.namespace}/nope", token=caller))
    refused = [gateways[0].post(keys["pw"], token=token) for token in (intruder, foreign, None)]
    answers.extend(refused)
    assert [answer.status for answer in (answers[-4], *refused)] == [404, 403, 401, 401], answers[-4:]
    eventually(lambda: any(e["reason"] == "KeyMissing" for e in mesh.events("pw")), "a KeyMissing Event")

    # 4. the admin API, with the right token and a wrong one
    admin: list[Answer] = []
    for gateway in gateways:
        url = f"http://{gateway.ip}:{mesh.admin_port}"
        admin += [exchange("GET", f"{url}/v1/status", token=token) for token in (mesh.token, bad_admin, None)]
        admin.append(exchange("PUT", f"{url}/v1/config", {"revision": 1, "accounts": {}}, token=bad_admin))
    assert [answer.status for answer in admin] == [200, 401, 401, 401] * len(gateways), admin

    # 5. gather every place a secret could leak to
    material: dict[str, str] = {}
    for gateway in gateways:
        material[f"{gateway.name} /metrics"] = str(http("GET", f"{gateway.send_url}/metrics")[1])
        material[f"{gateway.name} /v1/status"] = json.dumps(gateway.status())
    material["operator /metrics"] = str(http("GET", f"http://127.0.0.1:{operator.metrics_port}/metrics")[1])
    material["SmtpAccounts refused"] = json.dumps(failing)
    material["SmtpAccounts"] = mesh.cp.kubectl("get", "smtpaccounts", "-n", mesh.namespace, "-o", "json").stdout
    events = {ns: mesh.cp.kubectl_json("get", "events", "-n", ns)["items"] for ns in (mesh.namespace, mesh.gateway_namespace)}
    material["Events"] = json.dumps(events)
    material["send API bodies"], material["send API headers"] = _answer_text(answers)
    material["admin API bodies"], material["admin API headers"] = _answer_text(admin)
    material["SMTP replies"] = "\n".join(smtp_replies)
    mesh.close()  # flush and end every process, so the logs are complete
    for log in (*(gateway.log_path for gateway in gateways), operator.log_path):
        material[f"log {log.name}"] = log.read_text(errors="replace")

    # never vacuous: each source says something, and the search does find a secret where one belongs
    assert all(text.strip() for text in material.values()), [name for name, text in material.items() if not text.strip()]
    assert all(len(material[f"log {g.name}.log"].splitlines()) >= 5 for g in gateways)
    assert "mailgate_" in material["gw-1 /metrics"] and "mailgate_operator" in material["operator /metrics"]
    assert all(key in material["gw-1 /v1/status"] for key in keys.values())
    reasons = sorted({(e["involvedObject"]["name"], e["reason"]) for e in events[mesh.namespace]})
    assert {("pw", "KeyMissing"), ("tok", "KeyMissing")} <= set(reasons), reasons
    assert material["SmtpAccounts refused"].count("UpstreamError") >= 2 and "KeyMissing" in material["SmtpAccounts"]
    problems = [answer.body for answer in answers if answer.status >= 400]
    assert len(problems) >= 8 and "535" in json.dumps(problems)  # the refusal is explained, without the secret
    assert "X-Request-Id" in material["send API headers"] and "WWW-Authenticate" in material["send API headers"]
    assert all(code in material["SMTP replies"] for code in ("535 ", "235 ", "250 ")), material["SMTP replies"]
    stored = mesh.cp.kubectl("get", "secret", "tok-smtp", "-n", mesh.namespace, "-o", "json").stdout
    assert any(form in stored for form in every_form), "the search must recognise a secret as the apiserver stores it"
    leaks = sorted(
        {(place, secret) for place, text in material.items() for secret, found in forms.items() if any(f in text for f in found)}
    )
    assert not leaks, leaks
