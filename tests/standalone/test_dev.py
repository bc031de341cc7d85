"""`mailgate dev` and `python -m mailgate.demo`, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from mailgate.standalone.dev import READY_PREFIX
from tests.smtp_servers import _free_port
from tests.standalone.support import ServeProcess

pytestmark = pytest.mark.timeout(120)


async def test_dev_banner_curl_line_sends_a_message_that_dev_messages_shows(tmp_path: Path) -> None:
    port = _free_port()
    dev = ServeProcess(["dev", "--port", str(port)], tmp_path / "dev.log", port)
    try:
        await dev.wait_output(READY_PREFIX)
        output = dev.output()
        assert "FOR DEVELOPMENT ONLY" in output
        [curl_line] = [line.strip() for line in output.splitlines() if line.strip().startswith("curl -sS -X POST")]

        curl = await asyncio.create_subprocess_exec(*shlex.split(curl_line), stdout=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(curl.communicate(), 30)
        assert curl.returncode == 0

        message_id = json.loads(stdout)["messageId"]
        async with aiohttp.ClientSession() as session, session.get(f"{dev.url}/dev/messages") as response:
            assert response.status == 200
            [captured] = await response.json()
        assert {"name": "Message-ID", "value": message_id} in captured["headers"]
        assert captured["envelope"]["rcptTos"] == ["you@example.com"]
        assert captured["text"].startswith("It works")
    finally:
        assert dev.stop() == 0, dev.output()


def test_demo_sends_and_shows_a_message_and_exits_zero() -> None:
    result = subprocess.run([sys.executable, "-m", "mailgate.demo"], capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "-> 200" in out
    assert "MAIL FROM:<app@example.com>" in out and "RCPT TO:<ada@example.com>" in out
    assert "Subject: mailgate demo: one real message" in out
    assert "Content-Type: multipart/alternative" in out
    assert "<p>Hello Ada,</p>" in out
    assert out.rstrip().endswith("stopped cleanly)")
