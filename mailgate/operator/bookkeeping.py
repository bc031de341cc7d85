"""kopf's bookkeeping without a write per account: the last handled spec in memory, progress only while retrying.

kopf's default bookkeeping writes to each object the first time it handles
it: a ``last-handled-configuration`` annotation (the diff base) and a
``kopf-managed`` marker. For an operator adopting 10,000 accounts that is
10,000 PATCHes, and 10,000 more watch events for kopf to process, on top of
the finalizer's. Neither is needed here:

- the diff base tells kopf which handler a change calls. Ours are one
  function for create and update, so what matters is only that a spec
  change calls it and nothing else does. Kept in memory (by uid), an
  account is new to each operator process: after a restart kopf calls the
  create handler (never resume, so none is registered), which also handles
  a change made while no operator ran. Only the spec is kept (compact
  JSON), and only the spec is copied per event: kopf's own essence
  deep-copies the whole object, status and managed fields included;
- the progress record is written when a handler must be retried (delete
  while a gateway still serves the account, a listing not done yet); it
  stays in annotations so a retry survives a restart. Only the marker,
  which lets other kopf-based operators tell our annotations from user
  changes, is left out: none handles SmtpAccounts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any, cast

import kopf


class SpecDiffBase(kopf.DiffBaseStorage):
    """The spec each account was last handled with, in this process's memory."""

    def __init__(self) -> None:
        super().__init__()
        self._specs: dict[str, str] = {}

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        """The essence is the spec: the only field a handler here reacts to (``field="spec"``)."""
        return cast(kopf.BodyEssence, {"spec": copy.deepcopy(dict(body.get("spec") or {}))})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        stored = self._specs.get(body.metadata.uid)
        return None if stored is None else cast(kopf.BodyEssence, json.loads(stored))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._specs[body.metadata.uid] = json.dumps(essence, separators=(",", ":"))

    def forget(self, uid: str) -> None:
        """The account is gone (its delete handler succeeded)."""
        self._specs.pop(uid, None)

    def __len__(self) -> int:
        return len(self._specs)


class RetryProgress(kopf.AnnotationsProgressStorage):
    """kopf's handler progress in annotations, without the ``kopf-managed`` marker.

    kopf writes the marker whenever it records progress, also for a handler
    that succeeds at once and whose record is purged in the same patch: then
    the marker alone would cost a PATCH per account.
    """

    def _store_marker(self, prefix: str, patch: kopf.Patch, body: kopf.Body) -> None:
        return None
