"""The standalone watcher takes a changed file only once it has stopped changing.

An in-place save (``open(path, "w")``, ``Path.write_text``, most editors
without a backup copy) first empties the file, then writes it: a poll that
lands in between reads an empty file, which is a valid configuration with no
accounts (or no API keys), and serving it even for one second answers 404
(or 401) to every client. These tests put the watcher exactly in that gap,
which a real poll hits only by chance.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mailgate.gateway.apikeys import generate_key, hash_key
from mailgate.standalone.watcher import ConfigFiles


def account(name: str) -> dict[str, object]:
    return {
        "apiVersion": "mailgate.dev/v1alpha1",
        "kind": "SmtpAccount",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"server": {"host": "smtp.example.com"}},
    }


def write_accounts(path: Path, *names: str) -> None:
    path.write_text(yaml.safe_dump_all([account(name) for name in names]))


def keys_text(*names: str) -> str:
    entries = [{"name": name, "sha256": hash_key(generate_key()), "accounts": ["shop/*"]} for name in names]
    return yaml.safe_dump({"keys": entries})


def test_an_account_file_caught_half_written_is_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    write_accounts(path, "billing")
    files = ConfigFiles([path])
    files.load()

    path.write_text("")  # the poll lands between the truncation and the write
    assert files.reload_accounts() is None
    write_accounts(path, "billing", "news")  # the write completes
    assert files.reload_accounts() is None  # it changed since the last poll: maybe still being written
    snapshot = files.reload_accounts()
    assert snapshot is not None and [a.key for a in snapshot.accounts] == ["shop/billing", "shop/news"]
    assert snapshot.revision == 2  # the empty file never became a revision
    files.accept(snapshot)
    assert files.reload_accounts() is None


def test_a_file_emptied_on_purpose_is_applied_once_it_stays_empty(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    write_accounts(path, "billing")
    files = ConfigFiles([path])
    files.load()

    path.write_text("")
    assert files.reload_accounts() is None
    snapshot = files.reload_accounts()
    assert snapshot is not None and snapshot.accounts == []


def test_an_account_file_replaced_atomically_is_taken_at_the_next_poll_but_one(tmp_path: Path) -> None:
    """A rename (editors' safe write, ConfigMap symlink swaps) is whole at once; it waits one poll all the same,
    since the watcher cannot tell how the file was written."""
    path = tmp_path / "accounts.yaml"
    write_accounts(path, "billing")
    files = ConfigFiles([path])
    files.load()

    staged = tmp_path / "accounts.yaml.tmp"
    write_accounts(staged, "news")
    staged.replace(path)
    assert files.reload_accounts() is None
    snapshot = files.reload_accounts()
    assert snapshot is not None and [a.key for a in snapshot.accounts] == ["shop/news"]


def test_a_keys_file_caught_half_written_is_not_applied(tmp_path: Path) -> None:
    accounts, keys = tmp_path / "accounts.yaml", tmp_path / "keys.yaml"
    write_accounts(accounts, "billing")
    keys.write_text(keys_text("ci"))
    files = ConfigFiles([accounts], keys)
    files.load()

    keys.write_text("")
    assert files.reload_keys() is None  # an empty ring would answer 401 to every client
    keys.write_text(keys_text("ci", "ops"))
    assert files.reload_keys() is None
    ring = files.reload_keys()
    assert ring is not None and [entry.name for entry in ring.entries] == ["ci", "ops"]
    assert files.reload_keys() is None
