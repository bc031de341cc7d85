"""The queue contract: every test runs on a SQLite file and on a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import pytest

from mailgate.queue import (
    AttemptResult,
    ClaimedMessage,
    LeaseLost,
    MessageState,
    Outcome,
    QueueStore,
    RecipientStatus,
    Reply,
)
from tests.queue.conftest import StoreFactory
from tests.queue.support import T0, message

LEASE = 60.0


async def enqueue_claimed(store: QueueStore, **fields: Any) -> ClaimedMessage:
    """Enqueue one message at T0 and claim it as worker-a (nothing else may be due)."""
    message_id = await store.enqueue(message(**fields), now=T0)
    (claimed,) = await store.claim("worker-a", limit=10, lease_seconds=LEASE, now=T0)
    assert claimed.message.id == message_id
    return claimed


async def test_enqueue_then_get(store: QueueStore) -> None:
    new = message(recipients=["a@example.com", "b@example.com", "a@example.com"], idempotency_key=None, smtputf8=True)
    message_id = await store.enqueue(new, now=T0)

    stored = await store.get(message_id)
    assert stored is not None
    assert (stored.account, stored.sender, stored.state, stored.attempts) == ("mail/alerts", "app@example.com", "queued", 0)
    assert (stored.created_at, stored.next_attempt_at, stored.expires_at) == (T0, T0, T0 + 5 * 86400)
    assert stored.smtputf8 and not stored.retry_unknown and stored.size == len(new.data)
    assert stored.pending_recipients == ["a@example.com", "b@example.com"]  # the duplicate is dropped
    assert all(r.state is RecipientStatus.PENDING and r.attempts == 0 for r in stored.recipients)
    assert await store.data(message_id) == new.data
    assert await store.get("0" * 32) is None
    with pytest.raises(KeyError):
        await store.data("0" * 32)


async def test_ids_sort_by_creation(store: QueueStore) -> None:
    ids = [await store.enqueue(message(), now=T0) for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20


async def test_acknowledged_enqueues_survive_a_killed_process(queue_url: str, stores: StoreFactory) -> None:
    """SIGKILL a process that is enqueueing: every id it was handed back is stored, with its body."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.queue.enqueuer", queue_url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 300:
            line = await child.stdout.readline()
            assert line, f"the enqueuer exited early: {(await child.stderr.read()).decode()}"
            acknowledged.append(line.decode().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        rest, errors = await child.communicate()
    acknowledged += rest.decode().split()  # printed before the kill
    assert child.returncode == -signal.SIGKILL, errors

    reopened = await stores()
    for message_id in acknowledged:
        stored = await reopened.get(message_id)
        assert stored is not None and stored.state is MessageState.QUEUED, message_id
        assert b"Subject: test" in await reopened.data(message_id)


async def test_idempotency_key_returns_the_first_message(store: QueueStore) -> None:
    first = await store.enqueue(message(idempotency_key="k1"), now=T0)
    assert await store.enqueue(message(idempotency_key="k1", body="again"), now=T0) == first
    concurrent = await asyncio.gather(*(store.enqueue(message(idempotency_key="k2"), now=T0) for _ in range(10)))
    assert len(set(concurrent)) == 1 and concurrent[0] != first
    other_account = await store.enqueue(message(account="mail/other", idempotency_key="k1"), now=T0)
    assert other_account != first
    page = await store.list_messages("mail/alerts")
    assert sorted(m.id for m in page.items) == sorted([first, concurrent[0]])
    assert b"hello" in await store.data(first)


async def test_a_claim_carries_the_bodies(store: QueueStore) -> None:
    """One query reads the bodies of a whole claimed batch: the worker asks for no body one message at a time."""
    sent = [message(body=f"body {n}") for n in range(3)]
    ids = [await store.enqueue(m, now=T0) for m in sent]
    claimed = await store.claim("w", limit=10, lease_seconds=LEASE, now=T0)
    assert [c.message.id for c in claimed] == ids
    assert [c.data for c in claimed] == [m.data for m in sent]
    assert [c.data for c in claimed] == [await store.data(i) for i in ids]


async def test_group_commit_batches_concurrent_enqueues(store: QueueStore) -> None:
    before = store.counters.enqueue_commits
    ids = await asyncio.gather(*(store.enqueue(message(body=f"n{i}"), now=T0) for i in range(500)))

    assert len(set(ids)) == 500
    commits = store.counters.enqueue_commits - before
    assert 1 <= commits < 500
    listed: list[str] = []
    after = None
    while True:
        page = await store.list_messages("mail/alerts", limit=200, after_id=after)
        listed += [m.id for m in page.items]
        if page.next_after is None:
            break
        after = page.next_after
    assert sorted(listed) == sorted(ids)


async def test_claim_takes_due_messages_in_due_order_and_leases_them(store: QueueStore) -> None:
    late = await store.enqueue(message(body="late"), now=T0 + 20)
    early = await store.enqueue(message(body="early"), now=T0)
    future = await store.enqueue(message(body="future"), now=T0 + 1000)

    claimed = await store.claim("worker-a", limit=10, lease_seconds=LEASE, now=T0 + 30)

    assert [c.message.id for c in claimed] == [early, late]
    for c in claimed:
        assert (c.message.state, c.message.lease_owner, c.message.attempts) == ("sending", "worker-a", 1)
        assert c.lease.expires_at == c.message.next_attempt_at == T0 + 30 + LEASE
        assert (c.lease.owner, c.lease.attempt) == ("worker-a", 1)
    assert await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + 31) == []
    assert (await store.get(future)).state is MessageState.QUEUED  # type: ignore[union-attr]
    assert await store.claim("worker-b", limit=1, lease_seconds=LEASE, now=T0 + 1000) != []


