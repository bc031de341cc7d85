"""The delivery loop against real parts: a real queue (SQLite file and PostgreSQL), the real
``SMTPPool`` (through ``pool_send``) and a real aiosmtpd upstream with scripted faults.

Retry delays are tenths of a second so that outages, backoff and expiry play out in real time;
assertions wait for states with a deadline, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mailgate.pool import SMTPPool
from mailgate.queue import MessageState, QueuedMessage, QueueStore, RecipientStatus, open_store
from mailgate.queue.delivery import DeliveryWorker
from mailgate.queue.model import FinishedAndClaimed, Reply
from mailgate.queue.pool_send import pool_send
from mailgate.queue.retry import RetryPolicy, is_throttling
from mailgate.queue.store import EXPIRED_REASON
from tests.queue.support import FAST_RETRY, WatchedStore, message
from tests.smtp_servers import TestCA, Upstream, settings_for

ACCOUNT = "mail/alerts"
FINAL = (MessageState.SENT, MessageState.FAILED)


class Recorder:
    """A DeliveryObserver that records what it is told."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, str]] = []
        self.finals: list[tuple[str, MessageState]] = []

    def attempt(self, account: str, outcome: str, duration: float) -> None:
        self.attempts.append((account, outcome))

    def recorded(self, message: QueuedMessage) -> None:
        if message.state in FINAL:
            self.finals.append((message.account, message.state))


