"""`consent-ledger run`: the local stack starts, serves, stops cleanly on Ctrl-C and keeps
its data for the next start; a sender following the eligibility topic converges after a
restart (the broker is in memory: the topics are new) without anyone doing anything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.devservers import free_port
from services.devstack import READY_LINE
from services.ledger.api_keys import split_key
from tests import processes


def wait_for_line(log_path: Path, line: str, proc: subprocess.Popen[bytes], start: int, timeout: float = 90) -> str:
    """The log from byte ``start`` once ``line`` appeared in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_bytes()[start:].decode()
        if line in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {line!r}:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"no {line!r} after {timeout}s:\n{log_path.read_text()}")


def start_stack(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    start = log_path.stat().st_size if log_path.exists() else 0
    proc = processes.start(["run"], env, log_path)
    return proc, wait_for_line(log_path, READY_LINE, proc, start)


def interrupt(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        processes.stop(proc)
        raise AssertionError("consent-ledger run did not stop within 30 s of SIGINT") from None


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "campaign_sender.py"


def sender_filter(db: Path) -> subprocess.CompletedProcess[str]:
    """The example sender's newsletter SMS list of the demo customers, for today."""
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "filter", "--db", str(db), "--tenant", "demo-garage", "--category",
         "newsletter", "--channel", "sms", "--max-age", "5", "-"],
        input="customer_ref\nK1001\nK1002\nK1003\nK1004\n", capture_output=True, text=True, timeout=30)