async def test_claim_can_be_limited_to_accounts(store: QueueStore) -> None:
    await store.enqueue(message(account="mail/a"), now=T0)
    b = await store.enqueue(message(account="mail/b"), now=T0)
    claimed = await store.claim("w", limit=10, lease_seconds=LEASE, now=T0, accounts=["mail/b", "mail/c"])
    assert [c.message.id for c in claimed] == [b]
    assert await store.claim("w", limit=10, lease_seconds=LEASE, now=T0, accounts=[]) == []


async def test_due_accounts_lists_accounts_with_due_messages_longest_waiting_first(store: QueueStore) -> None:
    await store.enqueue(message(account="mail/late"), now=T0 + 20)
    await store.enqueue(message(account="mail/early"), now=T0)
    await store.enqueue(message(account="mail/early"), now=T0 + 5)
    await store.enqueue(message(account="mail/future"), now=T0 + 100)
    assert await store.due_accounts(now=T0 + 30) == ["mail/early", "mail/late"]
    assert await store.due_accounts(now=T0 + 30, limit=1) == ["mail/early"]
    await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 30, accounts=["mail/early"])
    assert await store.due_accounts(now=T0 + 30) == ["mail/late"]  # leased messages are not due until the lease ends
    # an expired lease is due again from its expiry (T0 + 90)
    assert await store.due_accounts(now=T0 + 101) == ["mail/late", "mail/early", "mail/future"]


async def test_release_leases_makes_an_owners_messages_due_at_once(store: QueueStore) -> None:
    mine = await enqueue_claimed(store)
    other = await store.enqueue(message(), now=T0)
    await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0)
    assert await store.release_leases("worker-a", now=T0 + 1) == 1
    assert await store.release_leases("worker-a", now=T0 + 1) == 0
    (again,) = await store.claim("worker-c", limit=10, lease_seconds=LEASE, now=T0 + 1)
    assert again.message.id == mine.message.id and again.lease.attempt == 2  # worker-b still holds the other
    with pytest.raises(LeaseLost):  # the old holder's lease is fenced off
        await store.finish_attempt(mine.lease, [], next_attempt_at=T0 + 100, now=T0 + 2)
    assert (await store.get(other)).lease_owner == "worker-b"  # type: ignore[union-attr]


