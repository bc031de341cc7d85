"""The PromQL lexing the live contract test relies on: which selectors, labels and operands it finds."""

from __future__ import annotations

import pytest

from tests.prometheus import promql

QUANTILE = (
    'histogram_quantile(0.99, sum by (le, account) (rate(mailgate_pool_wait_seconds_bucket{namespace="mail", '
    'account=~".*"}[1m]))) offset 5m'
)


def test_selectors_are_metric_names_with_their_matchers_not_functions_or_labels() -> None:
    assert promql.selectors(QUANTILE) == ['mailgate_pool_wait_seconds_bucket{namespace="mail", account=~".*"}']
    assert promql.selectors('up == 0 and on (instance) max_over_time(x[1h]) or {__name__=~"a"}') == [
        "up",
        "x",
        '{__name__=~"a"}',
    ]
    assert promql.selectors('count_values("v", sum(y) by (pod))') == ["y"]


def test_grouping_labels_come_from_every_kind_of_label_list() -> None:
    assert promql.grouping_labels(QUANTILE) == {"le", "account"}
    expr = "a * on (instance) group_left (pod) b + ignoring (le) c and without (job) d or sum(e) by (ns)"
    assert promql.grouping_labels(expr) == {"instance", "pod", "le", "job", "ns"}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(x) > 0", "sum(x) > bool 0"),
        ("a >= 1 or b == bool 0", "a >= bool 1 or b == bool 0"),
        ('x{a!="b", c=~"d"} != 2', 'x{a!="b", c=~"d"} != bool 2'),
    ],
)
def test_without_thresholds_makes_every_comparison_a_bool_one(expr: str, expected: str) -> None:
    assert promql.without_thresholds(expr) == expected


def test_operands_split_the_top_level_set_operators_only() -> None:
    expr = "(a or b) > 0\nor\nc == 0 and on (instance) d unless e"
    assert promql.operands(expr) == ["(a or b) > 0", "c == 0", "d", "e"]
    assert promql.operands("sum(x)") == ["sum(x)"]
