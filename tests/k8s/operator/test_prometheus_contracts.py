"""The chart's Grafana dashboard and alert rules against a real Prometheus (issue 19).

Real parts: the session's kube-apiserver; the operator and a gateway as processes (the Mesh
harness); a `mailgate serve` process; Debian's `prometheus` scraping all three every second,
with the target labels the chart's ServiceMonitors give (``namespace``, ``pod``) and the
chart's rule file loaded; aiosmtpd upstreams and the test token endpoint.

A little traffic makes every series the queries read exist: sends that go out, one whose
credentials the upstream refuses, one over the account's rate limit, an OAuth2 account whose
token is issued and pushed to the gateway, OAuth2 accounts whose client secret the token
endpoint refuses and whose token endpoint does not answer (asked by the operator, and by the
standalone gateway), and a gateway Pod that does not answer (the operator's pushes to it fail).

Then every dashboard query (templating variables included) and every alert expression must
return data; tests/prometheus/contracts.py says how that is judged: each selector alone,
the labels it groups, joins and names legends by, and the expression with its thresholds made
``bool`` comparisons. Typos in a metric name, a label name and a label value are shown to fail
the same checks, and Prometheus must evaluate every rule without an error.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.operator.harness import GATEWAY_LABELS, Mesh, eventually, http
from tests.k8s.operator.test_oauth2_e2e import oauth2_spec
from tests.oauth2_server import TokenServer
from tests.prometheus.contracts import RULES, Query, alert_problems, alert_rules, dashboard_queries, query_problems
from tests.prometheus.server import Prometheus, Target
from tests.smtp_servers import TestCA, Upstream, _free_port
from tests.standalone.support import ServeProcess, start_serve

pytestmark = pytest.mark.k8s

MAILBOX = "alerts@shop.example"
REFUSED_MAILBOX = "reports@shop.example"
CLIENT_SECRET = f"client-secret-{secrets.token_hex(8)}"

# Each must fail the checks the real queries pass: the checks can tell a typo from a working query.
TYPOS = [
    Query("metric name", "sum(rate(mailgate_mesages_total[1m]))"),
    Query("label name in a matcher", 'sum(rate(mailgate_messages_total{acount=~".+"}[1m]))'),
    Query("label value", 'sum(mailgate_messages_total{outcome="upstream-auth-faild"})'),
    Query("label name in by()", "sum by (acount) (mailgate_messages_total)"),
    Query("label name in a legend", "sum by (account) (mailgate_messages_total)", "{{acount}}"),
]
TYPO_ALERT = "min by (namespace, acount) (mailgate_upstream_healthy) == 0"


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    """Client ``app`` may send as MAILBOX and REFUSED_MAILBOX, with CLIENT_SECRET only."""
    with TokenServer(lifetime=3600) as server:
        server.add_client("app", secret=CLIENT_SECRET, mailboxes=[MAILBOX, REFUSED_MAILBOX])
        yield server


def _unreachable(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a token URL where nothing listens: every token request fails as unavailable."""
    spec["auth"]["oauth2"]["tokenUrl"] = f"https://127.0.0.1:{_free_port()}/contoso/oauth2/v2.0/token"
    return spec


@pytest.fixture
def standalone(tmp_path: Path, oauth2_upstream: Upstream, test_ca: TestCA, token_server: TokenServer) -> Iterator[ServeProcess]:
    """`mailgate serve` with two OAuth2 accounts: the token endpoint refuses one's client secret, the other's is unreachable."""
    accounts = {
        "reports": oauth2_spec(oauth2_upstream, test_ca, token_server, "reports-oauth2", "app", REFUSED_MAILBOX),
        "outage": _unreachable(
            oauth2_spec(oauth2_upstream, test_ca, token_server, "outage-oauth2", "app", "outage@shop.example")
        ),
    }
    documents: list[dict[str, Any]] = []
    for name, spec in accounts.items():
        documents += [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-oauth2", "namespace": "edge"},
             "stringData": {"clientSecret": "not-the-secret"}},
            {"apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount",
             "metadata": {"name": name, "namespace": "edge"}, "spec": spec},
        ]  # fmt: skip
    path = tmp_path / "accounts.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    serve = start_serve(tmp_path, "-f", str(path), "--insecure-no-auth")
    try:
        eventually(lambda: _answers(f"{serve.url}/readyz"), "mailgate serve to be ready", timeout=30)
        yield serve
    finally:
        serve.stop()


@pytest.fixture
def oauth2_upstream(upstream_factory, token_server: TokenServer) -> Upstream:
    return upstream_factory(tls="starttls", token_check=token_server.is_valid)


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=1)[0] == 200
    except OSError:
        return False