async def test_concurrent_claims_never_share_a_message(stores: StoreFactory) -> None:
    """Two stores (two connections: two replicas) and many concurrent claims each: disjoint, and all claimed."""
    first, second = await stores(), await stores()
    ids = await asyncio.gather(*(first.enqueue(message(body=str(i)), now=T0) for i in range(300)))

    async def drain(store: QueueStore, owner: str) -> list[str]:
        got: list[str] = []
        while batch := await store.claim(owner, limit=7, lease_seconds=LEASE, now=T0 + 1):
            got += [c.message.id for c in batch]
        return got

    results = await asyncio.gather(*(drain(s, f"{name}-{n}") for n in range(8) for name, s in (("a", first), ("b", second))))
    claimed = [message_id for got in results for message_id in got]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == set(ids)


async def test_an_expired_lease_is_reclaimed_and_the_old_holder_fenced_off(store: QueueStore) -> None:
    first = await enqueue_claimed(store)
    assert await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + LEASE - 1) == []

    (second,) = await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + LEASE)
    assert (second.message.id, second.lease.owner, second.lease.attempt) == (first.message.id, "worker-b", 2)
    with pytest.raises(LeaseLost):
        await store.finish_attempt(first.lease, [], next_attempt_at=T0 + 500, now=T0 + LEASE)

    # the same owner name reclaiming after its own lease expired is a new lease too
    (third,) = await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + 3 * LEASE)
    with pytest.raises(LeaseLost):
        await store.extend_lease(second.lease, lease_seconds=LEASE, now=T0 + 3 * LEASE)
    done = await store.finish_attempt(
        third.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None, now=T0 + 200
    )
    assert (done.state, done.attempts, done.finished_at) == ("sent", 3, T0 + 200)


async def test_a_lease_that_expired_but_was_not_taken_over_still_finishes(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store)
    done = await store.finish_attempt(
        claimed.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None, now=T0 + 10 * LEASE
    )
    assert done.state is MessageState.SENT


async def test_extend_lease_keeps_others_away(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store)
    extended = await store.extend_lease(claimed.lease, lease_seconds=LEASE, now=T0 + LEASE - 1)
    assert extended.expires_at == T0 + 2 * LEASE - 1
    assert await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + LEASE) == []
    assert len(await store.claim("worker-b", limit=10, lease_seconds=LEASE, now=T0 + 2 * LEASE)) == 1


async def test_finish_attempt_records_each_recipient(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store, recipients=["sent@x.org", "later@x.org", "refused@x.org", "untried@x.org"])
    results = [
        AttemptResult("sent@x.org", Outcome.SENT, 250, "2.0.0 queued as 1"),
        AttemptResult("later@x.org", Outcome.DEFERRED, 451, "4.7.1 greylisted"),
        AttemptResult("refused@x.org", Outcome.FAILED, 550, "5.1.1 no such user"),
    ]
    deferred = await store.finish_attempt(claimed.lease, results, next_attempt_at=T0 + 300, now=T0 + 5)

    assert (deferred.state, deferred.next_attempt_at, deferred.lease_owner) == ("deferred", T0 + 300, None)
    assert deferred.last_reply == Reply(451, "4.7.1 greylisted")
    by_address = {r.address: r for r in deferred.recipients}
    assert (by_address["sent@x.org"].state, by_address["sent@x.org"].code, by_address["sent@x.org"].attempts) == ("sent", 250, 1)
    assert (by_address["later@x.org"].state, by_address["later@x.org"].code) == ("pending", 451)
    assert (by_address["refused@x.org"].state, by_address["refused@x.org"].message) == ("failed", "5.1.1 no such user")
    assert (by_address["untried@x.org"].state, by_address["untried@x.org"].attempts) == ("pending", 0)
    assert deferred.pending_recipients == ["later@x.org", "untried@x.org"]
    assert await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 299) == []

    (again,) = await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 300)
    assert again.message.pending_recipients == ["later@x.org", "untried@x.org"]
    results = [AttemptResult(a, Outcome.SENT, 250, "ok") for a in again.message.pending_recipients]
    final = await store.finish_attempt(again.lease, results, next_attempt_at=T0 + 900, now=T0 + 301)
    assert (final.state, final.finished_at, final.attempts) == ("failed", T0 + 301, 2)  # one recipient was refused
    assert [r.state for r in final.recipients] == ["sent", "sent", "failed", "sent"]
    assert [r.attempts for r in final.recipients] == [1, 2, 1, 1]
    assert await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 10_000) == []


