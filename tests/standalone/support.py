"""A real `mailgate serve` / `mailgate dev` child process for tests, and the YAML they read."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.smtp_servers import Upstream, _free_port

SENTINEL = "sentinel-Pa55w0rd-never-logged"


class ServeProcess:
    """`python -m mailgate <args>` with its output in a file (no pipe to fill), stopped with SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailgate", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def output(self) -> str:
        return self.log_path.read_text()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (a condition with a deadline); fails early if the child died."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"mailgate exited with {self.process.returncode}:\n{self.output()}")
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"mailgate not ready within {timeout}s:\n{self.output()}")

    async def wait_output(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the output:\n{self.output()}")
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def start_serve(tmp_path: Path, *args: str, name: str = "serve") -> ServeProcess:
    port = _free_port()
    return ServeProcess(["serve", "--port", str(port), "--reload-interval", "0.05", *args], tmp_path / f"{name}.log", port)


def account_yaml(upstream: Upstream, *, name: str = "billing", namespace: str = "shop", secret: str = "billing-smtp") -> str:
    """An SmtpAccount with login auth against ``upstream`` plus its Secret (stringData)."""
    user, password = next(iter(upstream.users.items()))
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: {namespace}}}
stringData: {{username: {user}, password: {password}}}
---
apiVersion: mailgate.dev/v1alpha1
kind: SmtpAccount
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  server: {{host: 127.0.0.1, port: {upstream.port}, tls: none}}
  auth: {{method: login, secretRef: {{name: {secret}}}}}
  pool: {{maxConnections: 2, acquireTimeoutSeconds: 10}}
"""


def write_atomically(path: Path, text: str) -> None:
    """Write then rename, as editors and ConfigMap volumes do: the reader never sees half a file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


MESSAGE = {"from": "billing@shop.example", "to": ["ana@example.com"], "subject": "hi", "text": "hello"}