def test_every_dashboard_query_and_alert_expression_finds_data(
    mesh: Mesh, upstream_factory, oauth2_upstream: Upstream, test_ca: TestCA, token_server: TokenServer,
    standalone: ServeProcess, tmp_path: Path,
) -> None:  # fmt: skip
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator("--standalone", "--advertise-address", "127.0.0.1")
    target_labels = {"namespace": mesh.gateway_namespace}
    jobs = {
        "mailgate": [Target(f"{gateway.ip}:{gateway.send_port}", {**target_labels, "pod": gateway.name})],
        "mailgate-operator": [Target(f"127.0.0.1:{operator.metrics_port}", {**target_labels, "pod": "operator-0"})],
        "mailgate-standalone": [Target(f"127.0.0.1:{standalone.port}", {"namespace": "edge", "pod": "serve"})],
    }
    with Prometheus(tmp_path / "prometheus", jobs, [RULES]) as prometheus:
        _drive_traffic(mesh, upstream, oauth2_upstream, test_ca, token_server)
        _credentials_refused_twice_make_the_alert_pending(mesh, prometheus)

        variables = {"namespace": mesh.gateway_namespace, "account": ".*", "__rate_interval": "1m"}
        queries = dashboard_queries(variables)
        rules = alert_rules()
        assert len(queries) >= 12 and len(rules) >= 9

        def problems() -> list[str]:
            found = [problem for query in queries for problem in query_problems(prometheus, query)]
            return found + [problem for name, expr in rules.items() for problem in alert_problems(prometheus, name, expr)]

        # Scrapes, rates and rule evaluations need a few seconds of samples: poll until settled.
        deadline = time.monotonic() + 60
        while (left := problems()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, "queries that find no data:\n" + "\n".join(left)

        for typo in TYPOS:
            assert query_problems(prometheus, typo), f"a typo in a {typo.where} went unnoticed: {typo.expr}"
        assert alert_problems(prometheus, "typo", TYPO_ALERT), "a typo in an alert's by() went unnoticed"

        evaluated = {rule["name"]: rule for rule in prometheus.rules()}
        assert evaluated.keys() == rules.keys()
        assert all(rule["health"] == "ok" for rule in evaluated.values()), {
            name: rule.get("lastError") for name, rule in evaluated.items() if rule["health"] != "ok"
        }


def _drive_traffic(mesh: Mesh, upstream: Upstream, oauth2_upstream: Upstream, ca: TestCA, server: TokenServer) -> None:
    """Accounts and sends that make every series the dashboard and the alerts read exist."""
    gateway = mesh.gateways["gw-1"]
    mesh.secret("billing-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("billing", upstream, rateLimit={"messagesPerMinute": 1})
    mesh.secret("broken-smtp", {"username": "app", "password": "not-the-password"})
    mesh.apply_account("broken", upstream)
    mesh.secret("alerts-oauth2", {"clientSecret": CLIENT_SECRET})
    mesh.apply_account("alerts", oauth2_upstream, **oauth2_spec(oauth2_upstream, ca, server, "alerts-oauth2", "app", MAILBOX))
    mesh.secret("refused-oauth2", {"clientSecret": "not-the-secret"})
    mesh.apply_account(
        "refused", oauth2_upstream, **oauth2_spec(oauth2_upstream, ca, server, "refused-oauth2", "app", REFUSED_MAILBOX)
    )
    mesh.secret("outage-oauth2", {"clientSecret": CLIENT_SECRET})
    outage = _unreachable(oauth2_spec(oauth2_upstream, ca, server, "outage-oauth2", "app", "outage@shop.example"))
    mesh.apply_account("outage", oauth2_upstream, **outage)
    for name in ("billing", "broken", "alerts"):
        mesh.wait_served(f"{mesh.namespace}/{name}", lambda report: True, f"gw-1 to serve {name}", timeout=30)

    billing, alerts = f"{mesh.namespace}/billing", f"{mesh.namespace}/alerts"
    assert gateway.post(billing).status == 200
    eventually(lambda: gateway.post(billing).status == 429, "a send over billing's rate limit of one a minute")
    eventually(lambda: gateway.post(alerts, **{"from": MAILBOX}).status == 200, "a send with the pushed OAuth2 token")
    operator = mesh.operators[0]

    def requested(outcome: str) -> bool:
        return operator.metric("mailgate_operator_oauth2_token_requests_total", outcome=outcome) > 0

    for outcome in ("refused", "unavailable"):
        eventually(functools.partial(requested, outcome), f"an operator token request to end {outcome}")
    # A gateway Pod nobody answers for: the operator's pushes to it fail.
    mesh.cp.register_pod(mesh.gateway_namespace, "gw-ghost", mesh.ip(9), GATEWAY_LABELS, ready=True)
    eventually(lambda: operator.metric("mailgate_operator_push_failures_total") > 0, "a failed push to gw-ghost")


def _credentials_refused_twice_make_the_alert_pending(mesh: Mesh, prometheus: Prometheus) -> None:
    """Two refused sends with a scrape between them: the credentials alert reacts to the real failure."""
    gateway = mesh.gateways["gw-1"]
    broken = f"{mesh.namespace}/broken"
    selector = f'mailgate_messages_total{{account="{broken}", outcome="upstream-auth-failed"}}'

    def refused() -> None:
        answer = gateway.post(broken)
        assert answer.status == 503 and answer.body["type"].endswith("/upstream-auth-failed"), answer

    refused()
    eventually(lambda: prometheus.query(selector), "Prometheus to scrape the first refusal")
    refused()

    def pending() -> bool:
        return any(
            alert["labels"]["alertname"] == "MailgateUpstreamAuthFailing" and alert["labels"]["account"] == broken
            and alert["labels"]["namespace"] == mesh.gateway_namespace
            for alert in prometheus.alerts()
        )  # fmt: skip

    eventually(pending, "MailgateUpstreamAuthFailing to be pending for account broken")
