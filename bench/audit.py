"""Audit benchmark: as-of reconstruction, tenant snapshot, erasure (docs/audit-and-rights.md).

Phases, against one durable PostgreSQL (fsync on), in this process (the audit work is
reads and pure folding; the HTTP layer adds the same small cost as for every route):

1. as-of: one subject with 1,000 events (an invoice, preference changes with sealed
   notes, objections), K drawn at random over its history (or now). ``asof_*`` is the
   served path of ``GET .../audit/subjects/...``: the stream cache (services/audit/cache.py)
   reads only newer versions and folds from a checkpoint; then the key is opened, the 25
   cells evaluated with evidence and the JSON encoded (target p99 < 20 ms).
   ``asof_cold_*`` reconstructs from scratch: read and decode all 1,000 events and the
   tenant's stream, fold, evaluate, encode;
2. snapshot: ``write_snapshot`` of a tenant with N subjects (100,000 in full mode; fewer
   with ``--quick``, see ``sizes``) to a CSV file: server-side cursor, fold per subject,
   one row each (target 100k < 20 s);
3. erasure: ``erase_subject`` end to end (append SubjectErased, shred the key, suppression
   record for objected subjects), one subject at a time.

The last stdout line is the JSON result (keys ``asof_p50_ms``, ``asof_p99_ms``,
``snapshot_subjects_per_s``, ``erasure_ms``, ``sizes``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import create_database, latency_summary, local_postgres, machine, run_loop, server_settings, write_result  # noqa: E402
from consent.seed import new_tenant  # noqa: E402
from schemas.events import (  # noqa: E402
    Actor,
    InvoiceRecorded,
    Metadata,
    ObjectionRecorded,
    ObjectionWithdrawn,
    PreferencesChanged,
    PreferenceSetting,
    ProspectRegistered,
)
from schemas.vocabulary import subject_stream, tenant_stream  # noqa: E402
from services.audit.asof import explain_as_of  # noqa: E402
from services.audit.cache import StreamCache  # noqa: E402
from services.audit.erasure import erase_subject  # noqa: E402
from services.audit.loading import load_subject_events, load_tenant, revealer  # noqa: E402
from services.audit.snapshot import write_snapshot  # noqa: E402
from services.devservers import remove_tree  # noqa: E402
from services.ledger.commands import Context, Ledger  # noqa: E402
from services.ledger.migrate import migrate  # noqa: E402
from services.ledger.store import AppendRequest, EventStore, StreamWrite  # noqa: E402
from services.ledger.subject_keys import SubjectKeys, new_master_key, parse_master_key, seal_with  # noqa: E402

TENANT = "bench-garage"
META = Metadata(actor=Actor(kind="importer", id="bench"), method="import")
STAFF = Actor(kind="staff", id="u-bench")
CELLS = [("newsletter", "email"), ("sales_campaign", "sms"), ("aftersales_service", "post"), ("prospect", "phone")]


class Profile(msgspec.Struct, frozen=True):
    asof_iterations: int
    snapshot_subjects: int
    erasures: int


QUICK = Profile(asof_iterations=200, snapshot_subjects=20_000, erasures=20)
FULL = Profile(asof_iterations=1000, snapshot_subjects=100_000, erasures=100)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def append(store: EventStore, writes: list[StreamWrite]) -> None:
    await store.append(AppendRequest(tenant_id=TENANT, writes=writes, metadata=META))


async def seed_big_subject(store: EventStore, keys: SubjectKeys, events: int) -> str:
    """One subject with ``events`` events: an invoice, then preference changes (every
    fifth with a sealed note) and an objection recorded and withdrawn now and then."""
    stream = subject_stream(TENANT, "dealer", "BIG")
    key_id, key = await keys.key_for(TENANT, stream)
    batch: list[Any] = [InvoiceRecorded(invoice_id="F-1", invoice_date=dt.date(2025, 3, 1),
                                        personal=seal_with(key_id, key, stream, {"name": "Bench Klant"}))]
    for i in range(1, events):
        if i % 50 == 0:
            batch.append(ObjectionRecorded(changed_by=STAFF, method="phone"))
        elif i % 50 == 1 and i > 1:
            batch.append(ObjectionWithdrawn(changed_by=STAFF, method="phone"))
        else:
            category, channel = CELLS[i % len(CELLS)]
            note = seal_with(key_id, key, stream, {"note": f"wijziging {i}"}) if i % 5 == 0 else None
            batch.append(PreferencesChanged(
                changes=[PreferenceSetting(category=category, channel=channel,  # type: ignore[arg-type]
                                           value="opt_in" if i % 2 else "opt_out")],
                changed_by=STAFF, method="staff_portal", policy_version="pv-bench", note=note))
    for start in range(0, len(batch), 500):
        await append(store, [StreamWrite(stream, batch[start:start + 500])])
    return "BIG"


async def seed_tenant_subjects(store: EventStore, n: int) -> None:
    """``n`` subjects: customers with one or two invoices, every third with a preference
    change, every tenth a prospect instead."""
    writes: list[StreamWrite] = []
    pending = 0
    for i in range(n):
        stream = subject_stream(TENANT, "dealer", f"C{i:06d}")
        if i % 10 == 0:
            events: list[Any] = [ProspectRegistered(acquired_on=dt.date(2026, 1, 1) + dt.timedelta(days=i % 300),
                                                    how="beurs")]
        else:
            events = [InvoiceRecorded(invoice_id="F-1", invoice_date=dt.date(2022, 1, 1) + dt.timedelta(days=i % 1400))]
            if i % 4 == 0:
                events.append(InvoiceRecorded(invoice_id="F-2", invoice_date=dt.date(2025, 6, 1)))
        if i % 3 == 0:
            events.append(PreferencesChanged(changes=[PreferenceSetting(category="newsletter", channel="email",
                                                                        value="opt_out")],
                                             changed_by=STAFF, method="phone"))
        writes.append(StreamWrite(stream, events))
        pending += len(events)
        if pending >= 4000:
            await append(store, writes)
            writes, pending = [], 0
    if writes:
        await append(store, writes)


async def run(profile: Profile, *, quick: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-audit-"))
    with local_postgres(durable=True) as pg:
        url = await create_database(pg, "bench")
        pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
        assert pool is not None
        async with pool.acquire() as conn:
            await migrate(conn)
        pg_settings = await server_settings(url)
        master = new_master_key()
        store = EventStore(pool)
        await store.start()
        keys = SubjectKeys(pool, parse_master_key(master))
        ledger = Ledger(pool, store, keys)
        try:
            await append(store, [StreamWrite(tenant_stream(TENANT), [new_tenant(TENANT, "Bench Autobedrijf")])])

            started = time.perf_counter()
            ref = await seed_big_subject(store, keys, 1000)
            log(f"seeded one subject with 1000 events in {time.perf_counter() - started:.1f}s")
            encoder = msgspec.json.Encoder()
            big = await store.read_stream(subject_stream(TENANT, "dealer", ref))
            span = big[-1].recorded_at - big[0].recorded_at
            rng = random.Random(7)

            def some_k() -> dt.datetime:  # anywhere in the subject's history, or now
                return big[0].recorded_at + span * rng.random() if rng.random() < 0.8 else dt.datetime.now(dt.timezone.utc)

            # Served path (GET .../audit/subjects/...): the app's stream cache reads only
            # newer versions and folds from a checkpoint; K varies over the history.
            cache = StreamCache(store)
            served: list[float] = []
            for i in range(profile.asof_iterations + 10):
                t0 = time.perf_counter()
                known_at = some_k()
                history = await cache.subject(TENANT, "dealer", ref)
                tenant = await cache.tenant(TENANT)
                reveal = await revealer(keys, TENANT, "dealer", ref)
                view = explain_as_of(history.events, tenant, known_at, dt.date(2026, 1, 15), reveal,
                                     state=history.state_at(known_at))
                body = encoder.encode(view)
                if i >= 10:
                    served.append(time.perf_counter() - t0)
            asof = latency_summary(served)
            # Cold reconstruction: read and decode all 1,000 events and the tenant, fold from scratch.
            cold: list[float] = []
            for i in range(max(50, profile.asof_iterations // 4)):
                t0 = time.perf_counter()
                known_at = some_k()
                events = await load_subject_events(store, TENANT, "dealer", ref)
                tenant = await load_tenant(store, TENANT)
                reveal = await revealer(keys, TENANT, "dealer", ref)
                view = explain_as_of(events, tenant, known_at, dt.date(2026, 1, 15), reveal)
                body = encoder.encode(view)
                cold.append(time.perf_counter() - t0)
            assert view is not None and len(events) == 1000 and body
            asof_cold = latency_summary(cold)
            log(f"as-of served: p50 {asof['p50_ms']} ms, p99 {asof['p99_ms']} ms over {len(served)} iterations;"
                f" cold: p50 {asof_cold['p50_ms']} ms, p99 {asof_cold['p99_ms']} ms over {len(cold)}")

            started = time.perf_counter()
            await seed_tenant_subjects(store, profile.snapshot_subjects)
            log(f"seeded {profile.snapshot_subjects} subjects in {time.perf_counter() - started:.1f}s")
            async with pool.acquire() as conn:
                await conn.execute("ANALYZE ledger.events")
            tenant = await load_tenant(store, TENANT)
            out = workdir / "snapshot.csv"
            async with pool.acquire() as conn:
                with open(out, "w", encoding="utf-8", newline="") as f:
                    t0 = time.perf_counter()
                    summary = await write_snapshot(conn, tenant, dt.datetime.now(dt.timezone.utc),
                                                   dt.date(2026, 1, 15), f)
                    snapshot_s = time.perf_counter() - t0
            subjects = summary.subjects
            assert subjects == profile.snapshot_subjects + 1, subjects  # + the big subject
            log(f"snapshot: {subjects} subjects in {snapshot_s:.2f}s ({subjects / snapshot_s:.0f}/s),"
                f" {out.stat().st_size / 1e6:.1f} MB")

            erasures: list[float] = []
            ctx = Context(actor=Actor(kind="operator", id="bench"), method="system")
            for i in range(profile.erasures):
                ref_i = f"C{i * 3 + 1:06d}"
                await ledger.seal_contact(TENANT, subject_stream(TENANT, "dealer", ref_i), None)
                t0 = time.perf_counter()
                result = await erase_subject(ledger, parse_master_key(master), ctx, TENANT, "dealer", ref_i)
                erasures.append(time.perf_counter() - t0)
                assert not result.already_erased
            erasure = latency_summary(erasures)
            log(f"erasure: p50 {erasure['p50_ms']} ms, p99 {erasure['p99_ms']} ms")
        finally:
            await store.stop()
            await pool.close()
            remove_tree(workdir)
    return {
        "benchmark": "audit",
        "mode": "quick" if quick else "full",
        "asof_p50_ms": asof["p50_ms"],
        "asof_p99_ms": asof["p99_ms"],
        "asof_cold_p50_ms": asof_cold["p50_ms"],
        "asof_cold_p99_ms": asof_cold["p99_ms"],
        "snapshot_subjects_per_s": round(subjects / snapshot_s, 1),
        "snapshot_seconds": round(snapshot_s, 2),
        "erasure_ms": erasure["p50_ms"],
        "erasure_p99_ms": erasure["p99_ms"],
        "sizes": {"asof_events": 1000, "asof_iterations": len(served), "asof_cold_iterations": len(cold), "snapshot_subjects": subjects,
                  "erasures": len(erasures)},
        "targets": {"asof_p99_ms": 20, "snapshot_100k_seconds": 20},
        "setup": {"postgres": pg_settings, "cpus": os.cpu_count()},
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.snapshot_subjects} subjects (whole run < 60 s)")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))
    figures = run_loop(run(QUICK if args.quick else FULL, quick=args.quick))
    write_result("audit", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