@pytest.mark.parametrize("with_claim", [False, True], ids=["read", "as-claimed"])
async def test_finish_attempt_returns_exactly_what_it_stored(store: QueueStore, with_claim: bool) -> None:
    """With ``current`` (the message as claimed: its recipients cannot change under the lease) a store may skip
    reading the message again; what it returns must still be what a later ``get`` reads."""
    claimed = await enqueue_claimed(store, recipients=["sent@x.org", "later@x.org", "refused@x.org"])
    results = [
        AttemptResult("sent@x.org", Outcome.SENT, 250, "ok"),
        AttemptResult("later@x.org", Outcome.DEFERRED, 451, "4.7.1 later"),
        AttemptResult("refused@x.org", Outcome.FAILED, 550, "5.1.1 unknown"),
    ]
    deferred = await store.finish_attempt(
        claimed.lease, results, next_attempt_at=T0 + 300, now=T0 + 5, current=claimed.message if with_claim else None
    )
    assert deferred == await store.get(claimed.message.id)
    assert deferred.state is MessageState.DEFERRED

    (again,) = await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 300)
    extended = await store.extend_lease(again.lease, lease_seconds=LEASE, now=T0 + 310)
    stale = type(again.lease)(again.lease.message_id, "worker-b", again.lease.attempt, again.lease.expires_at)
    with pytest.raises(LeaseLost):
        await store.finish_attempt(stale, [], next_attempt_at=T0 + 1, current=again.message if with_claim else None)
    final = await store.finish_attempt(
        extended,
        [AttemptResult("later@x.org", Outcome.SENT, 250, "ok")],
        next_attempt_at=None,
        now=T0 + 320,
        current=again.message if with_claim else None,
    )
    assert final == await store.get(claimed.message.id)
    assert (final.state, final.finished_at, final.lease_owner) == ("failed", T0 + 320, None)


async def test_all_recipients_accepted_is_sent(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store, recipients=["a@x.org", "b@x.org"])
    results = [AttemptResult(a, Outcome.SENT, 250, "ok") for a in ("a@x.org", "b@x.org")]
    done = await store.finish_attempt(claimed.lease, results, next_attempt_at=None, now=T0 + 1)
    assert (done.state, done.last_reply) == ("sent", Reply(250, "ok"))


async def test_no_next_attempt_fails_what_is_pending(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store, recipients=["a@x.org", "b@x.org"])
    results = [AttemptResult("a@x.org", Outcome.DEFERRED, None, "connection lost after the final dot")]
    done = await store.finish_attempt(claimed.lease, results, next_attempt_at=None, reply=Reply(421, "4.4.2 gone"), now=T0)
    assert done.state is MessageState.FAILED
    assert [(r.state, r.code, r.message) for r in done.recipients] == [
        ("failed", None, "connection lost after the final dot"),
        ("failed", 421, "4.4.2 gone"),
    ]


async def test_finishing_without_results_defers_everyone(store: QueueStore) -> None:
    """A connection that failed before any RCPT: no recipient was tried, all wait for the next attempt."""
    claimed = await enqueue_claimed(store, recipients=["a@x.org", "b@x.org"])
    deferred = await store.finish_attempt(claimed.lease, [], next_attempt_at=T0 + 30, reply=Reply(421, "4.3.2 busy"), now=T0)
    assert (deferred.state, deferred.next_attempt_at, deferred.attempts, deferred.last_reply) == (
        "deferred",
        T0 + 30,
        1,
        (421, "4.3.2 busy"),
    )
    assert [(r.state, r.attempts, r.code) for r in deferred.recipients] == [("pending", 0, None), ("pending", 0, None)]
    assert await store.cancel(deferred.id, now=T0 + 1)
    cancelled = await store.get(deferred.id)
    assert cancelled is not None
    assert [(r.state, r.code, r.message) for r in cancelled.recipients] == [("failed", None, "cancelled")] * 2


