"""The chart's PrometheusRule: off by default; when on, exactly the rule file that promtool
unit-tests (tests/prometheus/), changed only as the values ask."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.helm.helm import CHART, Helm, HelmError
from tests.prometheus.contracts import RULES
from tests.prometheus.server import binary

ENABLED = {"metrics": {"prometheusRule": {"enabled": True}}}


def _source_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def _prometheus_rule(helm: Helm, values: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [obj for obj in helm.render(values=values) if obj["kind"] == "PrometheusRule"]
    return rule


def test_no_prometheusrule_unless_enabled(helm_offline: Helm) -> None:
    assert not [obj for obj in helm_offline.render() if obj["kind"] == "PrometheusRule"]


def test_enabled_renders_the_tested_rule_file_unchanged(helm_offline: Helm, tmp_path: Path) -> None:
    rule = _prometheus_rule(helm_offline, ENABLED)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "mg-mailgate"
    assert rule["metadata"]["namespace"] == "mailgate"
    assert rule["spec"]["groups"] == _source_groups()

    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run([str(binary("promtool")), "check", "rules", str(rendered)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_labels_extra_rule_labels_and_disabled_alerts(helm_offline: Helm) -> None:
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "prom"},
                "additionalRuleLabels": {"team": "mail", "severity": "page"},
                "disabled": ["MailgateRateLimited", "MailgatePoolSaturated"],
            }
        }
    }
    rule = _prometheus_rule(helm_offline, values)
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "alerts"

    expected = []
    for group in _source_groups():
        kept = [r for r in group["rules"] if r["alert"] not in ("MailgateRateLimited", "MailgatePoolSaturated")]
        expected.append({**group, "rules": [{**r, "labels": {**r["labels"], "team": "mail", "severity": "page"}} for r in kept]})
    assert rule["spec"]["groups"] == expected


def test_schema_knows_every_alert_and_rejects_other_names(helm_offline: Helm) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    disabled = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["disabled"]
    assert disabled["items"]["enum"] == [r["alert"] for group in _source_groups() for r in group["rules"]]

    bad = {"metrics": {"prometheusRule": {"enabled": True, "disabled": ["MailgateUpstreamAuthFailng"]}}}
    with pytest.raises(HelmError, match="disabled"):
        helm_offline.render(values=bad)
    with pytest.raises(HelmError, match="labelz"):
        helm_offline.render(values={"metrics": {"prometheusRule": {"enabled": True, "labelz": {}}}})


def test_lint_strict_passes_with_the_prometheusrule(helm_offline: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(ENABLED))
    result = helm_offline.run("lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in result.stdout, result.stdout
