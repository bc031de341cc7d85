"""The idempotency store's rules, exercised through its public ``run``."""

from __future__ import annotations

import asyncio
import json

import pytest

from mailgate.gateway.idempotency import IdempotencyConflict, IdempotencyStore, StoredResponse, fingerprint
from mailgate.gateway.problems import CONTENT_TYPE, problem_body


def _ok(n: int) -> StoredResponse:
    return StoredResponse(status=200, body=f'{{"n":{n}}}'.encode(), content_type="application/json")


async def test_retry_returns_the_first_answer_without_running_again() -> None:
    store = IdempotencyStore()
    calls: list[int] = []

    async def send() -> StoredResponse:
        calls.append(1)
        return _ok(len(calls))

    fp = fingerprint("application/json", b"{}")
    first = await store.run("shop/billing", "k1", fp, send)
    again = await store.run("shop/billing", "k1", fp, send)
    assert calls == [1]
    assert again.body == first.body and again.replayed and not first.replayed


async def test_same_key_different_body_is_a_conflict() -> None:
    store = IdempotencyStore()
    await store.run("a/b", "k", fingerprint("application/json", b"{}"), lambda: asyncio.sleep(0, _ok(1)))
    with pytest.raises(IdempotencyConflict):
        await store.run("a/b", "k", fingerprint("application/json", b'{"x":1}'), lambda: asyncio.sleep(0, _ok(2)))


async def test_keys_are_scoped_per_account() -> None:
    store = IdempotencyStore()
    fp = fingerprint("t", b"")
    await store.run("a/one", "k", fp, lambda: asyncio.sleep(0, _ok(1)))
    second = await store.run("a/two", "k", fp, lambda: asyncio.sleep(0, _ok(2)))
    assert second.body == b'{"n":2}' and not second.replayed


async def test_concurrent_retry_waits_for_the_first() -> None:
    store = IdempotencyStore()
    release = asyncio.Event()
    calls = 0

    async def slow() -> StoredResponse:
        nonlocal calls
        calls += 1
        await release.wait()
        return _ok(calls)

    fp = fingerprint("t", b"x")
    first = asyncio.create_task(store.run("a/b", "k", fp, slow))
    second = asyncio.create_task(store.run("a/b", "k", fp, slow))
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, second)
    assert calls == 1
    assert results[0].body == results[1].body


def _problem(slug: str, retryable: bool | None = None) -> StoredResponse:
    body = problem_body(slug, "detail", retryable=retryable)
    return StoredResponse(body["status"], json.dumps(body).encode(), CONTENT_TYPE)


async def _twice(first: StoredResponse) -> StoredResponse:
    """Run the key twice: the first answer is ``first``, a fresh run would answer 200."""
    store = IdempotencyStore()
    answers = iter([first, _ok(2)])
    fp = fingerprint("t", b"x")
    assert (await store.run("a/b", "k", fp, lambda: asyncio.sleep(0, next(answers)))).status == first.status
    return await store.run("a/b", "k", fp, lambda: asyncio.sleep(0, next(answers)))


@pytest.mark.parametrize(
    ("slug", "retryable"),
    [
        ("rate-limited", None),
        ("pool-saturated", None),
        ("upstream-unavailable", None),
        ("upstream-timeout", None),
        ("upstream-refused", True),  # greylisting: a 4xx at RCPT, nothing was sent
        ("unknown-account", None),
        ("forbidden", None),
        ("unauthenticated", None),
    ],
)
async def test_answers_that_say_retry_or_can_be_fixed_are_not_remembered(slug: str, retryable: bool | None) -> None:
    again = await _twice(_problem(slug, retryable))
    assert again.status == 200 and not again.replayed


@pytest.mark.parametrize(
    ("slug", "retryable"),
    [("delivery-unknown", None), ("upstream-refused", False), ("invalid-request", None), ("message-too-large", None)],
)
async def test_final_answers_and_delivery_unknown_are_remembered(slug: str, retryable: bool | None) -> None:
    first = _problem(slug, retryable)
    again = await _twice(first)
    assert again.status == first.status and again.replayed


async def test_an_error_that_is_not_a_problem_body_is_remembered_to_be_safe() -> None:
    """A proxy's HTML 502 says nothing about what was sent: replay rather than risk a second send."""
    again = await _twice(StoredResponse(502, b"<html>Bad Gateway</html>", "text/html"))
    assert again.status == 502 and again.replayed


async def test_memory_is_bounded_and_entries_expire() -> None:
    store = IdempotencyStore(ttl=0.05, max_entries=3)
    fp = fingerprint("t", b"x")
    for i in range(10):
        await store.run("a/b", f"k{i}", fp, lambda: asyncio.sleep(0, _ok(0)))
    assert len(store) == 3
    await asyncio.sleep(0.06)
    fresh = await store.run("a/b", "k9", fp, lambda: asyncio.sleep(0, _ok(7)))
    assert not fresh.replayed and fresh.body == b'{"n":7}'
