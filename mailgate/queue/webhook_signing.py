"""Standard Webhooks signing keys and signatures (https://www.standardwebhooks.com/), without I/O.

Separate from the notifier (``webhooks.py``, which needs aiohttp) so that resolving an
account's signing key (``mailgate.secretrefs``, in the operator and in standalone mode)
checks it with the same rule the notifier signs with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24


def parse_secret(text: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the specification's serialisation).

    Anything else is refused, so that a secret in another provider's format, a bare base64
    string or a password is not silently used as a key the receiver does not share. The decoded
    key must have at least 24 bytes, the specification's minimum: an HMAC key is only as strong
    as its entropy, and anyone who sees one signed request (a log, a proxy, the receiver's
    staff) can test guesses offline at GPU speed; 192 random bits put that out of reach
    (the specification recommends 24 to 64 bytes; longer keys are accepted, HMAC hashes them).
    Surrounding whitespace is ignored (a Secret made from a file often ends with a newline).
    Errors never quote the text: it is a secret, even when malformed.
    """
    value = text.strip()
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must be {SECRET_PREFIX!r} followed by base64")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a webhook secret must be {SECRET_PREFIX!r} followed by base64 (standard alphabet, padded)") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret must decode to at least {MIN_SECRET_BYTES} bytes")
    return key


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``{msg_id}.{timestamp}.{body}``.

    An id containing ``.`` is refused: the full stop delimits the signed content, so such an id
    could make two different (id, timestamp) pairs sign the same bytes (the specification forbids it).
    """
    if "." in msg_id:
        raise ValueError("a webhook id may not contain '.'")
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