@contextlib.asynccontextmanager
async def running(store: QueueStore, pool: SMTPPool, **options: Any) -> AsyncIterator[DeliveryWorker]:
    options = {"owner": "worker-a", "concurrency": 4, "lease_seconds": 30.0, "policy": FAST_RETRY, "min_wait": 0.02, **options}
    options.setdefault("max_wait", 0.5)
    worker = DeliveryWorker(store, pool_send(pool, acquire_timeout=5.0), **options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def get(store: QueueStore, message_id: str) -> QueuedMessage:
    stored = await store.get(message_id)
    assert stored is not None
    return stored


async def all_in(store: QueueStore, ids: list[str], states: tuple[MessageState, ...] = FINAL) -> bool:
    return all([(await get(store, i)).state in states for i in ids])


async def test_every_message_delivered_exactly_once(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    pool.configure(ACCOUNT, settings_for(upstream))
    ids = [await store.enqueue(message(recipients=["a@example.com", "b@example.com"], body=f"n{n}")) for n in range(20)]
    recorder = Recorder()
    async with running(store, pool, observer=recorder):
        await until(lambda: all_in(store, ids))
    for message_id in ids:
        stored = await get(store, message_id)
        assert stored.state is MessageState.SENT and stored.attempts == 1
        assert [r.state for r in stored.recipients] == [RecipientStatus.SENT] * 2
        assert stored.recipients[0].code == 250
    bodies = sorted(m.data.split(b"\r\n\r\n", 1)[1] for m in upstream.messages)
    assert bodies == sorted(f"n{n}\r\n".encode() for n in range(20))
    assert all(m.rcpt_tos == ["a@example.com", "b@example.com"] for m in upstream.messages)
    assert recorder.attempts == [(ACCOUNT, "delivered")] * 20 and recorder.finals == [(ACCOUNT, MessageState.SENT)] * 20


async def test_upstream_down_then_back(store: QueueStore, pool: SMTPPool, test_ca: TestCA) -> None:
    upstream = Upstream(ca=test_ca)  # not started: connections are refused
    pool.configure(ACCOUNT, settings_for(upstream))
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(3)]
    try:
        async with running(store, pool):
            started = time.monotonic()
            await until(lambda: _attempted(store, ids, 3))
            down = time.monotonic() - started
            during = [await get(store, i) for i in ids]
            upstream.start()
            await until(lambda: all_in(store, ids))
    finally:
        upstream.stop()
    for stored in during:
        assert stored.state in (MessageState.DEFERRED, MessageState.SENDING)
        assert stored.last_reply is not None and stored.last_reply.code == 451
        # Backoff is honoured: each retry waits at least half of the first delay (0.1 s).
        assert stored.attempts <= down / (FAST_RETRY.first_delay / 2) + 2
    assert [(await get(store, i)).state for i in ids] == [MessageState.SENT] * 3
    assert len(upstream.messages) == 3


async def _attempted(store: QueueStore, ids: list[str], attempts: int) -> bool:
    return all([(await get(store, i)).attempts >= attempts for i in ids])


async def test_one_recipient_refused(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    upstream.rcpt_replies["bad@example.com"] = "550 5.1.1 no such user"
    pool.configure(ACCOUNT, settings_for(upstream))
    message_id = await store.enqueue(message(recipients=["good@example.com", "bad@example.com"]))
    async with running(store, pool):
        await until(lambda: all_in(store, [message_id]))
    stored = await get(store, message_id)
    assert stored.state is MessageState.FAILED and stored.attempts == 1
    good, bad = stored.recipients
    assert (good.address, good.state, good.code) == ("good@example.com", RecipientStatus.SENT, 250)
    assert (bad.address, bad.state, bad.code) == ("bad@example.com", RecipientStatus.FAILED, 550)
    assert "no such user" in bad.message
    assert [m.rcpt_tos for m in upstream.messages] == [["good@example.com"]]


async def test_421_pauses_the_account_not_others(store: QueueStore, pool: SMTPPool, upstream_factory: Any) -> None:
    throttling, other = upstream_factory(), upstream_factory()
    throttling.close_after_421 = True
    throttling.rcpt_replies["ops@example.com"] = "421 4.7.0 too many messages, throttled"
    pool.configure("mail/busy", settings_for(throttling))
    pool.configure("mail/other", settings_for(other))
    busy = [await store.enqueue(message(account="mail/busy", body=f"n{n}")) for n in range(3)]
    calm = await store.enqueue(message(account="mail/other"))
    async with running(store, pool, concurrency=1):  # one at a time: the first busy message goes first
        await until(lambda: all_in(store, [calm]))
        await until(lambda: all_in(store, busy, (MessageState.DEFERRED,)))
        first, *rest = [await get(store, i) for i in busy]
    assert (await get(store, calm)).state is MessageState.SENT and len(other.messages) == 1
    assert first.attempts == 1 and first.last_reply is not None and first.last_reply.code == 421
    for stored in rest:  # moved to the end of the pause without an attempt
        assert stored.attempts == 0 and stored.next_attempt_at >= time.time() + 10
        assert stored.last_reply is not None and stored.last_reply.code == 421
    assert throttling.counters.hangups_after_421 == 1 and throttling.messages == []


async def test_max_age_fails_the_message(store: QueueStore, pool: SMTPPool, test_ca: TestCA) -> None:
    upstream = Upstream(ca=test_ca).start()
    upstream.stop()  # down for good: connections are refused
    pool.configure(ACCOUNT, settings_for(upstream))
    message_id = await store.enqueue(message(max_age_seconds=0.6))
    recorder = Recorder()
    async with running(store, pool, observer=recorder, expire_interval=0.1):
        await until(lambda: all_in(store, [message_id]))
    stored = await get(store, message_id)
    assert stored.state is MessageState.FAILED and stored.attempts >= 1
    assert [(r.state, r.message) for r in stored.recipients] == [(RecipientStatus.FAILED, EXPIRED_REASON)]
    assert {outcome for _, outcome in recorder.attempts} == {"unreachable"}


async def test_delivery_unknown_fails_by_default(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    upstream.drop_after_dot = True
    pool.configure(ACCOUNT, settings_for(upstream))
    message_id = await store.enqueue(message())
    async with running(store, pool):
        await until(lambda: all_in(store, [message_id]))
    stored = await get(store, message_id)
    assert stored.state is MessageState.FAILED and stored.attempts == 1
    assert stored.recipients[0].message.startswith("delivery unknown")
    assert len(upstream.messages) == 1  # it did arrive: failing it avoided a duplicate


async def test_delivery_unknown_retried_when_asked(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    upstream.drop_after_dot = True
    pool.configure(ACCOUNT, settings_for(upstream))
    message_id = await store.enqueue(message(retry_unknown=True))
    slow_retry = RetryPolicy(first_delay=1.0, max_delay=1.0, busy_delay=0.1)
    async with running(store, pool, policy=slow_retry):
        await until(lambda: all_in(store, [message_id], (MessageState.DEFERRED,)))
        upstream.drop_after_dot = False  # the retry (0.5-1 s later) gets its 250
        await until(lambda: all_in(store, [message_id]))
    stored = await get(store, message_id)
    assert stored.state is MessageState.SENT and stored.attempts == 2
    assert len(upstream.messages) == 2  # the documented price: the dropped copy had arrived too


async def test_two_workers_share_one_postgres_queue(postgres_dsn: str, pool: SMTPPool, upstream: Upstream) -> None:
    pool.configure(ACCOUNT, settings_for(upstream))
    first, second = await open_store(postgres_dsn), await open_store(postgres_dsn)  # two replicas
    try:
        ids = [await first.enqueue(message(body=f"n{n}")) for n in range(40)]
        async with running(first, pool, owner="replica-1"), running(second, pool, owner="replica-2"):
            await until(lambda: all_in(first, ids))
        assert all([(await get(first, i)).state is MessageState.SENT for i in ids])
    finally:
        await first.close()
        await second.close()
    bodies = [m.data.split(b"\r\n\r\n", 1)[1] for m in upstream.messages]
    assert sorted(bodies) == sorted(f"n{n}\r\n".encode() for n in range(40))  # each once


async def test_killed_worker_leaves_its_message_to_another(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    pool.configure(ACCOUNT, settings_for(upstream))
    upstream.hold_replies()  # the upstream takes the message in and keeps its 250 back
    message_id = await store.enqueue(message())
    worker = DeliveryWorker(store, pool_send(pool), owner="doomed", lease_seconds=1.0, policy=FAST_RETRY, min_wait=0.02)
    task = asyncio.create_task(worker.run())
    await asyncio.to_thread(upstream.held_event.wait, 10)
    task.cancel()  # dies mid-send: no result recorded, the lease is left to expire
    with contextlib.suppress(asyncio.CancelledError):
        await task
    upstream.release_replies()
    assert (await get(store, message_id)).state is MessageState.SENDING
    async with running(store, pool, owner="survivor", lease_seconds=1.0):
        await until(lambda: all_in(store, [message_id]))
    stored = await get(store, message_id)
    assert stored.state is MessageState.SENT and stored.attempts == 2 and stored.lease_owner is None
    assert len(upstream.messages) == 2  # the dead worker's copy had arrived: the unknown-outcome window


async def test_capacity_bounds_sends_per_account(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    """The gateway's pool share for the account (here 1) caps this worker's sends, whatever its concurrency."""
    pool.configure(ACCOUNT, settings_for(upstream))  # the pool itself would open up to 5 sessions
    upstream.data_delay = 0.05  # sends overlap if the worker lets them
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(6)]
    async with running(store, pool, concurrency=4, serves=lambda account: account == ACCOUNT, capacity=lambda account: 1):
        await until(lambda: all_in(store, ids))
    assert len(upstream.messages) == 6 and upstream.sessions_peak == 1


async def test_an_account_that_appears_is_delivered_without_waiting_for_the_next_poll(
    store: QueueStore, pool: SMTPPool, upstream: Upstream
) -> None:
    """Messages wait for an account this replica does not serve yet (a share arriving, a restart); once it
    serves the account, ``wake`` starts their delivery at once instead of at the next poll (here 60 s)."""
    served: set[str] = set()
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(3)]
    async with running(store, pool, serves=served.__contains__, min_wait=60.0, max_wait=60.0) as worker:
        await asyncio.sleep(0.3)  # its first cycle finds nothing it may take and waits
        pool.configure(ACCOUNT, settings_for(upstream))
        served.add(ACCOUNT)
        worker.wake()
        await until(lambda: all_in(store, ids), timeout=15.0)
    assert len(upstream.messages) == 3


def test_default_schedule_is_postfix_like() -> None:
    policy = RetryPolicy()
    for failures, step in [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 4000), (50, 4000), (10_000, 4000)]:
        delays = [policy.backoff(failures) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays), failures
        assert max(delays) - min(delays) > step / 10  # jittered, not one fixed delay
    assert all(30 <= policy.throttle(1) <= 60 and 900 <= policy.throttle(9) <= 1800 for _ in range(100))


@pytest.mark.parametrize(
    ("reply", "throttling"),
    [
        (Reply(421, "4.3.2 Service not available, closing channel"), True),
        (Reply(451, "4.7.500 Server busy. Please try again later"), True),
        (Reply(450, "4.7.0 Message submission rate for this client has exceeded the configured limit: throttled"), True),
        (Reply(451, "4.7.1 Greylisted, please try again in 300 seconds"), False),
        (Reply(452, "4.5.3 Too many recipients"), False),
        (Reply(550, "5.7.1 rate limit policy violation"), False),  # a 5xx is final, never a pause
    ],
)
def test_throttling_replies(reply: Reply, throttling: bool) -> None:
    assert is_throttling(reply) is throttling


class CountingStore(WatchedStore):
    """The real store, counting the delivery loop's look-ups (each one a round trip to PostgreSQL)."""

    def __init__(self, store: QueueStore) -> None:
        super().__init__(store)
        self.lookups = 0

    async def due_accounts(self, **options: Any) -> list[str]:
        self.lookups += 1
        return await self._store.due_accounts(**options)

    async def next_due(self, *, after: float | None = None) -> float | None:
        self.lookups += 1
        return await self._store.next_due(after=after)


async def test_a_busy_account_keeps_its_slots_without_a_lookup_per_message(
    store: QueueStore, pool: SMTPPool, upstream: Upstream
) -> None:
    """A slot that finished a message takes its account's next due message itself: a backlog drains without
    the loop asking which accounts are due (and when the next falls due) once per message, nor every
    ``min_wait`` while the account's slots are all taken (a freed slot wakes the loop).

    The upstream takes 30 ms per message, so the drain lasts at least 0.6 s, thirty times ``min_wait``:
    a loop that polled while it could take nothing would count about 60 lookups, however fast the machine
    (``max_wait``, the loop's longest sleep, is far longer than the drain).
    """
    pool.configure(ACCOUNT, settings_for(upstream))
    upstream.data_delay = 0.03
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(40)]
    counting = CountingStore(store)
    options: dict[str, Any] = {"concurrency": 8, "serves": lambda account: True, "capacity": lambda account: 2}
    async with running(counting, pool, max_wait=30.0, **options):
        await until(lambda: all_in(store, ids))
    assert len(upstream.messages) == 40 and upstream.sessions_peak <= 2
    # Two each (which accounts are due, when is the next): the first cycle, the one the enqueues' wake-up
    # starts, and one per slot handed back at the end.
    assert counting.lookups <= 8, counting.lookups


async def test_messages_it_may_not_take_are_not_polled(store: QueueStore, pool: SMTPPool, upstream: Upstream) -> None:
    """Due messages of an account this replica does not serve (suspended, another replica's) are not looked
    for again every ``min_wait``: the loop sleeps until ``wake`` says the account is served, then sends."""
    served: set[str] = set()
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(3)]
    counting = CountingStore(store)
    async with running(counting, pool, serves=served.__contains__, max_wait=30.0) as worker:
        await asyncio.sleep(0.5)  # 25 times min_wait
        idle_lookups = counting.lookups
        pool.configure(ACCOUNT, settings_for(upstream))
        served.add(ACCOUNT)
        worker.wake()
        await until(lambda: all_in(store, ids), timeout=5.0)
    assert len(upstream.messages) == 3
    assert idle_lookups <= 4, idle_lookups  # the first cycle and the one the enqueues' wake-up starts


class StepStore(CountingStore):
    """Counts the slots' steps that recorded a result and claimed the next message in one request."""

    def __init__(self, store: QueueStore) -> None:
        super().__init__(store)
        self.recorded_and_claimed = 0

    async def finish_and_claim(self, *args: Any, **options: Any) -> FinishedAndClaimed:
        done = await self._store.finish_and_claim(*args, **options)
        self.recorded_and_claimed += done.claimed is not None and not isinstance(done.finished, Exception)
        return done


async def test_a_slot_claims_its_next_message_while_the_last_result_is_written(
    store: QueueStore, pool: SMTPPool, upstream: Upstream
) -> None:
    """Recording a result and claiming the next message do not depend on each other: one slot asks for both at
    once, so it waits for one round trip between two sends (on PostgreSQL one statement, on SQLite they share a
    transaction), not two."""
    pool.configure(ACCOUNT, settings_for(upstream))
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(20)]
    steps = StepStore(store)
    async with running(steps, pool, concurrency=8, serves=lambda account: True, capacity=lambda account: 1):
        await until(lambda: all_in(store, ids))
    assert len(upstream.messages) == 20 and upstream.sessions_peak == 1
    assert steps.recorded_and_claimed >= 15, steps.recorded_and_claimed


