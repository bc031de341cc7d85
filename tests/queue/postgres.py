"""A real PostgreSQL for tests and benchmarks: Debian's ``postgresql`` package, started by us.

``initdb`` runs into a fresh temporary directory and the server listens on 127.0.0.1 at a free
port with its socket in that directory, so nothing touches the system cluster. PostgreSQL refuses
to run as root: under root the server runs as the ``postgres`` system user the package creates.
``fsync`` stays on (the default), so commits cost what they cost in production. Installed by
``make system-deps`` (hack/system-deps.sh).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.smtp_servers import _free_port

USER = "postgres"
PASSWORD = "queue-test-Secret-7f3a"  # the tests assert it never shows in a repr or an error


def binary(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"PostgreSQL's {name} not found: run `make system-deps` (Debian package postgresql)")


class PostgresServer:
    """One cluster in a temporary directory; a context manager that always stops it and removes the files."""

    def __init__(self, **settings: str) -> None:
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.settings = {"max_connections": "200", "shared_buffers": "32MB", "fsync": "on", **settings}
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresServer:
        try:
            self._initdb()
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=120, **self._run_as)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr[-2000:]}\n{self.log()}")

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        self._run(
            binary("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",  # the throwaway cluster's files; the server keeps fsync on
        )  # fmt: skip
        pwfile.unlink()

    def _pg_ctl(self, *argv: str) -> None:
        self._run(binary("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *argv)

    def _options(self) -> str:
        settings = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
        return f"-h 127.0.0.1 -p {self.port} -k {self.root} {settings}"

    def start(self) -> None:
        self._pg_ctl("start", "-l", str(self.log_path), "-o", self._options())

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def start_if_stopped(self) -> None:
        """Bring the server back after a test that stopped it and failed before restarting it."""
        status = subprocess.run([binary("pg_ctl"), "-D", str(self.data), "status"], capture_output=True, **self._run_as)
        if status.returncode == 3:  # no server running
            self.start()

    def restart(self) -> None:
        """A fast shutdown (sessions are terminated, in-flight transactions roll back) and a start."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_path), "-o", self._options())

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def create_schema(self, name: str, database: str = "postgres") -> str:
        """A new empty schema; returns a DSN whose connections use it (``search_path``). Much cheaper
        than a database per test: CREATE DATABASE copies and fsyncs a template."""
        self.psql(f'CREATE SCHEMA "{name}"', database)
        return f"{self.dsn(database)}?search_path={name}"

    def drop_schema(self, name: str, database: str = "postgres") -> None:
        self.psql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE', database)

    def psql(self, sql: str, database: str = "postgres", schema: str | None = None) -> str:
        """Run SQL as the superuser; with ``schema``, unqualified names resolve there."""
        if schema is not None:
            sql = f'SET search_path TO "{schema}"; {sql}'
        result = subprocess.run(
            [binary("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, self.dsn(database)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr[-2000:]}")
        return result.stdout

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
