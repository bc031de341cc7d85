"""Salted, deliberately slow hashes of SMTP client passwords.

Apps that speak SMTP authenticate to the gateway with a username and password
of their own (never the upstream's). The operator and standalone mode read
them from Secrets and hash them here, so a gateway only ever holds the hash:
a leaked config snapshot or admin payload gives nobody a working password.

Format: ``scrypt$<log2 n>$<r>$<p>$<salt, base64>$<key, base64>``, one fresh
random salt per hash (two clients with the same password get different
hashes). scrypt is in the standard library and memory-hard; its cost
parameters travel in the string so that they can be raised later without
invalidating existing hashes. Verification compares in constant time and
refuses cost parameters beyond sane bounds (a crafted hash must not be able to
make a gateway allocate gigabytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["DUMMY_HASH", "hash_password", "is_password_hash", "verify_password"]

SCHEME = "scrypt"
LOG2_N = 14  # n = 16384, r = 8: 16 MiB and ~60 ms per hash on a 2020s core
R = 8
P = 1
SALT_BYTES = 16
KEY_BYTES = 32
_MAX_LOG2_N = 20
_MAX_R = 16
_MAX_P = 4
_MAXMEM = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int = KEY_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=length)


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    """Hash ``password`` with a fresh random salt; the result is safe to store and to send to a gateway."""
    if not 1 <= log2_n <= _MAX_LOG2_N:
        raise ValueError(f"log2_n must be between 1 and {_MAX_LOG2_N}")
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, log2_n, R, P)
    return f"{SCHEME}${log2_n}${R}${P}${_b64(salt)}${_b64(key)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P and salt and len(key) >= 16):
        return None
    return log2_n, r, p, salt, key


def is_password_hash(encoded: str) -> bool:
    """Whether ``encoded`` is a hash this module can verify (for validating config, not passwords)."""
    return _parse(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded``; a malformed hash never matches.

    Costs one scrypt derivation (tens of milliseconds of CPU): callers on an
    event loop run it in a thread.
    """
    parsed = _parse(encoded)
    if parsed is None:
        return False
    log2_n, r, p, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, log2_n, r, p, len(key)), key)


# Verified against when a username is unknown, so that a wrong username costs
# as much time as a wrong password and does not reveal which usernames exist.
DUMMY_HASH = f"{SCHEME}${LOG2_N}${R}${P}${_b64(b'mailgate-dummy-s')}${_b64(bytes(KEY_BYTES))}"
