"""A real Prometheus for tests: Debian's `prometheus` on 127.0.0.1, static targets scraped every second.

Installed by `make system-deps` (hack/system-deps.sh), like the other Debian tools the
suite runs. Targets carry the labels the chart's ServiceMonitors give real series
(``namespace``, ``pod``), so dashboard and alert queries see what they would in a cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.smtp_servers import _free_port

SCRAPE_INTERVAL = "1s"


def binary(name: str) -> Path:
    """``prometheus`` or ``promtool`` from PATH, or a failure that says how to install it."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make system-deps` (Debian package prometheus)")
    return Path(found)


@dataclass(frozen=True)
class Target:
    """One /metrics endpoint (``host:port``) and the target labels its series get."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class QueryError(Exception):
    """Prometheus refused a query (it did not parse, or failed to evaluate); the message is Prometheus's."""


class Prometheus:
    """``prometheus`` with a generated config; a context manager that always stops it."""

    def __init__(self, workdir: Path, jobs: Mapping[str, Sequence[Target]], rule_files: Sequence[Path] = ()) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.rule_files = rule_files
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [target.address], "labels": dict(target.labels)} for target in targets],
                }
                for job, targets in self.jobs.items()
            ],
        }

    def __enter__(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config()))
        argv = [
            str(binary("prometheus")), f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self._process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"prometheus not ready within {timeout}s: {self.log()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422 carry Prometheus's explanation
            with error:
                body = json.loads(error.read())
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result's series, each ``{"metric": {labels}, "value": [time, "value"]}``."""
        data = self._get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"metric": {}, "value": data["result"]}]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health, last error and evaluation time."""
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return self._get("/api/v1/alerts")["alerts"]