async def wait_filtered(db: Path, expected: set[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if db.exists():
            done = await asyncio.to_thread(sender_filter, db)
            last = done.stderr
            if done.returncode == 0 and {line.split(",")[1] for line in done.stdout.splitlines()[1:]} == expected:
                return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last}")


def demo_keys(output: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(operator|admin|staff|auditor|sender|importer)\s+(clk_\S+)$", output, re.M))


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder outside pytest's /tmp/pytest-of-<user>: the embedded PostgreSQL runs as
    another user when tests run as root, and a concurrent pytest session (another checkout
    on the same machine) resets that folder to 0700, locking the server out mid-test."""
    with tempfile.TemporaryDirectory(prefix="devstack-") as folder:
        yield Path(folder)


async def test_the_local_stack_starts_stops_on_ctrl_c_and_keeps_its_data(scratch: Path) -> None:
    tmp_path = scratch
    var = tmp_path / "var"
    ports = {name: free_port() for name in ("LEDGER_HTTP_PORT", "LEDGER_PORTAL_PORT", "LEDGER_PG_PORT",
                                             "LEDGER_BROKER_PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("LEDGER_DATABASE_URL", "LEDGER_KAFKA_BOOTSTRAP", "LEDGER_MASTER_KEY")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(LEDGER_VAR_DIR=str(var), LEDGER_PORTAL_BASE_URL=f"http://127.0.0.1:{ports['LEDGER_PORTAL_PORT']}")
    base = f"http://127.0.0.1:{ports['LEDGER_HTTP_PORT']}"
    log_path = tmp_path / "run.log"

    proc, output = start_stack(env, log_path)
    sender_db = tmp_path / "sender.sqlite"
    with open(tmp_path / "sender.log", "wb") as sender_log:
        follower = subprocess.Popen([sys.executable, str(EXAMPLE), "follow", "--bootstrap",
                                     f"127.0.0.1:{ports['LEDGER_BROKER_PORT']}", "--db", str(sender_db)],
                                    stdout=sender_log, stderr=subprocess.STDOUT)
    try:
        await _first_and_second_start(proc, output, env, log_path, base, var, sender_db)
    finally:
        processes.stop(follower)


async def _first_and_second_start(proc: subprocess.Popen[bytes], output: str, env: dict[str, str], log_path: Path,
                                  base: str, var: Path, sender_db: Path) -> None:
    try:
        assert f"{base}/v1" in output
        keys = demo_keys(output)
        assert set(keys) == {"operator", "admin", "staff", "auditor", "sender", "importer"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/v1/tenants/demo-garage",
                                headers={"Authorization": f"Bearer {keys['admin']}"}) as r:
                assert r.status == 200
                tenant = await r.json()
            assert tenant["name"] == "Autobedrijf Demo"
            async with http.get(f"{base}/v1/tenants/demo-garage/subjects/dealer/K1001/events",
                                headers={"Authorization": f"Bearer {keys['auditor']}"}) as r:
                assert r.status == 200
                first_events = (await r.json())["events"]
        # K1001 and K1003 (opted out of e-mail only) may get the newsletter by SMS; K1002's 18
        # months have lapsed; K1004 objected.
        await wait_filtered(sender_db, {"K1001", "K1003"}, 30, "the sender's first copy")
    finally:
        code = interrupt(proc)
    assert code == 0, log_path.read_text()
    assert (var / "master.key").stat().st_mode & 0o777 == 0o600
    assert not (var / "pg" / "postmaster.pid").exists(), "PostgreSQL was stopped"
    for key in keys.values():
        key_id, secret = split_key(key)  # type: ignore[misc]
        assert secret not in (var / "master.key").read_text()

    proc, output = start_stack(env, log_path)
    try:
        new_keys = demo_keys(output)
        assert new_keys["admin"] != keys["admin"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/tenants/demo-garage",
                                headers={"Authorization": f"Bearer {keys['admin']}"}) as r:
                assert r.status == 401, "the previous demo keys are revoked"
            async with http.get(f"{base}/v1/tenants/demo-garage",
                                headers={"Authorization": f"Bearer {new_keys['admin']}"}) as r:
                assert r.status == 200
                assert (await r.json())["version"] == tenant["version"], "the demo tenant is reused, not redone"
            async with http.get(f"{base}/v1/tenants/demo-garage/subjects/dealer/K1001/events",
                                headers={"Authorization": f"Bearer {new_keys['auditor']}"}) as r:
                assert (await r.json())["events"] == first_events
            # The broker started empty. K1001 opts out of newsletter SMS: the sender that kept
            # following converges on its own (the projector publishes everything again).
            async with http.post(f"{base}/v1/tenants/demo-garage/subjects/dealer/K1001/preferences",
                                 headers={"Authorization": f"Bearer {new_keys['staff']}"},
                                 json={"changes": [{"category": "newsletter", "channel": "sms",
                                                    "value": "opt_out"}]}) as r:
                assert r.status == 201, await r.text()
        await wait_filtered(sender_db, {"K1003"}, 60, "the sender to see K1001's opt-out after the restart")
    finally:
        code = interrupt(proc)
    assert code == 0, log_path.read_text()


def children_of(pid: int) -> dict[int, str]:
    """Processes whose parent is ``pid``: {pid: program}."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.rpartition(")")
        if int(rest.split()[1]) == pid:
            found[int(stat.parent.name)] = name.partition("(")[2]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_after_kill_9_of_the_stack_its_broker_dies_and_the_next_start_succeeds(scratch: Path) -> None:
    """`kill -9` gives `consent-ledger run` no time to stop its children: the broker used to
    survive, holding its port, and the next `make run` refused to start."""
    tmp_path = scratch
    var = tmp_path / "var"
    ports = {name: free_port() for name in ("LEDGER_HTTP_PORT", "LEDGER_PORTAL_PORT", "LEDGER_PG_PORT",
                                             "LEDGER_BROKER_PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("LEDGER_DATABASE_URL", "LEDGER_KAFKA_BOOTSTRAP", "LEDGER_MASTER_KEY")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update(LEDGER_VAR_DIR=str(var), LEDGER_PORTAL_BASE_URL=f"http://127.0.0.1:{ports['LEDGER_PORTAL_PORT']}")
    base = f"http://127.0.0.1:{ports['LEDGER_HTTP_PORT']}"
    log_path = tmp_path / "run.log"

    proc, _ = start_stack(env, log_path)
    broker_pid = int((var / "broker.pid").read_text())
    assert broker_pid in children_of(proc.pid), "the pid file names the broker this run started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(broker_pid), "the broker died with its parent"
    assert (var / "pg" / "postmaster.pid").exists(), "PostgreSQL was left running (the next start ends it)"

    proc, output = start_stack(env, log_path)
    try:
        keys = demo_keys(output)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/tenants/demo-garage",
                                headers={"Authorization": f"Bearer {keys['admin']}"}) as r:
                assert r.status == 200
        assert int((var / "broker.pid").read_text()) != broker_pid
    finally:
        code = interrupt(proc)
    assert code == 0, log_path.read_text()
    assert not (var / "broker.pid").exists() and not (var / "pg" / "postmaster.pid").exists()


async def test_a_start_ends_a_broker_its_pid_file_names_and_leaves_other_processes_alone(tmp_path: Path) -> None:
    """Where the parent-death signal is not available (or came too late), the next start
    ends the broker by the pid file the earlier run wrote; a pid that now belongs to
    another program is not touched."""
    from services.devservers import LocalBroker

    pid_file = tmp_path / "broker.pid"
    leftover = subprocess.Popen([LocalBroker.binary(), "broker", "--listener-url",
                                 f"tcp://127.0.0.1:{free_port()}", "--storage-engine", "memory://tansu/"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        assert not LocalBroker(pid_file=pid_file).end_leftover()
        assert other.poll() is None and not pid_file.exists()
        pid_file.write_text(f"{leftover.pid}\n")
        assert LocalBroker(pid_file=pid_file).end_leftover()
        assert leftover.wait(5) is not None and not pid_file.exists()
    finally:
        processes.stop(leftover)
        processes.stop(other)