async def test_retry_now_ends_the_accounts_pause_and_its_backoff(
    store: QueueStore, pool: SMTPPool, upstream_factory: Any
) -> None:
    """An account throttled (paused 30 s) and a message refused for its credentials (backoff 300 s): once the upstream
    is fixed, ``retry_now`` sends both at once instead of after their waits."""
    throttling, locked = upstream_factory(), upstream_factory(users={"relay": "right-password"})
    throttling.close_after_421 = True
    throttling.rcpt_replies["ops@example.com"] = "421 4.7.0 too many messages, throttled"
    pool.configure("mail/busy", settings_for(throttling))
    pool.configure("mail/locked", settings_for(locked, password="wrong-password"))
    slow = RetryPolicy(first_delay=300.0, max_delay=600.0, throttle_delay=30.0, throttle_max_delay=30.0, busy_delay=0.1)
    busy = [await store.enqueue(message(account="mail/busy", body=f"n{n}")) for n in range(2)]
    refused = await store.enqueue(message(account="mail/locked"))
    async with running(store, pool, policy=slow, serves=lambda account: True, capacity=lambda account: 1) as worker:
        await until(lambda: all_in(store, [*busy, refused], (MessageState.DEFERRED,)))
        assert (await get(store, refused)).last_reply.code == 454  # type: ignore[union-attr]
        del throttling.rcpt_replies["ops@example.com"]
        pool.configure("mail/locked", settings_for(locked))

        assert await worker.retry_now("mail/busy") == 2
        assert await worker.retry_now("mail/locked") == 1
        await until(lambda: all_in(store, [*busy, refused]), timeout=10)
    assert len(throttling.messages) == 2 and len(locked.messages) == 1


