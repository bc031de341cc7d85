"""Duplicate sender claims reported by the gateways become a condition and Events: pure functions, no apiserver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailgate.operator.admin import parse_report
from mailgate.operator.conditions import SenderConflict, StatusInputs, build_status, sender_conflict_event
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