async def test_only_the_lease_holder_finishes(store: QueueStore) -> None:
    claimed = await enqueue_claimed(store)
    forged = type(claimed.lease)(claimed.lease.message_id, "worker-b", claimed.lease.attempt, claimed.lease.expires_at)
    with pytest.raises(LeaseLost):
        await store.finish_attempt(forged, [], next_attempt_at=T0 + 1)
    with pytest.raises(ValueError):
        await store.finish_attempt(claimed.lease, [AttemptResult("nobody@x.org", Outcome.SENT, 250, "")], next_attempt_at=None)
    still = await store.get(claimed.message.id)
    assert still is not None and (still.state, still.lease_owner) == ("sending", "worker-a")  # nothing was written


async def test_retry_now_makes_an_accounts_deferred_messages_due(store: QueueStore) -> None:
    """An upstream fixed (credentials rotated, an outage over): its deferred messages need not wait out their
    backoff, up to 4,000 s. Nothing else moves: other accounts, leased, queued or finished messages."""
    deferred_ids = []
    for n in range(2):
        claimed = await enqueue_claimed(store, account="mail/a", body=f"d{n}")
        await store.finish_attempt(claimed.lease, [], next_attempt_at=T0 + 3000 + n, reply=Reply(454, "4.7.0 auth"), now=T0)
        deferred_ids.append(claimed.message.id)
    leased = await enqueue_claimed(store, account="mail/a", body="leased")
    queued_later = await store.enqueue(message(account="mail/a"), now=T0 + 5000)
    other = await enqueue_claimed(store, account="mail/b")
    await store.finish_attempt(other.lease, [], next_attempt_at=T0 + 3000, now=T0)

    assert await store.retry_now("mail/a", now=T0 + 10) == 2

    for message_id in deferred_ids:
        moved = await store.get(message_id)
        assert moved is not None
        assert (moved.state, moved.next_attempt_at, moved.last_reply) == ("deferred", T0 + 10, (454, "4.7.0 auth"))
    untouched = [await store.get(i) for i in (leased.message.id, queued_later, other.message.id)]
    assert [(m.state, m.next_attempt_at) for m in untouched if m] == [
        ("sending", T0 + LEASE),
        ("queued", T0 + 5000),
        ("deferred", T0 + 3000),
    ]
    due = await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 10, accounts=["mail/a"])
    assert sorted(c.message.id for c in due) == sorted(deferred_ids)
    assert await store.retry_now("mail/a", now=T0 + 11) == 0  # nothing deferred any more
    assert await store.retry_now("mail/none", now=T0 + 11) == 0


