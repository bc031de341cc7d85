"""Fingerprints of secrets for in-memory caches: an HMAC under a key that exists only in this object.

A cache that must recognise a password it has seen (to reuse its slow hash,
or a verification that succeeded) keeps this instead of the password: it
cannot be reversed, and without the key, which is made at random, never
stored and never sent, it cannot be checked against guesses either. The
parts are length-framed, so ``("a\\0b", "c")`` and ``("a", "b\\0c")`` differ.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["KeyedFingerprint"]


class KeyedFingerprint:
    """HMAC-SHA256 of length-framed text parts under a random key of this instance."""

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "<KeyedFingerprint>"

    def __call__(self, *parts: str) -> bytes:
        encoded = [part.encode("utf-8") for part in parts]
        material = b"".join(len(part).to_bytes(4, "big") + part for part in encoded)
        return hmac.new(self._key, material, hashlib.sha256).digest()
