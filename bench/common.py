"""What every benchmark needs: a durable PostgreSQL, the ledger as a separate process,
a closed-loop load driver, percentiles, and one JSON result per run.

The ledger runs in its own process (``python -m services.cli serve``) so the load
generator, which is Python too, does not share an event loop or a GIL with the server;
both still share this machine's CPUs with PostgreSQL (see docs/performance.md).

A benchmark ends with :func:`write_result`: the figures go to
``bench/results/<name>-<timestamp>.json`` and, as the LAST line on stdout, the same
JSON object, so scripts can read ``tail -n 1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg
import msgspec

from services.devservers import LocalPostgres, free_port, remove_tree, stop_process

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
T = TypeVar("T")


# -- servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def local_postgres(*, durable: bool = True, root: Path | None = None) -> Iterator[LocalPostgres]:
    """A fresh PostgreSQL 18 in a temporary folder; fsync on unless ``durable=False``."""
    folder = root or Path(tempfile.mkdtemp(prefix="ledger-bench-pg-"))
    os.chmod(folder, 0o755)
    server = LocalPostgres(folder / "data", port=free_port(), durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if root is None:
            remove_tree(folder)


async def create_database(server: LocalPostgres, name: str) -> str:
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url_for(name)


async def server_settings(url: str) -> dict[str, str]:
    """The durability settings actually in force, for the result file."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method', 'commit_delay', 'server_version')"
        )
    finally:
        await conn.close()
    return {r["name"]: r["setting"] for r in rows}