SENT = [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")]


async def test_finish_and_claim_records_and_claims_the_accounts_next_message(store: QueueStore) -> None:
    first = await store.enqueue(message(body="first"), now=T0)
    second = await store.enqueue(message(body="second", recipients=["a@example.com", "b@example.com"]), now=T0 + 1)
    other = await store.enqueue(message(account="mail/other"), now=T0)
    (claimed,) = await store.claim("worker-a", limit=1, lease_seconds=LEASE, now=T0 + 2, accounts=["mail/alerts"])
    assert claimed.message.id == first

    done = await store.finish_and_claim(
        claimed.lease, SENT, next_attempt_at=None, now=T0 + 3, current=claimed.message, claim_from="mail/alerts",
        lease_seconds=LEASE,
    )  # fmt: skip

    assert not isinstance(done.finished, Exception) and done.finished.state is MessageState.SENT
    assert done.finished == await store.get(first)
    assert done.claimed is not None and done.claimed.message.id == second
    assert done.claimed.lease.owner == "worker-a" and done.claimed.lease.expires_at == T0 + 3 + LEASE
    assert [r.address for r in done.claimed.message.recipients] == ["a@example.com", "b@example.com"]
    assert done.claimed.data in (None, await store.data(second))  # with the claim, or read on demand
    assert done.claimed.message == await store.get(second)
    # The last one of its account: recorded, nothing claimed (the other account's message is not its to take).
    both_sent = [AttemptResult(address, Outcome.SENT, 250, "ok") for address in ("a@example.com", "b@example.com")]
    last = await store.finish_and_claim(
        done.claimed.lease, both_sent, next_attempt_at=None, now=T0 + 4, current=done.claimed.message,
        claim_from="mail/alerts", lease_seconds=LEASE,
    )  # fmt: skip
    assert not isinstance(last.finished, Exception) and last.finished.state is MessageState.SENT and last.claimed is None
    assert (await store.get(other)).state is MessageState.QUEUED  # type: ignore[union-attr]


async def test_finish_and_claim_with_a_lost_lease_still_claims(store: QueueStore) -> None:
    """The result of a lease taken over is dropped (LeaseLost, returned); the claim does not depend on it."""
    stale = await enqueue_claimed(store)
    (taken,) = await store.claim("worker-b", limit=1, lease_seconds=LEASE, now=T0 + LEASE + 1)
    waiting = await store.enqueue(message(body="waiting"), now=T0 + LEASE + 2)

    done = await store.finish_and_claim(
        stale.lease, SENT, next_attempt_at=None, now=T0 + LEASE + 3, current=stale.message, claim_from="mail/alerts",
        lease_seconds=LEASE,
    )  # fmt: skip

    assert isinstance(done.finished, LeaseLost)
    assert done.claimed is not None and done.claimed.message.id == waiting
    assert (await store.get(taken.message.id)).lease_owner == "worker-b"  # type: ignore[union-attr]


async def test_finish_and_claim_of_a_message_due_again_at_once(store: QueueStore) -> None:
    """A lease that expired but was not taken over still finishes; deferred to a time already past, the message is
    due again. The step records the attempt either way; if it claims the message too, that is a new attempt under
    a new lease, never the old lease's record and the new claim mixed up."""
    claimed = await enqueue_claimed(store)
    deferred = [AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "later")]
    done = await store.finish_and_claim(
        claimed.lease, deferred, next_attempt_at=T0 + 10, now=T0 + LEASE + 5, current=claimed.message,
        claim_from="mail/alerts", lease_seconds=LEASE,
    )  # fmt: skip
    assert not isinstance(done.finished, Exception) and done.finished.state is MessageState.DEFERRED
    stored = await store.get(claimed.message.id)
    assert stored is not None and stored.last_reply == (451, "later")
    if done.claimed is None:
        assert (stored.state, stored.next_attempt_at, stored.lease_owner, stored.attempts) == ("deferred", T0 + 10, None, 1)
    else:
        assert done.claimed.message.id == claimed.message.id and done.claimed.lease.attempt == 2
        assert (stored.state, stored.lease_owner, stored.attempts) == ("sending", "worker-a", 2)


async def test_defer_account_moves_the_accounts_unleased_messages(store: QueueStore) -> None:
    leased = await enqueue_claimed(store, account="mail/a")
    due = await store.enqueue(message(account="mail/a"), now=T0)
    soon = await store.enqueue(message(account="mail/a"), now=T0 + 50)
    later = await store.enqueue(message(account="mail/a"), now=T0 + 5000)
    other = await store.enqueue(message(account="mail/b"), now=T0)

    moved = await store.defer_account("mail/a", T0 + 600, reply=Reply(421, "4.7.0 throttled"), now=T0 + 1)

    assert moved == 2
    for message_id in (due, soon):
        deferred = await store.get(message_id)
        assert deferred is not None
        assert (deferred.state, deferred.next_attempt_at, deferred.last_reply) == ("deferred", T0 + 600, (421, "4.7.0 throttled"))
    untouched = {i: await store.get(i) for i in (later, leased.message.id, other)}
    assert [(m.state, m.next_attempt_at) for m in untouched.values() if m] == [
        ("queued", T0 + 5000),
        ("sending", T0 + LEASE),
        ("queued", T0),
    ]
    assert [c.message.id for c in await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 2)] == [other]
    done = await store.finish_attempt(
        leased.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None, now=T0 + 3
    )
    assert done.state is MessageState.SENT
    assert await store.defer_account("mail/a", T0 + 300, now=T0 + 4) == 0  # nothing due before that any more