async def test_a_retry_on_one_replica_is_not_undone_by_another_replicas_pause(
    store: QueueStore, pool: SMTPPool, test_ca: TestCA
) -> None:
    """Replicas sharing a queue each pause a dead account on their own. A retry asked of one of them (``POST
    .../messages/retry`` reaches one pod) ends its pause and makes the messages due: another replica still
    paused must leave them to it, not move them back to the end of its own pause (300 s here)."""
    dead = Upstream(ca=test_ca)  # not started: connections are refused
    pool.configure(ACCOUNT, settings_for(dead))
    slow = RetryPolicy(first_delay=300.0, max_delay=600.0, throttle_delay=30.0, throttle_max_delay=30.0, busy_delay=0.1)
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(10)]
    served_by_a: set[str] = set()
    shared = {"policy": slow, "capacity": lambda account: 2}
    try:
        async with running(store, pool, owner="worker-b", serves=lambda account: True, **shared):
            await until(lambda: all_in(store, ids, (MessageState.DEFERRED,)))  # b found it dead and paused it
            async with running(store, pool, owner="worker-a", serves=served_by_a.__contains__, **shared) as a:
                dead.start()
                served_by_a.add(ACCOUNT)
                assert await a.retry_now(ACCOUNT) == 10
                await until(lambda: all_in(store, ids), timeout=10)
    finally:
        dead.stop()
    assert len(dead.messages) == 10


