"""``python -m mailgate.demo`` (``make demo``): the product, end to end, in a few seconds.

Starts ``mailgate dev`` as a child process, waits for its ready line, sends
one real message (JSON with a text and an HTML body) through the HTTP send
API, reads back what the capture SMTP server received (``GET
/dev/messages``), prints it, and stops the child with SIGINT as a user's
Ctrl-C would. The exit status is non-zero if any step fails, including a
child that does not shut down cleanly, so the demo doubles as a smoke test.

Only the standard library talks HTTP here, so what is shown is exactly what
any client would see.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

from .standalone.dev import READY_PREFIX, SAMPLE_NAME, SAMPLE_NAMESPACE

START_TIMEOUT = 60.0  # a cold interpreter importing aiohttp, pydantic and aiosmtpd on a slow machine
HTTP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

MESSAGE = {
    "from": "Demo App <app@example.com>",
    "to": ["Ada <ada@example.com>"],
    "subject": "mailgate demo: one real message",
    "text": "Hello Ada,\n\nthis message went through the mailgate HTTP API, the relay and the SMTP pool.\n",
    "html": "<p>Hello Ada,</p><p>this message went through the <b>mailgate</b> HTTP API, the relay and the SMTP pool.</p>",
}


class DemoFailed(Exception):
    pass


class DevProcess:
    """``mailgate dev --port 0`` as a child; its output is collected so a failure can show it."""

    def __init__(self) -> None:
        self.output: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "dev", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="mailgate-dev-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX) and self.url is None:
                self.url = line[len(READY_PREFIX) :].strip()
                self._ready.set()
        self._ready.set()  # the child exited: wake the waiter, which sees no url

    def wait_ready(self) -> str:
        if not self._ready.wait(START_TIMEOUT) or self.url is None:
            raise DemoFailed(f"`mailgate dev` did not become ready within {START_TIMEOUT:.0f}s")
        return self.url

    def stop(self) -> int:
        """SIGINT, then wait; a child that needs SIGKILL is a failure of its graceful shutdown."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise DemoFailed(f"`mailgate dev` did not stop within {STOP_TIMEOUT:.0f}s of SIGINT") from None
        self._reader.join(STOP_TIMEOUT)
        return self.process.returncode


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except (urllib.error.URLError, OSError) as error:
        raise DemoFailed(f"{method} {url}: {error}") from None


def show(captured: dict[str, Any]) -> str:
    envelope = captured["envelope"]
    lines = [
        "The capture SMTP server received:",
        f"  MAIL FROM:<{envelope['mailFrom']}>",
        *(f"  RCPT TO:<{rcpt}>" for rcpt in envelope["rcptTos"]),
        "  headers:",
        *(f"    {header['name']}: {header['value']}" for header in captured["headers"]),
    ]
    for kind in ("text", "html"):
        if captured.get(kind):
            lines += [f"  {kind} body:", *(f"    {line}" for line in captured[kind].splitlines())]
    return "\n".join(lines)


def run(dev: DevProcess) -> None:
    url = dev.wait_ready()
    print(f"mailgate dev is ready at {url}")
    send_url = f"{url}/v1/accounts/{SAMPLE_NAMESPACE}/{SAMPLE_NAME}/messages"
    status, answer = http("POST", send_url, MESSAGE)
    print(f"POST {send_url} -> {status}\n  {json.dumps(answer)}")
    if status != 200:
        raise DemoFailed(f"the send API answered {status}")
    status, messages = http("GET", f"{url}/dev/messages")
    if status != 200:
        raise DemoFailed(f"GET /dev/messages answered {status}")
    ours = [m for m in messages if {"name": "Message-ID", "value": answer["messageId"]} in m["headers"]]
    if not ours:
        raise DemoFailed(f"the capture server has no message with Message-ID {answer['messageId']}")
    print(show(ours[0]))


def main() -> int:
    print("mailgate demo: starting `mailgate dev` (a gateway, a capture SMTP server and a sample account)")
    dev = DevProcess()
    failure: str | None = None
    try:
        run(dev)
    except DemoFailed as error:
        failure = str(error)
    finally:
        try:
            code = dev.stop()
        except DemoFailed as error:
            failure, code = failure or str(error), -1
    if failure is None and code != 0:
        failure = f"`mailgate dev` exited with status {code}"
    if failure is not None:
        print(f"mailgate demo FAILED: {failure}\n--- output of `mailgate dev` ---", file=sys.stderr)
        print("\n".join(dev.output), file=sys.stderr)
        return 1
    print("mailgate demo: OK (sent through the HTTP API, received by the capture server, stopped cleanly)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
