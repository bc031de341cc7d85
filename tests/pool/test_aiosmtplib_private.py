"""What ``pool/connection.py`` takes from aiosmtplib beyond ``SMTP``'s documented commands, by name.

An aiosmtplib upgrade that moves one of these fails here rather than in production:

- ``SMTP._ehlo_or_helo_if_needed`` (private): the EHLO a transaction needs first, as ``sendmail`` does it;
- ``aiosmtplib.protocol``'s ``PERIOD_REGEX`` and ``normalize_message_line_endings`` (the DATA text), and
  ``COMMAND_INJECTION_REGEX``, ``MAX_LINE_LENGTH`` and ``MAX_RESPONSE_LENGTH`` (the same checks and limits
  for the command lines it formats and the pipelined replies it parses itself);
- ``SMTPProtocol``: ``write``, ``read_response`` and ``transport``, and the asyncio callbacks the
  pipelining stand-in passes on to it. It must stay a plain ``asyncio.Protocol`` that keeps no read state
  between commands: for a pipelined group the transport talks to another protocol (``set_protocol``),
  then to it again.
"""

from __future__ import annotations

import asyncio

import aiosmtplib.protocol as protocol_module
from aiosmtplib import SMTP
from aiosmtplib.protocol import SMTPProtocol

MODULE_NAMES = (
    "PERIOD_REGEX",
    "normalize_message_line_endings",
    "COMMAND_INJECTION_REGEX",
    "MAX_LINE_LENGTH",
    "MAX_RESPONSE_LENGTH",
)
PROTOCOL_METHODS = ("write", "read_response", "connection_lost", "pause_writing", "resume_writing")


async def test_every_relied_upon_member_exists_in_this_aiosmtplib() -> None:
    assert callable(getattr(SMTP, "_ehlo_or_helo_if_needed", None))
    assert [name for name in MODULE_NAMES if not hasattr(protocol_module, name)] == []
    assert [name for name in PROTOCOL_METHODS if not callable(getattr(SMTPProtocol, name, None))] == []
    assert issubclass(SMTPProtocol, asyncio.Protocol) and not issubclass(SMTPProtocol, asyncio.BufferedProtocol)
    assert SMTPProtocol(loop=asyncio.get_running_loop()).transport is None
