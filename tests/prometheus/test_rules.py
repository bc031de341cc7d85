"""The chart's alert rules: valid for promtool, unit-tested (a case where each alert fires and
one where it must not), and each with a runbook section in docs/operations.md.

That the expressions find real series is proven against a live Prometheus by
tests/k8s/operator/test_prometheus_contracts.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus.contracts import REPO_ROOT, RULES

UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")
OPERATIONS = REPO_ROOT / "docs" / "operations.md"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_rules_file_passes_promtool_check(promtool: Path) -> None:
    result = _promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    result = _promtool(promtool, "test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    unit_tests = yaml.safe_load(UNIT_TESTS.read_text())
    assert unit_tests["rule_files"] == [str(Path("..", "..", RULES.relative_to(REPO_ROOT)))]
    checks = [check for test in unit_tests["tests"] for check in test.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        own = [check for check in checks if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in own), f"no unit test where {name} fires"
        assert any(not check["exp_alerts"] for check in own), f"no unit test where {name} stays quiet"


def _sections(markdown: str) -> dict[str, str]:
    """Level-3 sections by heading."""
    parts = re.split(r"^### (.+)$", markdown, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_has_a_runbook_section_its_annotation_points_to() -> None:
    sections = _sections(OPERATIONS.read_text())
    for alert in _alerts():
        name = alert["alert"]
        assert name in sections, f"docs/operations.md has no section '### {name}'"
        for part in ("What it means", "What to check", "How to fix"):
            assert f"**{part}**" in sections[name], f"the runbook of {name} lacks **{part}**"
        assert alert["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= alert["annotations"].keys()


def test_operations_doc_is_linked_from_both_readmes_and_the_chart_lists_every_alert() -> None:
    assert "(docs/operations.md)" in (REPO_ROOT / "README.md").read_text()
    chart_readme = (REPO_ROOT / "charts" / "mailgate" / "README.md").read_text()
    assert "(../../docs/operations.md)" in chart_readme
    for alert in _alerts():
        name = alert["alert"]
        assert f"| [{name}](../../docs/operations.md#{name.lower()}) | {alert['labels']['severity']} |" in chart_readme
