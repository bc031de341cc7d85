"""Faults end to end (issue 8): the apiserver restarts, a gateway is SIGKILLed under load, and secret hygiene.

Everything is real: the session's kube-apiserver, the operator and gateways as
processes, aiosmtpd upstreams. Load loops are bounded in count and time.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable
from functools import partial
from http.client import HTTPException
from typing import Any

from tests.k8s.operator.harness import GatewayProcess, Mesh, eventually, http
from tests.smtp_servers import TestCA


class Load:
    """Client threads that send through one gateway until stopped (at most ``limit`` requests, 60 s each)."""

    def __init__(self, send: Callable[[], tuple[int, Any]], clients: int = 2, limit: int = 400) -> None:
        self.results: list[int | str] = []  # status codes, or the name of the exception a request raised
        self._send = send
        self._limit = limit
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        for _ in range(self._limit):
            if self._stop.wait(0.01) or time.monotonic() > deadline:  # pacing, not synchronisation
                return
            try:
                self.results.append(self._send()[0])
            except (OSError, HTTPException) as error:  # refused, reset or cut short: the gateway is gone
                self.results.append(type(error).__name__)
                return

    def count(self) -> int:
        return len(self.results)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


# --------------------------------------------------------------------------- apiserver restart


def test_the_operator_reconverges_after_an_apiserver_restart_and_loses_no_account(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    operator = mesh.operator(resync=1.0)
    for name in ("kept", "changed"):
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
        mesh.apply_account(name, upstream, pool={"maxConnections": 2})
    for name in ("kept", "changed"):
        mesh.wait_condition(name, "Ready", "True")
    keys = [f"{mesh.namespace}/{name}" for name in ("kept", "changed")]
    operator_pid = operator.proc.pid  # type: ignore[union-attr]

    missing: list[str] = []
    with Load(lambda: gateways[0].send(keys[0]), clients=1, limit=5000) as load:
        upstream.wait_messages(3)
        control_plane_pids = mesh.cp.pids
        mesh.cp.restart_apiserver()
        assert mesh.cp.pids != control_plane_pids and len(mesh.cp.pids) == len(control_plane_pids)
        for gateway in gateways:  # the data plane never needed the apiserver: nothing was dropped meanwhile
            missing += [f"{gateway.name}:{key}" for key in keys if gateway.account(key) is None]
        sent_before = load.count()
        eventually(lambda: load.count() > sent_before + 3, "sends after the restart")
    assert not missing, missing
    assert load.results and set(load.results) == {200}, sorted(set(map(str, load.results)))

    mesh.secret("fresh-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("fresh", upstream)
    mesh.patch_account("changed", {"pool": {"maxConnections": 4}})
    mesh.wait_condition("fresh", "Ready", "True", generation=1, timeout=60)
    mesh.wait_condition("changed", "Synced", "True", generation=2, timeout=60)
    mesh.wait_served(f"{mesh.namespace}/changed", lambda r: r["pool"]["max_connections"] == 2, "the new split [2, 2]")
    mesh.wait_served(f"{mesh.namespace}/fresh", lambda r: True, "the new account on every gateway")
    assert operator.proc is not None and operator.proc.pid == operator_pid, "the operator must survive, not restart"
    for name in ("kept", "changed", "fresh"):
        assert mesh.condition(name, "Ready")["status"] == "True"  # type: ignore[index]
        for gateway in gateways:
            code, body = gateway.send(f"{mesh.namespace}/{name}")
            assert code == 200, (gateway.name, name, body)
    mesh.cp.wait_for_service_account(mesh.namespace)  # the shared control plane answers as before


# --------------------------------------------------------------------------- a gateway SIGKILLed under load


def _connections(report: dict[str, Any] | None) -> int:
    """The connection share a gateway serves an account with (0: not there, or forwarding)."""
    return report["pool"]["max_connections"] if report and report["pool"] else 0


def test_a_gateway_killed_under_load_is_replaced_and_resynced(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    survivor = mesh.gateway("gw-1", index=1)
    victim = mesh.gateway("gw-2", index=2)
    operator = mesh.operator(resync=1.0)
    mesh.secret("busy-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("busy", upstream, pool={"maxConnections": 2})
    key = f"{mesh.namespace}/busy"
    mesh.wait_condition("busy", "Ready", "True")
    full_pushes = operator.metric("mailgate_operator_push_duration_seconds_count", kind="full")

    with Load(lambda: survivor.send(key)) as steady, Load(lambda: victim.send(key)) as doomed:
        eventually(lambda: steady.count() >= 5 and doomed.count() >= 5, "both gateways under load")
        victim.kill()  # SIGKILL mid-request: no drain, no goodbye
        eventually(lambda: any(isinstance(r, str) for r in doomed.results), "the victim's clients to notice")
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
    assert steady.results and set(steady.results) == {200}, sorted(set(map(str, steady.results)))
    assert 200 in doomed.results
    assert operator.metric("mailgate_operator_push_duration_seconds_count", kind="full") > full_pushes
    code, body = replacement.send(key)
    assert code == 200, body
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


def test_no_secret_reaches_logs_metrics_status_events_or_errors(mesh: Mesh, upstream_factory, test_ca: TestCA) -> None:
    right_pw, wrong_pw, right_token, wrong_token = (_sentinel(k) for k in ("pw", "badpw", "token", "badtoken"))
    forms: set[str] = set().union(*(_forms(secret) for secret in (right_pw, wrong_pw, right_token, wrong_token)))
    wire = [f"\0alice\0{right_pw}", f"user=bob\x01auth=Bearer {right_token}\x01\x01"]  # what AUTH PLAIN and XOAUTH2 send
    assert all(any(form in _b64(line) for form in forms) for line in wire), "the search must see secrets inside base64"
    password_host = upstream_factory(tls="starttls", users={"alice": right_pw})
    token_host = upstream_factory(tls="implicit", tokens={"bob": right_token})
    debug = ("--log-level", "debug")  # the most a log can say
    gateways = [mesh.gateway(f"gw-{index}", index=index, extra_args=debug) for index in (1, 2)]
    operator = mesh.operator("--standalone", *debug)
    tls = {"host": "127.0.0.1", "caCertificate": test_ca.ca_pem}
    mesh.secret("pw-smtp", {"username": "alice", "password": wrong_pw})
    mesh.apply_account("pw", password_host, server={**tls, "port": password_host.port, "tls": "starttls"})
    mesh.secret("tok-smtp", {"username": "bob", "token": wrong_token})
    mesh.apply_account("tok", token_host, server={**tls, "port": token_host.port, "tls": "implicit"},
                       auth={"method": "xoauth2", "secretRef": {"name": "tok-smtp"}})  # fmt: skip
    keys = {name: f"{mesh.namespace}/{name}" for name in ("pw", "tok")}
    problems: list[Any] = []
    failing: dict[str, str] = {}  # each SmtpAccount while its upstream refused the login

    def send(gateway: GatewayProcess, name: str, expect: set[int]) -> None:
        code, body = gateway.send(keys[name])
        assert code in expect, (code, body)
        if code >= 400:
            problems.append(body)

    def sends_everywhere(name: str) -> bool:
        answers = [gateway.send(keys[name]) for gateway in gateways]
        problems.extend(body for code, body in answers if code != 200)  # refusals until the rotation arrives
        return all(code == 200 for code, _ in answers)

    # 1. wrong credentials: the upstreams refuse AUTH, errors flow to clients, status and Events
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "Synced", "True")
        for gateway in gateways:
            send(gateway, name, {502, 503})
        mesh.wait_condition(name, "UpstreamHealthy", "False", "UpstreamError")
        failing[name] = json.dumps(mesh.account(name))
    assert {login[2] for login in password_host.counters.logins} == {wrong_pw}  # the refusals really happened
    assert {login[2] for login in token_host.counters.logins} == {wrong_token}

    # 2. a rotation to the right credentials: mail flows
    mesh.secret("pw-smtp", {"username": "alice", "password": right_pw})
    mesh.secret("tok-smtp", {"username": "bob", "token": right_token})
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "CredentialsResolved", "True")
        eventually(partial(sends_everywhere, name), f"{name} to send through every gateway")
    password_host.wait_messages(2)
    token_host.wait_messages(2)

    # 3. a missing key: reported, the last good credentials still served
    mesh.secret("pw-smtp", {"username": "alice", "pasword": right_pw})
    mesh.secret("tok-smtp", {"username": "bob", "tokne": right_token})
    for name in ("pw", "tok"):
        mesh.wait_condition(name, "CredentialsResolved", "False", "KeyMissing")
        send(gateways[0], name, {200})
    code, body = gateways[0].send(f"{mesh.namespace}/nope")
    assert code == 404, body
    problems.append(body)
    eventually(lambda: any(e["reason"] == "KeyMissing" for e in mesh.events("pw")), "a KeyMissing Event")

    # 4. gather every place a secret could leak to
    material: dict[str, str] = {}
    for gateway in gateways:
        material[f"{gateway.name} /metrics"] = str(http("GET", f"{gateway.send_url}/metrics")[1])
        material[f"{gateway.name} /v1/status"] = json.dumps(gateway.status())
    material["operator /metrics"] = str(http("GET", f"http://127.0.0.1:{operator.metrics_port}/metrics")[1])
    material["SmtpAccounts refused"] = json.dumps(failing)
    material["SmtpAccounts"] = mesh.cp.kubectl("get", "smtpaccounts", "-n", mesh.namespace, "-o", "json").stdout
    events = {ns: mesh.cp.kubectl_json("get", "events", "-n", ns)["items"] for ns in (mesh.namespace, mesh.gateway_namespace)}
    material["Events"] = json.dumps(events)
    material["problem bodies"] = json.dumps(problems)
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
    assert len(problems) >= 5 and "535" in material["problem bodies"]  # the refusal is explained, without the secret
    stored = mesh.cp.kubectl("get", "secret", "tok-smtp", "-n", mesh.namespace, "-o", "json").stdout
    assert any(form in stored for form in forms), "the search must recognise a secret as the apiserver stores it"
    leaks = sorted((name, form) for name, text in material.items() for form in forms if form in text)
    assert not leaks, leaks
