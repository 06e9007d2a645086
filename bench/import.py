"""DMS import throughput: a generated invoice export into the ledger, against raw COPY.

Phases, one after the other, against one durable PostgreSQL (fsync on):

1. generate: a CSV as a Dutch DMS writes it (``;``, ``dd-mm-yyyy``, a header, name,
   e-mail and city on every row), N invoice rows for N/5 customers, sorted by invoice
   date so that every batch touches many customers (the realistic, harder order);
2. ingest: the importer in-process (services/importer/pipeline.py), exactly as
   ``consent-ledger import`` runs it: parse, check, seal the contact per subject,
   batched lookups, atomic appends of 5,000 rows with the invoice index in the same
   transaction. Timed from opening the file to the last commit;
3. projector: the eligibility projector (services/projector/, if present) applies the
   whole ledger from the event store until it has caught up (no Kafka: the same
   ``Projection.apply`` the Kafka consumer calls);
4. copy: asyncpg ``copy_to_table`` of the same file into a plain table (no index, no
   checks, PostgreSQL parses the CSV itself): the ceiling for "rows into PostgreSQL";
5. copy_records: the file parsed in Python (csv module) and sent with
   ``copy_records_to_table``: what a client-side bulk load costs;
6. parallel: the same file imported for two other tenants at once, each in a process of
   its own (as two ``consent-ledger import`` runs, one per dealer), tenants chosen in
   different log partitions, so their bulk appends take different head locks
   (docs/event-store.md, "Partitions"): ``parallel_rows_per_s`` (both files' rows over the
   wall time) against ``ingest_rows_per_s`` of one import alone.

Figures: ``ingest_rows_per_s``, ``copy_rows_per_s`` (phase 4), ``ratio_vs_copy``,
``end_to_end_rows_per_s`` (rows / (ingest + projector catch-up)), ``peak_rss_mb`` (this
process, which runs the importer: its high-water mark). ``--quick`` uses fewer rows
(``sizes`` says how many) and finishes in well under a minute. The last stdout line is
the JSON object (bench/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import csv
import datetime as dt
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import structlog

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import create_database, local_postgres, machine, ratio, run_loop, server_settings, write_result  # noqa: E402
from schemas.events import Actor  # noqa: E402
from services.devservers import remove_tree  # noqa: E402
from services.importer.mapping import DEFAULT_MAPPING  # noqa: E402
from services.importer.pipeline import DEFAULT_BATCH, Importer  # noqa: E402
from services.ledger.commands import Context, Ledger  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import EventStore  # noqa: E402
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key  # noqa: E402

TENANT = "bench-garage"
# The parallel phase's tenants: log partitions 25 and 31 of 32 (bench-garage is in 13).
PARALLEL_TENANTS = ("bench-garage-00", "bench-garage-01")
FULL_ROWS, QUICK_ROWS = 1_000_000, 50_000
INVOICES_PER_CUSTOMER = 5
HEADER = ("customer_ref", "invoice_id", "invoice_date", "name", "email", "city")
CITIES = ("Amsterdam", "Rotterdam", "Den Haag", "Utrecht", "Eindhoven", "Groningen", "Tilburg", "Almere",
          "Breda", "Nijmegen", "'s-Hertogenbosch", "Zwolle")


def generate(path: Path, rows: int, customers: int, seed: int = 7) -> None:
    """Invoices sorted by date; each customer has about rows/customers of them. Written
    as it is generated (constant memory)."""
    rnd = random.Random(seed)
    start = dt.date(2019, 1, 1).toordinal()
    days = dt.date(2025, 12, 31).toordinal() - start
    per_day = rows / days
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(HEADER)
        n = 0
        for day in range(days + 1):
            date = dt.date.fromordinal(start + day).strftime("%d-%m-%Y")
            count = int((day + 1) * per_day) - int(day * per_day)
            for _ in range(count):
                if n >= rows:
                    break
                c = rnd.randrange(customers)
                w.writerow((f"K{c:07d}", f"F{n:09d}", date, f"Klant {c}", f"klant{c}@example.nl",
                            CITIES[c % len(CITIES)]))
                n += 1
        while n < rows:  # rounding leftovers on the last day
            c = rnd.randrange(customers)
            w.writerow((f"K{c:07d}", f"F{n:09d}", "31-12-2025", f"Klant {c}", f"klant{c}@example.nl", CITIES[0]))
            n += 1


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


async def ingest(url: str, path: Path, tenant: str = TENANT) -> dict[str, Any]:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
    assert pool is not None
    store = EventStore(pool)
    await store.start()
    try:
        ledger = Ledger(pool, store, SubjectKeys(pool, parse_master_key(new_master_key())))
        await ledger.create_tenant(Context(Actor(kind="operator", id="bench")), tenant, "Bench garage")
        rejected: list[object] = []
        started = time.perf_counter()
        cpu_started = time.process_time()
        summary = await Importer(ledger, batch_size=DEFAULT_BATCH).run_file(
            str(path), tenant=tenant, source="dealer", mapping=DEFAULT_MAPPING,
            actor=Actor(kind="importer", id="bench"), on_reject=rejected.append)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await store.stop()
        await pool.close()
    if summary.aborted or rejected:
        raise RuntimeError(f"the import did not go through: aborted={summary.aborted} rejected={len(rejected)}")
    return {"rows": summary.rows, "events": summary.events, "batches": summary.batches, "retries": summary.retries,
            "seconds": round(seconds, 3), "rows_per_s": round(summary.rows / seconds, 1),
            "importer_seconds": summary.timings, "cpu_seconds": round(cpu, 3)}


def _ingest_process(url: str, path: str, tenant: str) -> dict[str, Any]:
    return asyncio.run(ingest(url, Path(path), tenant))


async def parallel_ingest(url: str, path: Path, rows: int) -> dict[str, Any]:
    """PARALLEL_TENANTS imported at once, one process each; rows of all over the wall time."""
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(PARALLEL_TENANTS), mp_context=context) as pool:
        # Start-up (interpreter, imports) is not the import's: warm the processes first.
        await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.5) for _ in PARALLEL_TENANTS))
        started = time.perf_counter()
        each = await asyncio.gather(*(loop.run_in_executor(pool, _ingest_process, url, str(path), t)
                                      for t in PARALLEL_TENANTS))
        seconds = time.perf_counter() - started
    total = rows * len(PARALLEL_TENANTS)
    return {"tenants": list(PARALLEL_TENANTS), "seconds": round(seconds, 3), "rows_per_s": round(total / seconds, 1),
            "each_rows_per_s": [e["rows_per_s"] for e in each]}


async def catch_up_projector(url: str) -> dict[str, Any] | None:
    """The projector applies the whole ledger; None if there is no projector (yet)."""
    try:
        from services.projector.clock import SystemClock
        from services.projector.projection import Projection, apply_until_caught_up
    except ImportError:
        return None
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    assert pool is not None
    try:
        heads = {r[0]: r[1] for r in await pool.fetch(
            "SELECT log_partition, position FROM ledger.partitions WHERE position > 0")}
        head = await pool.fetchval("SELECT count(*) FROM ledger.events")
        started = time.perf_counter()
        position = await apply_until_caught_up(Projection(pool, clock=SystemClock()), batch=5000)
        seconds = time.perf_counter() - started
        subjects = await pool.fetchval("SELECT count(*) FROM projector.subjects")
    finally:
        await pool.close()
    if position != heads:
        raise RuntimeError(f"the projector stopped at {position}, the ledger heads are {heads}")
    return {"events": head, "seconds": round(seconds, 3), "events_per_s": round(head / seconds, 1),
            "subjects": subjects}


async def copy_file(url: str, path: Path, rows: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS bench; DROP TABLE IF EXISTS bench.raw_invoices;"
                           " CREATE TABLE bench.raw_invoices (customer_ref text, invoice_id text, invoice_date date,"
                           " name text, email text, city text)")
        await conn.execute("SET datestyle = 'ISO, DMY'")
        started = time.perf_counter()
        await conn.copy_to_table("raw_invoices", schema_name="bench", source=str(path), format="csv",
                                 delimiter=";", header=True)
        seconds = time.perf_counter() - started
        copied = await conn.fetchval("SELECT count(*) FROM bench.raw_invoices")
    finally:
        await conn.close()
    assert copied == rows, (copied, rows)
    return {"rows": copied, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1)}


async def copy_records(url: str, path: Path, rows: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench.raw_records; CREATE TABLE bench.raw_records"
                           " (customer_ref text, invoice_id text, invoice_date date, name text, email text, city text)")
        started = time.perf_counter()

        def chunks() -> Any:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.reader(f, delimiter=";")
                next(reader)
                chunk: list[tuple[Any, ...]] = []
                for r in reader:
                    d, m, y = r[2].split("-")
                    chunk.append((r[0], r[1], dt.date(int(y), int(m), int(d)), r[3], r[4], r[5]))
                    if len(chunk) == 20_000:
                        yield chunk
                        chunk = []
                if chunk:
                    yield chunk

        for chunk in chunks():
            await conn.copy_records_to_table("raw_records", schema_name="bench", records=chunk)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1)}


async def run(rows: int, customers: int, mode: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-import-"))
    try:
        path = workdir / "facturen.csv"
        t0 = time.perf_counter()
        generate(path, rows, customers)
        generated = {"seconds": round(time.perf_counter() - t0, 3), "bytes": path.stat().st_size}
        with local_postgres(durable=True) as pg:
            url = await create_database(pg, "bench_import")
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            pg_settings = await server_settings(url)
            structlog.get_logger().info("bench_phase", phase="ingest", rows=rows)
            ingested = await ingest(url, path)
            rss = peak_rss_mb()
            structlog.get_logger().info("bench_phase", phase="projector")
            projected = await catch_up_projector(url)
            structlog.get_logger().info("bench_phase", phase="copy")
            copied = await copy_file(url, path, rows)
            records = await copy_records(url, path, rows)
            structlog.get_logger().info("bench_phase", phase="parallel", tenants=len(PARALLEL_TENANTS))
            parallel = await parallel_ingest(url, path, rows)
    finally:
        remove_tree(workdir)
    end_to_end_seconds = ingested["seconds"] + (projected["seconds"] if projected else 0.0)
    return {
        "benchmark": "import",
        "mode": mode,
        "ingest_rows_per_s": ingested["rows_per_s"],
        "copy_rows_per_s": copied["rows_per_s"],
        "ratio_vs_copy": ratio(ingested["rows_per_s"], copied["rows_per_s"]),
        "copy_records_rows_per_s": records["rows_per_s"],
        "ratio_vs_copy_records": ratio(ingested["rows_per_s"], records["rows_per_s"]),
        "end_to_end_rows_per_s": round(rows / end_to_end_seconds, 1),
        "parallel_rows_per_s": parallel["rows_per_s"],
        "ratio_parallel_vs_one": ratio(parallel["rows_per_s"], ingested["rows_per_s"]),
        "projector": "caught up" if projected else "absent (services/projector has no Projection yet)",
        "peak_rss_mb": rss,
        "sizes": {"rows": rows, "customers": customers, "file_bytes": generated["bytes"]},
        "phases": {"generate": generated, "ingest": ingested, "projector": projected, "copy": copied,
                   "copy_records": records, "parallel": parallel},
        "setup": {"batch_size": DEFAULT_BATCH, "postgres": pg_settings,
                  "event_loop": type(asyncio.get_running_loop()).__module__},
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows instead of {FULL_ROWS:,}")
    parser.add_argument("--rows", type=int, help="override the number of invoice rows")
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    customers = max(1, rows // INVOICES_PER_CUSTOMER)
    # Logs go to stderr: stdout ends with the one JSON line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    mode = "quick" if args.quick and not args.rows else ("custom" if args.rows else "full")
    figures = run_loop(run(rows, customers, mode))
    write_result("import", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