async def test_defer_account_can_leave_older_messages(store: QueueStore) -> None:
    """``created_since``: a pause moves what arrived during it, not older messages made due meanwhile."""
    older = await store.enqueue(message(account="mail/a"), now=T0)
    newer = await store.enqueue(message(account="mail/a"), now=T0 + 10)
    assert await store.defer_account("mail/a", T0 + 600, now=T0 + 11, created_since=T0 + 10) == 1
    moved, left = await store.get(newer), await store.get(older)
    assert moved is not None and (moved.state, moved.next_attempt_at) == ("deferred", T0 + 600)
    assert left is not None and (left.state, left.next_attempt_at) == ("queued", T0)


async def test_cancel_rules(store: QueueStore) -> None:
    queued = await store.enqueue(message(), now=T0)
    assert await store.cancel(queued, now=T0)
    cancelled = await store.get(queued)
    assert cancelled is not None and (cancelled.state, cancelled.finished_at) == ("cancelled", T0)
    assert [(r.state, r.message) for r in cancelled.recipients] == [("failed", "cancelled")]
    assert not await store.cancel(queued, now=T0)
    assert not await store.cancel("0" * 32, now=T0)

    leased = await enqueue_claimed(store)
    assert not await store.cancel(leased.message.id, now=T0 + 1)
    deferred = await store.finish_attempt(
        leased.lease, [AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "later")], next_attempt_at=T0 + 100, now=T0 + 2
    )
    assert deferred.state is MessageState.DEFERRED
    assert await store.cancel(deferred.id, now=T0 + 3)
    assert await store.claim("w", limit=10, lease_seconds=LEASE, now=T0 + 10_000) == []

    sent = await enqueue_claimed(store)
    await store.finish_attempt(sent.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None)
    assert not await store.cancel(sent.message.id)

    abandoned = await enqueue_claimed(store)  # its worker died: the lease ran out
    assert await store.cancel(abandoned.message.id, now=T0 + LEASE)
    with pytest.raises(LeaseLost):
        await store.finish_attempt(abandoned.lease, [], next_attempt_at=T0 + 100)


async def test_list_pages_through_an_account(store: QueueStore) -> None:
    ids = [await store.enqueue(message(account="mail/a"), now=T0) for _ in range(25)]
    await store.enqueue(message(account="mail/b"), now=T0)
    for claimed in await store.claim("w", limit=5, lease_seconds=LEASE, now=T0):
        result = AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "later")
        await store.finish_attempt(claimed.lease, [result], next_attempt_at=T0 + 100, now=T0)

    pages, after = [], None
    while True:
        page = await store.list_messages("mail/a", limit=10, after_id=after)
        pages.append([m.id for m in page.items])
        if page.next_after is None:
            break
        after = page.next_after
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == ids

    deferred = await store.list_messages("mail/a", state=MessageState.DEFERRED, limit=3)
    assert [m.id for m in deferred.items] == ids[:3] and deferred.next_after == ids[2]
    rest = await store.list_messages("mail/a", state=MessageState.DEFERRED, limit=3, after_id=deferred.next_after)
    assert [m.id for m in rest.items] == ids[3:5] and rest.next_after is None
    assert all(m.recipients and m.state is MessageState.DEFERRED for m in rest.items)
    exact = await store.list_messages("mail/a", limit=25)
    assert len(exact.items) == 25 and exact.next_after is None
    assert (await store.list_messages("mail/none")).items == []


