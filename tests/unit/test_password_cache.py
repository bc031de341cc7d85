"""One cache of SMTP client password hashes for the operator and standalone mode (issue 16).

Both hash each (username, password) once and reuse the hash, so that an
unchanged login keeps the account's digest and nothing is pushed again. The
cache is an object its owner keeps (no module state), keyed by an HMAC under
a key of its own, bounded, least recently used out first.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mailgate.operator.credentials import LoginHasher
from mailgate.password_cache import PasswordHashes
from mailgate.passwords import verify_password
from mailgate.standalone.loader import load_snapshot
from mailgate.standalone.watcher import ConfigFiles


async def test_logins_that_differ_only_in_where_username_ends_get_their_own_hashes() -> None:
    first, second = await LoginHasher().hash_all([("a\0b", "c"), ("a", "b\0c")])
    assert verify_password("c", first.password_hash)
    assert verify_password("b\0c", second.password_hash)


async def test_the_operator_keeps_the_logins_it_used_last() -> None:
    hasher = LoginHasher(max_entries=2)
    [a] = await hasher.hash_all([("a", "pw-a")])
    await hasher.hash_all([("b", "pw-b")])
    assert await hasher.hash_all([("a", "pw-a")]) == (a,)  # used again: now the most recent
    await hasher.hash_all([("c", "pw-c")])  # evicts b, the least recently used
    assert await hasher.hash_all([("a", "pw-a")]) == (a,)


def test_the_cache_is_bounded_and_holds_no_password() -> None:
    hashes = PasswordHashes(max_entries=2)
    a = hashes.hash("a", "sentinel-pw-a")
    hashes.hash("b", "sentinel-pw-b")
    assert hashes.hash("a", "sentinel-pw-a") == a
    hashes.hash("c", "sentinel-pw-c")
    assert len(hashes) == 2
    assert hashes.hash("a", "sentinel-pw-a") == a
    assert hashes.hash("b", "sentinel-pw-b") != a and verify_password("sentinel-pw-b", hashes.hash("b", "sentinel-pw-b"))
    assert "sentinel" not in repr(vars(hashes)) and "sentinel" not in repr(hashes)
    assert PasswordHashes().hash("a", "sentinel-pw-a") != a  # another owner, another cache


async def test_hashing_off_the_event_loop_fills_the_same_cache() -> None:
    hashes = PasswordHashes()
    hashed = await hashes.hash_in_thread("app", "pw")
    assert hashes.hash("app", "pw") == hashed
    assert verify_password("pw", hashed)


def write_account_with_client(path: Path, password: str) -> None:
    account = {
        "apiVersion": "mailgate.dev/v1alpha1",
        "kind": "SmtpAccount",
        "metadata": {"name": "billing", "namespace": "shop"},
        "spec": {"server": {"host": "h"}, "access": {"smtpClients": [{"secretRef": {"name": "app"}}]}},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "app", "namespace": "shop"},
        "stringData": {"username": "grafana", "password": password},
    }
    path.write_text(yaml.safe_dump_all([account, secret]))


def test_standalone_reuses_a_hash_through_the_cache_its_owner_passes(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    write_account_with_client(path, "pw-1")
    hashes = PasswordHashes()
    first, again = load_snapshot([path], hashes=hashes), load_snapshot([path], hashes=hashes)
    assert first.accounts == again.accounts
    assert load_snapshot([path]).accounts != first.accounts  # no cache given: no state kept between loads


def test_a_config_files_reload_with_unchanged_logins_is_no_new_revision(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    write_account_with_client(path, "pw-1")
    files = ConfigFiles([path])
    files.load()
    path.write_text(path.read_text() + "\n# a comment changes the file, not the configuration\n")
    assert files.reload_accounts() is None and files.reload_accounts() is None  # still changing, then read: equal
    write_account_with_client(path, "pw-2")
    assert files.reload_accounts() is None  # changed since the last poll: read at the next one
    changed = files.reload_accounts()
    assert changed is not None and verify_password("pw-2", changed.accounts[0].smtp_clients[0].password_hash)