async def test_messages_made_due_during_a_pause_go_out_when_it_ends(store: QueueStore, pool: SMTPPool, test_ca: TestCA) -> None:
    """Messages another replica made due during this one's pause (it left them alone, see above) are sent by
    this one when its pause ends, not at its next wake-up for other reasons (``max_wait``, 30 s here)."""
    dead = Upstream(ca=test_ca)
    pool.configure(ACCOUNT, settings_for(dead))
    short = RetryPolicy(first_delay=1.0, max_delay=1.0, throttle_delay=30.0, throttle_max_delay=30.0, busy_delay=0.1)
    ids = [await store.enqueue(message(body=f"n{n}")) for n in range(3)]
    try:
        async with running(store, pool, policy=short, serves=lambda account: True, max_wait=30.0):
            await until(lambda: all_in(store, ids, (MessageState.DEFERRED,)))  # paused for 0.5 to 1 s
            dead.start()
            assert await store.retry_now(ACCOUNT) == 3  # as another replica would, asked to retry
            await until(lambda: all_in(store, ids), timeout=10)
    finally:
        dead.stop()
    assert len(dead.messages) == 3


async def test_an_unreachable_upstream_defers_its_account_not_each_message(
    store: QueueStore, pool: SMTPPool, test_ca: TestCA, upstream_factory: Any
) -> None:
    """Postfix marks a destination dead after a failed connect and defers its other messages without trying each:
    a dead upstream must not cost a connect attempt (and a warning) per message, nor hold up the other accounts."""
    dead = Upstream(ca=test_ca)  # not started: connections are refused
    calm = upstream_factory()
    pool.configure("mail/dead", settings_for(dead))
    pool.configure("mail/calm", settings_for(calm))
    slow = RetryPolicy(first_delay=300.0, max_delay=600.0, throttle_delay=30.0, throttle_max_delay=30.0, busy_delay=0.1)
    waiting = [await store.enqueue(message(account="mail/dead", body=f"n{n}")) for n in range(20)]
    other = await store.enqueue(message(account="mail/calm"))
    try:
        async with running(store, pool, policy=slow, serves=lambda account: True, capacity=lambda account: 2) as worker:
            await until(lambda: all_in(store, waiting, (MessageState.DEFERRED,)))
            await until(lambda: all_in(store, [other]))
            later = [await store.enqueue(message(account="mail/dead", body=f"later {n}")) for n in range(3)]
            await until(lambda: all_in(store, later, (MessageState.DEFERRED,)))  # held to the pause's end, untried
            waiting += later
            deferred = [await get(store, i) for i in waiting]
            dead.start()
            await worker.retry_now("mail/dead")
            await until(lambda: all_in(store, waiting), timeout=10)
    finally:
        dead.stop()
    assert sum(m.attempts for m in deferred) <= 2  # the slots that found it dead; the rest were not tried
    for stored in deferred:
        assert stored.last_reply is not None and stored.last_reply.code == 451, stored.last_reply
        assert stored.next_attempt_at >= time.time() + 100
    assert len(dead.messages) == 23 and len(calm.messages) == 1
