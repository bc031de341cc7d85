"""The chart's dashboard and alert rules, checked against a live Prometheus: every query must find data.

"Finds data" is checked at three levels, so that a misspelt metric name, label name or
label value fails instead of drawing an empty panel or an alert that can never fire:

1. every vector selector the expression reads, queried alone, returns at least one series
   (metric names, label names and values in matchers exist);
2. every label the expression groups or joins by (``by``, ``on``, ...) is carried by at least
   one of those series, and every ``{{label}}`` of a panel's legend by one of its results;
3. the expression itself returns at least one series. A panel query is evaluated as it is
   (Grafana's variables replaced). An alert expression is evaluated with each comparison made
   a ``bool`` comparison, so its threshold filters nothing and the result shows that the
   aggregations and joins around the threshold hold together; each operand of a top-level
   ``and``/``or``/``unless`` must return data on its own too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus import promql
from tests.prometheus.server import Prometheus, QueryError

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "charts" / "mailgate" / "dashboards" / "mailgate.json"
RULES = REPO_ROOT / "charts" / "mailgate" / "rules" / "mailgate-rules.yaml"

_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.DOTALL)
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Query:
    """One query of the dashboard: ``where`` names it in failure messages."""

    where: str
    expr: str
    legend: str = ""


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Grafana's ``$name``, ``${name}`` and ``[[name]]`` replaced; every variable must be given."""
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"[[{name}]]", value)
        expr = re.sub(rf"\${re.escape(name)}\b", value.replace("\\", "\\\\"), expr)
    if "$" in expr:
        raise ValueError(f"a Grafana variable was left in {expr!r}; give it a value")
    return expr


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found += _panels(panel.get("panels", []))
    return found


def dashboard_queries(variables: Mapping[str, str]) -> list[Query]:
    """The templating variables' queries (``label_values(selector, label)``) and every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries: list[Query] = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text.strip())
        assert match is not None, f"variable {variable['name']}: only label_values(selector, label) is understood: {text}"
        selector = substitute(match["selector"], variables)
        label = match["label"]
        queries.append(Query(f"variable {variable['name']}", f"group by ({label}) ({selector})", f"{{{{{label}}}}}"))
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target.get('refId', '?')}"
            queries.append(Query(where, substitute(target["expr"], variables), target.get("legendFormat", "")))
    return queries


def alert_rules() -> dict[str, str]:
    """Alert name -> expression, from the file the chart's PrometheusRule embeds."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"].strip() for group in groups for rule in group["rules"] if "alert" in rule}


def _evaluate(prometheus: Prometheus, where: str, expr: str) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        result = prometheus.query(expr)
    except QueryError as error:
        return [], [f"{where}: {error} in {expr}"]
    return result, [] if result else [f"{where}: no data for {expr}"]


def _selector_problems(prometheus: Prometheus, where: str, expr: str) -> list[str]:
    problems: list[str] = []
    carried: set[str] = set()
    for selector in promql.selectors(expr):
        result, found = _evaluate(prometheus, f"{where}: selector {selector}", selector)
        problems += found
        carried |= {label for series in result for label in series["metric"]}
    if not problems:
        problems += [
            f"{where}: groups or joins by {label!r}, which none of its series has"
            for label in sorted(promql.grouping_labels(expr) - carried)
        ]
    return problems


def query_problems(prometheus: Prometheus, query: Query) -> list[str]:
    """Why a dashboard query shows nothing (empty when it shows data)."""
    problems = _selector_problems(prometheus, query.where, query.expr)
    result, found = _evaluate(prometheus, query.where, query.expr)
    problems += found
    if result:
        labels = {label for series in result for label in series["metric"]}
        problems += [
            f"{query.where}: legend names {{{{{label}}}}}, which none of its results has"
            for label in _LEGEND_LABEL.findall(query.legend)
            if label not in labels
        ]
    return problems


def alert_problems(prometheus: Prometheus, name: str, expr: str) -> list[str]:
    """Why an alert expression could never find anything to alert on (empty when it finds data)."""
    where = f"alert {name}"
    problems = _selector_problems(prometheus, where, expr)
    parts = promql.operands(expr)
    if len(parts) > 1:
        for part in parts:
            problems += _evaluate(prometheus, f"{where}: operand", promql.without_thresholds(part))[1]
    problems += _evaluate(prometheus, f"{where} without its thresholds", promql.without_thresholds(expr))[1]
    return problems