async def test_expire_fails_unleased_messages_past_their_max_age(store: QueueStore) -> None:
    sent = await enqueue_claimed(store, max_age_seconds=100)
    await store.finish_attempt(sent.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None)
    await store.enqueue(message(max_age_seconds=100), now=T0)
    (leased,) = await store.claim("worker-a", limit=10, lease_seconds=1000, now=T0)
    old = await store.enqueue(message(max_age_seconds=100), now=T0)
    young = await store.enqueue(message(max_age_seconds=100), now=T0 + 50)

    assert await store.expire(now=T0 + 99) == []
    assert await store.expire(now=T0 + 100) == [old]
    failed = await store.get(old)
    assert failed is not None and (failed.state, failed.finished_at) == ("failed", T0 + 100)
    assert failed.recipients[0].state is RecipientStatus.FAILED and "expired" in failed.recipients[0].message
    assert (await store.get(young)).state is MessageState.QUEUED  # type: ignore[union-attr]
    assert (await store.get(leased.message.id)).state is MessageState.SENDING  # type: ignore[union-attr]

    assert sorted(await store.expire(now=T0 + 1000)) == sorted([young, leased.message.id])  # the lease ran out
    with pytest.raises(LeaseLost):
        await store.finish_attempt(leased.lease, [], next_attempt_at=T0 + 2000)
    assert (await store.get(sent.message.id)).state is MessageState.SENT  # type: ignore[union-attr]


async def test_stats_and_next_due(store: QueueStore) -> None:
    assert await store.stats() == {}
    assert await store.next_due() is None
    await store.enqueue(message(account="mail/a"), now=T0)
    await store.enqueue(message(account="mail/a"), now=T0 + 10)
    await store.enqueue(message(account="mail/b"), now=T0 + 20)
    (claimed,) = await store.claim("w", limit=1, lease_seconds=LEASE, now=T0 + 30)
    await store.finish_attempt(
        claimed.lease, [AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "x")], next_attempt_at=T0 + 900, now=T0 + 30
    )
    (claimed,) = await store.claim("w", limit=1, lease_seconds=LEASE, now=T0 + 30)
    done = await store.enqueue(message(account="mail/c"), now=T0)
    (c,) = await store.claim("w", limit=1, lease_seconds=LEASE, now=T0 + 30, accounts=["mail/c"])
    await store.finish_attempt(c.lease, [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")], next_attempt_at=None)
    assert c.message.id == done

    stats = await store.stats()
    assert set(stats) == {"mail/a", "mail/b"}
    a, b = stats["mail/a"], stats["mail/b"]
    assert (a.queued, a.deferred, a.sending, a.depth, a.oldest_created_at) == (0, 1, 1, 2, T0)
    assert (b.queued, b.deferred, b.sending, b.depth) == (1, 0, 0, 1)
    assert a.oldest_age_seconds(T0 + 100) == 100
    assert await store.next_due() == T0 + 20
    # Later than a time: the message due then is left out, a lease's expiry and a deferral are not.
    assert await store.next_due(after=T0 + 20) == T0 + 30 + LEASE
    assert await store.next_due(after=T0 + 30 + LEASE) == T0 + 900
    assert await store.next_due(after=T0 + 900) is None


async def test_purge_deletes_finished_messages(store: QueueStore) -> None:
    pending = await store.enqueue(message(), now=T0)
    finished = []
    for _ in range(3):
        m = await store.enqueue(message(), now=T0)
        assert await store.cancel(m, now=T0 + 10)
        finished.append(m)
    late = await store.enqueue(message(), now=T0)
    assert await store.cancel(late, now=T0 + 100)

    assert await store.purge(finished_before=T0 + 50, limit=2) == 2
    assert await store.purge(finished_before=T0 + 50) == 1
    for m in finished:
        assert await store.get(m) is None
        with pytest.raises(KeyError):
            await store.data(m)
    assert await store.get(pending) is not None and await store.get(late) is not None
    assert await store.enqueue(message(idempotency_key="k"), now=T0)


async def test_wait_for_work_wakes_on_enqueue(store: QueueStore) -> None:
    assert await store.wait_for_work(0.05) is False
    waiter = asyncio.create_task(store.wait_for_work(30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await store.enqueue(message())
    assert await waiter is True
    await store.enqueue(message())  # a wake-up while nobody waits is kept for the next wait
    assert await store.wait_for_work(30) is True
