"""Reload standalone configuration when its files change, keeping the last good one on error.

Polling, not inotify: one ``stat`` per file per second costs nothing, needs
no extra dependency, and works the same on every filesystem, including the
bind mounts and ConfigMap volumes (which swap a symlink) where inotify
misses changes. A file's signature is its inode, modification time and size,
so an editor's write-to-temp-and-rename is seen as well as an in-place
write. The signature is taken *before* a file is read: a write that lands
during the read changes it again, and the next poll reloads.

A change is read only once the signatures held still for one poll: an
in-place save first empties the file, and a poll landing in that gap would
otherwise serve a configuration with no accounts (or no API keys) until the
next one. A change is therefore applied one to two intervals after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..gateway.apikeys import KeyRing, load_keys
from ..password_cache import PasswordHashes
from ..relay.accounts import InvalidAccount
from ..snapshot import ConfigSnapshot
from .loader import ConfigError, load_snapshot

log = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    """What changes when the file does; ``None`` while it is missing."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class SettledSignatures:
    """The signatures of some files as last read, and whether they have since changed and then held still."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths
        self._read: list[Signature] = []
        self._polled: list[Signature] = []

    def reading(self) -> None:
        """The files are about to be read: what they are now is what the reader gets (or newer)."""
        self._read = self._polled = self._now()

    def changed_and_settled(self) -> bool:
        """One poll: True when the files differ from when last read and are the same as at the previous poll
        (then they count as read); False while unchanged or still changing."""
        now, previous = self._now(), self._polled
        self._polled = now
        if now == self._read or now != previous:
            return False
        self._read = now
        return True

    def _now(self) -> list[Signature]:
        return [signature(path) for path in self.paths]


class ConfigFiles:
    """The account files and the optional API keys file, with the last good result of each.

    ``revision`` counts successful loads that changed the accounts, starting
    at 1; a gateway refuses revisions that do not move forward, so it only
    ever increases.
    """

    def __init__(self, account_paths: Sequence[str | Path], keys_path: str | Path | None = None) -> None:
        self.account_paths = [Path(path) for path in account_paths]
        self.keys_path = Path(keys_path) if keys_path is not None else None
        self.snapshot: ConfigSnapshot | None = None
        self.keys: KeyRing | None = None
        self._account_files = SettledSignatures(self.account_paths)
        self._keys_file = SettledSignatures([self.keys_path] if self.keys_path is not None else [])
        self._hashes = PasswordHashes()  # an unchanged SMTP client login keeps its hash from load to load

    def load(self) -> None:
        """The first load: raises ConfigError, since there is no good configuration to fall back on."""
        self._account_files.reading()
        self.snapshot = load_snapshot(self.account_paths, revision=1, hashes=self._hashes)
        if self.keys_path is not None:
            self._keys_file.reading()
            self.keys = load_keys(self.keys_path)

    def reload_accounts(self) -> ConfigSnapshot | None:
        """A candidate snapshot if the account files changed into a valid, different configuration; else ``None``.

        The candidate becomes the current snapshot only through ``accept``,
        once the gateway has applied it: a snapshot the gateway refuses
        leaves the revision where it was.
        """
        if not self._account_files.changed_and_settled():
            return None
        assert self.snapshot is not None, "load() first"
        try:
            loaded = load_snapshot(self.account_paths, revision=self.snapshot.revision + 1, hashes=self._hashes)
        except ConfigError as error:
            log.error("account files not reloaded, still serving revision %d:\n  %s", self.snapshot.revision, _lines(error))
            return None
        if loaded.accounts == self.snapshot.accounts:
            log.info("account files changed but their content did not; still revision %d", self.snapshot.revision)
            return None
        return loaded

    def accept(self, snapshot: ConfigSnapshot) -> None:
        self.snapshot = snapshot
        log.info(
            "account files reloaded: revision %d, accounts: %s",
            snapshot.revision,
            ", ".join(account.key for account in snapshot.accounts) or "none",
        )

    def reload_keys(self) -> KeyRing | None:
        """A new key ring if the keys file changed and is valid; else ``None`` (the old ring stays)."""
        if self.keys_path is None or not self._keys_file.changed_and_settled():
            return None
        try:
            self.keys = load_keys(self.keys_path)
        except ConfigError as error:
            log.error("API keys file not reloaded, the previous keys stay valid:\n  %s", _lines(error))
            return None
        log.info("API keys file reloaded: keys: %s", ", ".join(entry.name for entry in self.keys.entries) or "none")
        return self.keys


def _lines(error: ConfigError) -> str:
    return "\n  ".join(error.problems)


async def watch(
    files: ConfigFiles,
    apply_snapshot: Callable[[ConfigSnapshot], Awaitable[object]],
    apply_keys: Callable[[KeyRing], None],
    interval: float = 1.0,
) -> None:
    """Poll forever (until cancelled); push each new snapshot or key ring to the gateway.

    A snapshot the gateway refuses (an account it cannot serve) is logged in
    one line naming the account and the field, and the previous
    configuration stays in force, whole (the gateway applies all or
    nothing). It is not remembered as applied: the next change of the files
    is loaded and applied again, even if it brings back the same content.
    Any other exception is logged too and the loop goes on: a watcher that
    died silently would leave a gateway serving stale configuration forever.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            # Reading a few small YAML files is fast, but it is blocking I/O: keep it off the loop.
            snapshot = await asyncio.to_thread(files.reload_accounts)
            if snapshot is not None:
                await _apply_accounts(files, snapshot, apply_snapshot)
            keys = await asyncio.to_thread(files.reload_keys)
            if keys is not None:
                apply_keys(keys)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("applying reloaded configuration failed")


async def _apply_accounts(
    files: ConfigFiles, snapshot: ConfigSnapshot, apply_snapshot: Callable[[ConfigSnapshot], Awaitable[object]]
) -> None:
    try:
        await apply_snapshot(snapshot)
    except InvalidAccount as error:  # its text names the account and field, never a value
        assert files.snapshot is not None
        log.error("account files not applied, still serving revision %d: %s", files.snapshot.revision, error)
        return
    files.accept(snapshot)
