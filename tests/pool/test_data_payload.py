"""The DATA text the pool writes is exactly what aiosmtplib's own ``data()`` would write, for any message.

``_data_payload`` skips aiosmtplib's two regular-expression passes when a message needs neither (already CRLF, no
line starting with a dot: what both doors hand over); the property is that skipping never changes a byte.
"""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.pool.connection import _data_payload

PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"text line", b"\r\n.", b"\n.\r", b" "])
MESSAGES = st.one_of(st.binary(max_size=200), st.lists(PIECES, max_size=40).map(b"".join))


def _as_aiosmtplib_writes(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@settings(max_examples=2000, deadline=None)
@given(MESSAGES)
@example(b"")
@example(b".")
@example(b"a\r\n.\r\n")
@example(b"a\r\nb")
@example(b"a\n\r")
@example(b"From: a@b\r\n\r\nok\r\n")
def test_the_payload_is_aiosmtplibs_whatever_the_message(message: bytes) -> None:
    assert _data_payload(message) == _as_aiosmtplib_writes(message)
