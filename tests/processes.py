"""Helpers for tests that run `consent-ledger` as a real process (kill -9, SIGINT, logs)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from services.devservers import stop_process


def consent_ledger() -> list[str]:
    """The installed console script next to this interpreter (or ``python -m services.cli``)."""
    script = Path(sys.executable).with_name("consent-ledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``consent-ledger <args>``; stdout and stderr go to ``log_path`` (appended)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen([*consent_ledger(), *args], env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    """Wait until GET ``url`` answers 200, failing early (with the log) if the process dies."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    return stop_process(proc, timeout)


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (two processes with SO_REUSEPORT: two)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for r in rows if r[1] == f"0100007F:{port:04X}" and r[3] == "0A")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
