"""The operator's Secret cache, pure: what it keeps, and who wins when the start-up listing and the watch race."""

from __future__ import annotations

import asyncio
import base64

from mailgate.operator.secrets import EMPTY, SecretCache


def data(**values: str) -> dict[str, str]:
    """A Secret's ``data`` as the apiserver returns it."""
    return {key.replace("_", "."): base64.b64encode(value.encode()).decode() for key, value in values.items()}


def test_only_the_keys_the_operator_reads_are_kept_and_an_irrelevant_secret_is_an_empty_entry() -> None:
    cache = SecretCache()
    cache.add_listed("shop", "mail", data(username="ann", password="pw", unrelated="x" * 1000))
    cache.add_listed("shop", "tls", data(tls_crt="certificate", ca_crt="ca"))  # tls.crt is an oauth2 key
    cache.add_listed("shop", "release", data(release="h4sIAAAA" * 1000))
    cache.add_listed("shop", "opaque", None)

    assert cache.lookup("shop", "mail") == {"username": "ann", "password": "pw"}
    assert cache.lookup("shop", "tls") == {"tls.crt": "certificate"}
    assert cache.lookup("shop", "release") is EMPTY  # exists (KeyMissing), costs one shared empty mapping
    assert cache.lookup("shop", "opaque") is EMPTY
    assert cache.lookup("shop", "absent") is None  # no such Secret (SecretNotFound)
    assert cache.lookup("elsewhere", "mail") is None


def test_a_value_that_is_not_utf8_is_kept_as_none() -> None:
    cache = SecretCache()
    cache.update("shop", "mail", {"username": base64.b64encode(b"\xff\xfe").decode()})
    assert cache.lookup("shop", "mail") == {"username": None}


def test_update_and_remove_say_whether_anything_changed() -> None:
    cache = SecretCache()
    assert cache.update("shop", "mail", data(username="ann", password="pw"))
    assert not cache.update("shop", "mail", data(username="ann", password="pw", other="x"))  # irrelevant key only
    assert cache.update("shop", "mail", data(username="ann", password="rotated"))
    assert cache.update("shop", "mail", data(username="ann", pasword="typo"))
    assert cache.lookup("shop", "mail") == {"username": "ann"}
    assert cache.remove("shop", "mail")
    assert not cache.remove("shop", "mail")
    assert cache.lookup("shop", "mail") is None
    assert len(cache) == 0


def test_an_event_during_the_listing_is_not_overwritten_by_an_older_listed_copy() -> None:
    cache = SecretCache()
    cache.update("shop", "rotated", data(username="ann", password="new"))
    cache.update("shop", "deleted", data(username="bob", password="pw"))
    cache.remove("shop", "deleted")
    cache.add_listed("shop", "rotated", data(username="ann", password="old"))
    cache.add_listed("shop", "deleted", data(username="bob", password="pw"))
    cache.add_listed("shop", "quiet", data(username="cid", password="pw"))
    assert not cache.filled
    cache.mark_filled()

    assert cache.filled
    assert cache.lookup("shop", "rotated") == {"username": "ann", "password": "new"}
    assert cache.lookup("shop", "deleted") is None
    assert cache.lookup("shop", "quiet") == {"username": "cid", "password": "pw"}
    cache.update("shop", "quiet", data(username="cid", password="rotated"))  # once filled, events simply apply
    assert cache.lookup("shop", "quiet") == {"username": "cid", "password": "rotated"}


async def test_waiters_are_released_by_the_end_of_the_listing_and_give_up_after_their_timeout() -> None:
    cache = SecretCache()
    assert not await cache.wait_filled(0.01)
    waiter = asyncio.create_task(cache.wait_filled(30))
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.mark_filled()
    assert await waiter
    assert await cache.wait_filled(0)