class LedgerProcess:
    """``consent-ledger serve`` in a child process on a free port.

    The log goes to a file (as in production, the server writes its JSON log lines);
    ``extra_env`` sets LEDGER_* settings such as the log level or the pool size.
    """

    def __init__(self, database_url: str, master_key: str, *, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.master_key = master_key
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env.update({
            "LEDGER_DATABASE_URL": self.database_url,
            "LEDGER_MASTER_KEY": self.master_key,
            "LEDGER_HTTP_HOST": "127.0.0.1",
            "LEDGER_HTTP_PORT": str(self.port),
        })
        env.update(self.extra_env)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the ledger exited with {self._proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the ledger did not become ready in {timeout}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        return process_cpu_seconds(self.pid)

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples without labels (name -> value)."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LedgerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU of a process; with ``reaped_children`` also that of its
    children that have exited and been waited for (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    ticks = os.sysconf("SC_CLK_TCK")
    total = int(fields[11]) + int(fields[12])  # utime + stime
    if reaped_children:
        total += int(fields[13]) + int(fields[14])  # cutime + cstime
    return total / ticks


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def tree_cpu_seconds(parent_pid: int) -> float:
    """CPU of a process and all its children so far: the live ones, and the exited ones
    through the parent's children's time (the postmaster and its backends; a server and
    its worker processes)."""
    total = process_cpu_seconds(parent_pid, reaped_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent_pid:  # ppid
            child = process_cpu_seconds(int(stat.parent.name))
            if not math.isnan(child):  # it may just have exited
                total += child
    return total


def postmaster_pid(server: LocalPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


class CpuMeter:
    """Where the CPU went while the meter was entered (it may be entered many times, e.g.
    once per slice of a phase; the figures add up): this load generator, the ledger
    server, PostgreSQL, and the whole machine, which includes whatever else runs on it."""

    PARTIES: Final = ("load_generator", "ledger_server", "postgres", "machine")

    def __init__(self, *, server_pid: int | None = None, postgres_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.postgres_pid = postgres_pid
        self.wall = 0.0
        self.seconds: dict[str, float] = dict.fromkeys(self.PARTIES, 0.0)

    def _sample(self) -> tuple[float, ...]:
        busy, _ = machine_busy_seconds()
        return (time.perf_counter(), time.process_time(),
                tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0,
                tree_cpu_seconds(self.postgres_pid) if self.postgres_pid else 0.0, busy)

    def __enter__(self) -> CpuMeter:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.wall += end[0] - self._start[0]
        for name, s, e in zip(self.PARTIES, self._start[1:], end[1:]):
            self.seconds[name] += e - s

    @property
    def cores(self) -> dict[str, float]:
        """Average cores busy (1.0 = one core all the time), and what others used."""
        if not self.wall:
            return {}
        out = {n: round(v / self.wall, 2) for n, v in self.seconds.items()
               if n != "ledger_server" or self.server_pid}
        out["other_processes"] = round(out["machine"] - sum(v for k, v in out.items() if k != "machine"), 2)
        return out

    def per_event_us(self, events: int) -> dict[str, float]:
        """CPU microseconds per event of this generator, the server and PostgreSQL."""
        if not events:
            return {}
        return {k: round(v / events * 1e6, 1) for k, v in self.seconds.items()
                if k in ("load_generator", "postgres") or (k == "ledger_server" and self.server_pid)}


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_end": round(load1, 2),
        "loadavg_5m_at_end": round(load5, 2),
    }


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop, as the server does (less CPU taken from the
    server on this small machine); plain asyncio if uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# -- load ------------------------------------------------------------------------------


class LoadResult(msgspec.Struct, kw_only=True):
    """One closed-loop phase. Counts only operations that completed inside the window."""

    operations: int
    events: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, of the counted operations
    first_error: str | None = None
    total_events: int = 0  # warm-up included: what the CPU measured around the phase paid for

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        lat = latency_summary(self.latencies)
        return {"events_per_s": round(self.events_per_s, 1), "operations": self.operations, "events": self.events,
                "errors": self.errors, "seconds": round(self.seconds, 2), **lat}


def merge_results(results: Sequence[LoadResult]) -> LoadResult:
    """One result from the slices of a phase (rates over the summed measured time)."""
    return LoadResult(
        operations=sum(r.operations for r in results), events=sum(r.events for r in results),
        errors=sum(r.errors for r in results), seconds=sum(r.seconds for r in results),
        latencies=[x for r in results for x in r.latencies],
        first_error=next((r.first_error for r in results if r.first_error), None),
        total_events=sum(r.total_events for r in results),
    )


Operation = Callable[[int, int], Awaitable[int]]
"""``op(worker, iteration) -> events written``; raising counts as an error."""


async def closed_loop(op: Operation, *, workers: int, seconds: float, warmup: float) -> LoadResult:
    """``workers`` tasks each run ``op`` back to back for ``warmup + seconds``.

    Only operations that start after the warm-up and finish before the end are counted
    (throughput and latency); each worker stops at the end, so nothing is left queued.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    start, end = t0 + warmup, t0 + warmup + seconds
    latencies: list[float] = []
    counters = {"ops": 0, "events": 0, "errors": 0, "all": 0}
    first_error: list[str] = []

    async def worker(w: int) -> None:
        i = 0
        perf = time.perf_counter
        while True:
            began = loop.time()
            if began >= end:
                return
            p0 = perf()
            try:
                n = await op(w, i)
            except Exception as exc:  # counted and reported, never hidden
                if began >= start:
                    counters["errors"] += 1
                    if not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")
                i += 1
                continue
            elapsed = perf() - p0
            i += 1
            counters["all"] += n
            if began >= start and loop.time() <= end:
                counters["ops"] += 1
                counters["events"] += n
                latencies.append(elapsed)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return LoadResult(operations=counters["ops"], events=counters["events"], errors=counters["errors"],
                      seconds=seconds, latencies=latencies, first_error=first_error[0] if first_error else None,
                      total_events=counters["all"])


def threaded_closed_loop(op: Callable[[int, int], int], *, workers: int, seconds: float, warmup: float) -> LoadResult:
    """:func:`closed_loop` for blocking clients (one thread per worker)."""
    import threading

    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    counters = {"ops": 0, "events": 0, "errors": 0, "all": 0}
    first_error: list[str] = []

    def worker(w: int) -> None:
        i = 0
        while True:
            began = time.perf_counter()
            if began >= end:
                return
            try:
                n = op(w, i)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    if began >= start:
                        counters["errors"] += 1
                        if not first_error:
                            first_error.append(f"{type(exc).__name__}: {exc}")
                i += 1
                continue
            done = time.perf_counter()
            i += 1
            with lock:
                counters["all"] += n
            if began >= start and done <= end:
                with lock:
                    counters["ops"] += 1
                    counters["events"] += n
                    latencies.append(done - began)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(operations=counters["ops"], events=counters["events"], errors=counters["errors"],
                      seconds=seconds, latencies=latencies, first_error=first_error[0] if first_error else None,
                      total_events=counters["all"])


# -- statistics ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks
    (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)

    def ms(q: float) -> float:
        v = percentile(ordered, q)
        return round(v * 1000, 2) if not math.isnan(v) else math.nan

    return {"p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else math.nan}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- results ---------------------------------------------------------------------------


def write_result(name: str, figures: dict[str, Any], *, folder: Path = RESULTS) -> Path:
    """Save ``figures`` as JSON and print it as the last line of stdout."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{name}-{stamp}.json"
    text = msgspec.json.encode(figures).decode()
    path.write_text(msgspec.json.format(text, indent=2) + "\n")
    sys.stdout.flush()
    print(text, flush=True)
    return path
