"""Duplicate sender claims reported by the gateways become a condition and Events: pure functions, no apiserver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailgate.operator.admin import parse_report
from mailgate.operator.conditions import (
    SHOWN_CONFLICTING_ACCOUNTS,
    SenderConflict,
    StatusInputs,
    build_status,
    conflict_index,
    sender_conflict_event,
    sender_conflicts,
)
from mailgate.operator.events import event_body
from mailgate.spec import Condition

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def inputs(*conflicts: SenderConflict) -> StatusInputs:
    """An account that is otherwise fine: synced on both gateways."""
    return StatusInputs(generation=1, pushed_generation=1, synced=2, total=2, sender_conflicts=conflicts)


def senders_unique(conditions: list[Condition]) -> Condition:
    return next(c for c in conditions if c.type == "SendersUnique")


def test_the_gateways_sender_conflicts_are_read_from_their_status() -> None:
    report = parse_report(
        {
            "revision": 3,
            "ready": True,
            "accounts": {
                "shop/billing": {"digest": "d1", "senderConflicts": ["billing@shop.example"]},
                "shop/legacy": {"digest": "d2"},  # an older gateway says nothing: no conflict
            },
        }
    )
    assert report.accounts["shop/billing"].sender_conflicts == ("billing@shop.example",)
    assert report.accounts["shop/legacy"].sender_conflicts == ()


def test_no_conflict_is_a_true_condition_and_no_event() -> None:
    status = build_status(inputs(), [], NOW)
    condition = senders_unique(status.conditions)
    assert (condition.status, condition.reason) == ("True", "Unique")
    assert sender_conflict_event([], status.conditions) is None


def test_a_conflict_names_pattern_and_other_account_and_leaves_ready_alone() -> None:
    conflict = SenderConflict("billing@shop.example", ("shop/invoices",))
    status = build_status(inputs(conflict), [], NOW)
    condition = senders_unique(status.conditions)
    assert (condition.status, condition.reason) == ("False", "SenderConflict")
    assert "billing@shop.example (also listed by shop/invoices)" in condition.message
    assert condition.observed_generation == 1
    # Sending by account name still works, so the account stays Ready.
    assert next(c for c in status.conditions if c.type == "Ready").status == "True"


def test_events_on_appearance_change_and_resolution_only() -> None:
    clean = build_status(inputs(), [], NOW).conditions
    one = build_status(inputs(SenderConflict("a@x.example")), clean, NOW).conditions
    same = build_status(inputs(SenderConflict("a@x.example")), one, NOW).conditions
    two = [SenderConflict("a@x.example"), SenderConflict("*@x.example", ("shop/other",))]
    more = build_status(inputs(*two), same, NOW + timedelta(minutes=1)).conditions
    fixed = build_status(inputs(), more, NOW + timedelta(minutes=2)).conditions

    appeared = sender_conflict_event(clean, one)
    assert appeared is not None and appeared[:2] == ("Warning", "SenderConflict") and "a@x.example" in appeared[2]
    assert sender_conflict_event(one, same) is None  # unchanged: no repeated Event on every status pass
    changed = sender_conflict_event(same, more)
    assert changed is not None and "*@x.example (also listed by shop/other)" in changed[2]
    assert senders_unique(more).last_transition_time == NOW  # still False: the transition time stays
    assert sender_conflict_event(more, fixed) == (
        "Normal", "SenderConflictResolved", "no other account lists these senders any more",
    )  # fmt: skip
    assert senders_unique(fixed).last_transition_time == NOW + timedelta(minutes=2)


def test_event_body_refers_to_the_account() -> None:
    ref = {
        "apiVersion": "mailgate.dev/v1alpha1",
        "kind": "SmtpAccount",
        "metadata": {"namespace": "shop", "name": "b", "uid": "u1"},
    }
    body = event_body(ref, "Warning", "SenderConflict", "x" * 2000, NOW)
    assert body["metadata"] == {"generateName": "b.", "namespace": "shop"}
    assert body["involvedObject"] == {
        "apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount", "name": "b", "namespace": "shop", "uid": "u1",
    }  # fmt: skip
    assert (body["type"], body["reason"], len(body["message"])) == ("Warning", "SenderConflict", 1024)
    assert body["firstTimestamp"] == "2025-01-02T03:04:05Z"


def test_a_pattern_claimed_by_thousands_names_a_few_and_counts_the_rest() -> None:
    """A pattern every account lists (a copied manifest): each status names a few others and counts the rest,
    so 10,000 statuses do not each carry 9,999 names."""
    others = tuple(f"shop/a{n:05d}" for n in range(1, 10_000))
    condition = senders_unique(build_status(inputs(SenderConflict("*@shop.example", others[:5], more=9_994)), [], NOW).conditions)
    assert (
        "*@shop.example (also listed by shop/a00001, shop/a00002, shop/a00003, shop/a00004, shop/a00005 and 9994 more)"
        in condition.message
    )


def test_conflicts_across_gateways_are_indexed_once_per_round() -> None:
    """Each account's conflicts come from one index of the gateways' reports: the others named first by name,
    the rest counted, the same as scanning every report for every account (which was quadratic)."""
    claimants = [f"shop/a{n:04d}" for n in range(40)]
    one = parse_report(
        {
            "revision": 1,
            "ready": True,
            "accounts": {k: {"digest": "d", "senderConflicts": ["*@Shop.example"]} for k in claimants[:30]},
        }
    )
    two = parse_report(
        {
            "revision": 1,
            "ready": True,
            "accounts": {k: {"digest": "d", "senderConflicts": ["*@shop.example"]} for k in claimants[10:]},
        }
    )
    index = conflict_index([one, two, None])
    (conflict,) = sender_conflicts("shop/a0003", [one, two, None], index)
    assert conflict.pattern == "*@Shop.example"
    assert conflict.accounts == tuple(claimants[:3] + claimants[4 : SHOWN_CONFLICTING_ACCOUNTS + 1])
    assert conflict.more == 39 - SHOWN_CONFLICTING_ACCOUNTS
    assert sender_conflicts("shop/unrelated", [one, two], index) == []
