"""``consent-ledger projector rebuild``: the read model again, from the PostgreSQL ledger.

Built for speed:

1. one REPEATABLE READ snapshot of ``ledger.events``, exported (``pg_export_snapshot``)
   so that every worker reads exactly the same events; the tenant streams are folded first
   (their final term matrices are what the subjects are evaluated with);
2. the subject streams are split by a hash of the stream id over ``workers`` processes
   (all CPUs: the fold and the rules are Python). Each worker reads its share in ledger
   order with a server-side cursor (large fetches), decodes with msgspec, folds in memory
   with the same ``apply_subject`` the live projector uses, evaluates every subject once
   with the pure rules, and streams its rows into ``projector.subjects_new`` with COPY
   (PostgreSQL inserts while Python evaluates). Indexes are built afterwards;
3. swap, in one transaction: lock the live tables against writers (readers go on), apply
   what the ledger committed after the snapshot, carry over what is on the topic
   (``published_hash``: a rebuild publishes nothing by itself), drop the old tables, rename
   the new ones and their indexes, and record the checkpoint (the ledger position the
   model is complete through). A live projector blocked on the lock continues on the new
   tables; events at or below the checkpoint are skipped as already applied.

A subject whose rebuilt matrix differs from the published one is left pending; the
projector's maintenance loop publishes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.subject import SubjectState, apply_subject
from consent.tenant import TenantState, apply_tenant
from consent.terms import TermMatrix
from schemas.events import Metadata, RecordedEvent, decode_event
from schemas.vocabulary import parse_subject_stream
from services.errors import LedgerError
from services.ledger.store import log_origin_position, partition_count, partition_heads, read_partitions, scan_log
from services.projector.clock import Clock
from services.projector.readmodel import (
    SUBJECT_COLUMNS,
    SUBJECT_SELECT_COLUMNS,
    SubjectRow,
    decode_state,
    encode_state,
    encode_tenant,
    evaluate_subject,
    row_from_record,
    suppressed,
    upsert_subject_rows,
)

log = structlog.get_logger(__name__)

_REBUILD_LOCK: Final = 0x72656275696C64  # "rebuild"
_NO_TERMS: Final = TermMatrix()
TENANT_COLUMNS: Final = ("tenant_id", "version", "last_position", "state", "terms_version", "reeval_version",
                         "reeval_after_source", "reeval_after_ref")
_metadata_decoder: Final = msgspec.json.Decoder(Metadata)


class RebuildReport(msgspec.Struct, kw_only=True):
    events: int = 0
    subjects: int = 0
    tenants: int = 0
    workers: int = 1
    fold_seconds: float = 0.0  # the slowest worker's read and fold (the rest of build_seconds: evaluate, COPY)
    caught_up_events: int = 0
    # Per log partition (index = partition), the position the model is complete through.
    rebuilt_through: list[int] = msgspec.field(default_factory=list)
    build_seconds: float = 0.0
    index_seconds: float = 0.0
    swap_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class RebuildInProgress(LedgerError):
    """Another rebuild holds the lock (``consent-ledger projector rebuild`` says so, exit 1)."""


class Tenants(msgspec.Struct, frozen=True):
    """The tenants as folded from the snapshot: state and the version of the last term edit."""

    states: dict[str, TenantState]
    terms_version: dict[str, int]


_tenants_encoder: Final = msgspec.msgpack.Encoder()
_tenants_decoder: Final = msgspec.msgpack.Decoder(Tenants)


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    """row_to_recorded by column index (store.SCAN_COLUMNS; the rebuild reads a million)."""
    return RecordedEvent(
        position=row[0], event_id=row[1], stream_id=row[2], version=row[3], tenant_id=row[4], event_type=row[5],
        schema_version=row[6], recorded_at=row[7], occurred_on=row[8], event=decode_event(row[9]),
        metadata=_metadata_decoder.decode(row[10]), hash=bytes(row[11]).hex(), partition=row[12],
    )


def subject_row(state: SubjectState, tenants: Tenants, on: dt.date, published_hash: bytes | None) -> SubjectRow:
    """The read-model row of a folded subject (what the live projector would write)."""
    if state.erased is not None:
        state = suppressed(state)
    tenant = tenants.states.get(state.tenant_id)
    evaluation = evaluate_subject(state, tenant.terms if tenant is not None else _NO_TERMS, on)
    return SubjectRow(
        tenant_id=state.tenant_id, source=state.source, customer_ref=state.customer_ref, version=state.version,
        last_position=state.last_position, erased=state.erased is not None, state=encode_state(state),
        terms_version=tenants.terms_version.get(state.tenant_id, 0), evaluated_on=on,
        next_change=evaluation.next_change, matrix_hash=evaluation.matrix_hash, published_hash=published_hash,
    )


def _row_tuple(r: SubjectRow) -> tuple[object, ...]:
    return (r.tenant_id, r.source, r.customer_ref, r.version, r.last_position, r.erased, r.state, r.terms_version,
            r.evaluated_on, r.next_change, r.matrix_hash, r.published_hash, r.rules_version)


def _apply_tenant_event(tenants: Tenants, recorded: RecordedEvent) -> bool:
    """Fold one tenant event; True if it changed the tenant's term matrix."""
    before = tenants.states.get(recorded.tenant_id)
    state = apply_tenant(before, recorded)
    tenants.states[recorded.tenant_id] = state
    if before is None or state.terms != before.terms:
        tenants.terms_version[recorded.tenant_id] = recorded.version
        return True
    return False


# ---------------------------------------------------------------------------------------
# The worker: one share of the subject streams
# ---------------------------------------------------------------------------------------


class Share(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    snapshot: str
    index: int
    workers: int
    on: dt.date
    tenants: bytes  # Tenants, msgpack
    fetch_size: int


class ShareReport(msgspec.Struct, kw_only=True):
    events: int
    subjects: int
    fold_seconds: float  # reading and folding
    seconds: float  # ... and evaluating and writing


def build_share(share_msgpack: bytes) -> bytes:
    """Process entry point (msgpack in and out: cheap to pass between processes)."""
    share = msgspec.msgpack.decode(share_msgpack, type=Share)
    return msgspec.msgpack.encode(asyncio.run(_build_share(share)))


async def _build_share(share: Share) -> ShareReport:
    started = time.perf_counter()
    tenants = _tenants_decoder.decode(share.tenants)
    read = await asyncpg.connect(share.database_url)
    write = await asyncpg.connect(share.database_url)
    # Millions of small, acyclic structs: the cyclic GC would walk them again and again
    # (the fold slows down as it grows). Nothing here makes cycles; collect once at the end.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        subjects: dict[str, SubjectState] = {}
        events = 0
        async with read.transaction(isolation="repeatable_read", readonly=True):
            await read.execute(f"SET TRANSACTION SNAPSHOT '{share.snapshot}'")
            # The exported snapshot bounds what is read: exactly what the heads said.
            cursor = await scan_log(read, "subject/%", shares=share.workers, share=share.index)
            get = subjects.get
            while True:
                rows = await cursor.fetch(share.fetch_size)
                for row in rows:
                    recorded = _recorded(row)
                    stream = recorded.stream_id
                    subjects[stream] = apply_subject(get(stream), recorded)
                events += len(rows)
                if len(rows) < share.fetch_size:
                    break
            published = {
                f"subject/{r[0]}/{r[1]}/{r[2]}": r[3] for r in await read.fetch(
                    "SELECT tenant_id, source, customer_ref, published_hash FROM projector.subjects"
                    " WHERE (hashtext('subject/' || tenant_id || '/' || source || '/' || customer_ref)"
                    " & 2147483647) % $1 = $2", share.workers, share.index)
            }
        folded = time.perf_counter() - started

        async def rows_out() -> AsyncIterator[tuple[object, ...]]:
            for i, stream in enumerate(sorted(subjects)):
                yield _row_tuple(subject_row(subjects[stream], tenants, share.on, published.get(stream)))
                if i % 2000 == 1999:
                    await asyncio.sleep(0)  # let the COPY writer flush

        await write.copy_records_to_table("subjects_new", schema_name="projector", columns=list(SUBJECT_COLUMNS),
                                          records=rows_out())
        return ShareReport(events=events, subjects=len(subjects), fold_seconds=folded,
                           seconds=time.perf_counter() - started)
    finally:
        if gc_was_enabled:
            gc.enable()
        await read.close()
        await write.close()


# ---------------------------------------------------------------------------------------
# The rebuild
# ---------------------------------------------------------------------------------------


EVENTS_PER_WORKER: Final = 250_000
"""Below this many events per extra process, starting it (~1 s) costs more than it saves."""


def default_workers(events: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, events // EVENTS_PER_WORKER))


async def rebuild(
    database_url: str, *, clock: Clock, workers: int | None = None, fetch_size: int = 20_000,
    lock_timeout_s: float = 30.0,
) -> RebuildReport:
    """Rebuild ``projector.subjects`` and ``projector.tenants`` from ``ledger.events`` and
    swap them in. Safe while a live projector runs (it waits on the swap, briefly)."""
    report = RebuildReport()
    started = time.perf_counter()
    on = clock.today()
    snap_conn = await asyncpg.connect(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _REBUILD_LOCK):
            raise RebuildInProgress("another rebuild is running")
        for table in ("subjects", "tenants"):
            await conn.execute(f"DROP TABLE IF EXISTS projector.{table}_new")
            await conn.execute(f"CREATE TABLE projector.{table}_new (LIKE projector.{table} INCLUDING DEFAULTS"
                               " INCLUDING CONSTRAINTS INCLUDING STORAGE)")

        # 1. the snapshot, and the tenants in it
        tenants = Tenants(states={}, terms_version={})
        async with snap_conn.transaction(isolation="repeatable_read", readonly=True):
            heads = await partition_heads(snap_conn)
            snapshot = await snap_conn.fetchval("SELECT pg_export_snapshot()")
            workers = report.workers = workers or default_workers(
                sum(heads.values()) - len(heads) * await log_origin_position(snap_conn))
            async for row in scan_log(snap_conn, "tenant/%"):
                recorded = _recorded(row)
                if recorded.stream_id == f"tenant/{recorded.tenant_id}":
                    _apply_tenant_event(tenants, recorded)
                    report.events += 1

            # 2. the subjects, in parallel shares of the same snapshot
            shares = [
                msgspec.msgpack.encode(Share(
                    database_url=database_url, snapshot=snapshot, index=i, workers=workers, on=on,
                    tenants=_tenants_encoder.encode(tenants), fetch_size=fetch_size,
                ))
                for i in range(workers)
            ]
            if workers == 1:
                results = [await _build_share(msgspec.msgpack.decode(shares[0], type=Share))]
            else:
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    raw = await asyncio.gather(*(loop.run_in_executor(pool, build_share, s) for s in shares))
                results = [msgspec.msgpack.decode(r, type=ShareReport) for r in raw]
        report.events += sum(r.events for r in results)
        report.fold_seconds = max(r.fold_seconds for r in results)
        report.subjects = sum(r.subjects for r in results)
        report.tenants = len(tenants.states)
        await conn.copy_records_to_table("tenants_new", schema_name="projector", columns=list(TENANT_COLUMNS),
                                         records=[_tenant_record(tenants, t) for t in sorted(tenants.states)])
        report.build_seconds = time.perf_counter() - started

        t_index = time.perf_counter()
        for table in ("subjects", "tenants"):
            for new_name, definition, pk in await _index_statements(conn, table):
                await conn.execute(definition)
                if pk:
                    await conn.execute(f"ALTER TABLE projector.{table}_new ADD CONSTRAINT {new_name}"
                                       f" PRIMARY KEY USING INDEX {new_name}")
            await conn.execute(f"ANALYZE projector.{table}_new")
        report.index_seconds = time.perf_counter() - t_index

        # 3. swap
        t_swap = time.perf_counter()
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            await conn.execute("LOCK TABLE projector.subjects, projector.tenants IN EXCLUSIVE MODE")
            positions, report.caught_up_events = await _catch_up(conn, tenants, heads, on, fetch_size)
            await _carry_over_published(conn)
            for table in ("subjects", "tenants"):
                indexes = [r[0] for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'projector' AND tablename = $1",
                    f"{table}_new")]
                await conn.execute(f"DROP TABLE projector.{table}")
                await conn.execute(f"ALTER TABLE projector.{table}_new RENAME TO {table}")
                for name in indexes:
                    await conn.execute(f"ALTER INDEX projector.{name} RENAME TO {table}{name[len(table) + 4:]}")
            through = [positions[p] for p in sorted(positions)]
            # rebuilt_through (one number) only for code of before partitioning: the smallest.
            await conn.execute(
                "INSERT INTO projector.checkpoint (id, rebuilt_through, rebuilt_through_partitions)"
                " VALUES (true, $1, $2)"
                " ON CONFLICT (id) DO UPDATE SET rebuilt_through = excluded.rebuilt_through,"
                " rebuilt_through_partitions = excluded.rebuilt_through_partitions, rebuilt_at = now()",
                min(through, default=0), through,
            )
        report.rebuilt_through = through
        report.swap_seconds = time.perf_counter() - t_swap
    finally:
        await snap_conn.close()
        await conn.close()  # also releases the advisory lock
    report.seconds = time.perf_counter() - started
    log.info("projector_rebuilt", **msgspec.structs.asdict(report))
    return report


def _tenant_record(tenants: Tenants, tenant_id: str) -> tuple[object, ...]:
    state = tenants.states[tenant_id]
    return (tenant_id, state.version, state.last_position, encode_tenant(state), tenants.terms_version[tenant_id],
            None, None, None)


async def _index_statements(conn: asyncpg.Connection, table: str) -> list[tuple[str, str, bool]]:
    """(new index name, CREATE INDEX for the ``_new`` table, is the primary key)."""
    records = await conn.fetch(
        "SELECT i.indexname, i.indexdef, c.contype = 'p' AS pk FROM pg_indexes i"
        " LEFT JOIN pg_constraint c ON c.conname = i.indexname AND c.connamespace = 'projector'::regnamespace"
        " WHERE i.schemaname = 'projector' AND i.tablename = $1 ORDER BY i.indexname", table,
    )
    out = []
    for r in records:
        name: str = r["indexname"]
        if not name.startswith(table + "_"):
            raise RuntimeError(f"index {name} of projector.{table} does not start with {table}_")
        new_name = f"{table}_new" + name[len(table):]
        definition = r["indexdef"].replace(f"INDEX {name} ON projector.{table} ",
                                           f"INDEX {new_name} ON projector.{table}_new ", 1)
        if new_name not in definition:
            raise RuntimeError(f"cannot adapt the definition of {name}: {r['indexdef']}")
        out.append((new_name, definition, bool(r["pk"])))
    return out


async def _catch_up(conn: asyncpg.Connection, tenants: Tenants, heads: dict[int, int], on: dt.date,
                    fetch_size: int) -> tuple[dict[int, int], int]:
    """Under the lock: apply what was committed after the snapshot to the new tables,
    every partition after its head in the snapshot. Returns (positions now reflected,
    per partition; events applied)."""
    positions, n = dict(heads), 0
    partitions = await partition_count(conn)
    by_stream: dict[str, list[RecordedEvent]] = defaultdict(list)
    retermed: set[str] = set()
    moved: set[str] = set()
    while True:
        records = await read_partitions(conn, positions, partitions, fetch_size)
        for recorded in records:
            positions[recorded.partition] = recorded.position
            if parse_subject_stream(recorded.stream_id) is not None:
                by_stream[recorded.stream_id].append(recorded)
            elif recorded.stream_id == f"tenant/{recorded.tenant_id}":
                moved.add(recorded.tenant_id)
                if _apply_tenant_event(tenants, recorded):
                    retermed.add(recorded.tenant_id)
        n += len(records)
        if not records:
            break
    if not n:
        return positions, 0
    if moved:
        await conn.execute("DELETE FROM projector.tenants_new WHERE tenant_id = ANY($1::text[])", sorted(moved))
        await conn.copy_records_to_table("tenants_new", schema_name="projector", columns=list(TENANT_COLUMNS),
                                         records=[_tenant_record(tenants, t) for t in sorted(moved)])
    keys = [parse_subject_stream(s) for s in by_stream]
    stored = await _fetch_new_rows(conn, "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, so, r)"
                                   " ON s.tenant_id = k.t AND s.source = k.so AND s.customer_ref = k.r",
                                   [k[0] for k in keys if k], [k[1] for k in keys if k], [k[2] for k in keys if k])
    if retermed:  # a term edit after the snapshot: every subject of that tenant is evaluated again
        stored.update(await _fetch_new_rows(conn, "WHERE s.tenant_id = ANY($1::text[])", sorted(retermed)))
    states: dict[str, SubjectState | None] = {s: (decode_state(r.state) if r else None) for s, r in stored.items()}
    for stream, events in by_stream.items():
        state = states.get(stream)
        for e in events:
            state = apply_subject(state, e)
        states[stream] = state
    rows = [subject_row(state, tenants, on, None) for state in states.values() if state is not None]
    await upsert_subject_rows(conn, rows, table="projector.subjects_new")  # published_hash: carried over next
    log.info("rebuild_caught_up", events=n, subjects=len(rows), tenants=len(moved))
    return positions, n


async def _fetch_new_rows(conn: asyncpg.Connection, where: str, *args: Iterable[str]) -> dict[str, SubjectRow]:
    records = await conn.fetch(f"SELECT {SUBJECT_SELECT_COLUMNS} FROM projector.subjects_new s {where}", *args)
    return {r.stream_id: r for r in (row_from_record(rec) for rec in records)}


async def _carry_over_published(conn: asyncpg.Connection) -> None:
    """What is on the topic does not change with a rebuild: take ``published_hash`` from
    the live table for the rows where it differs (the live projector went on publishing
    while the new tables were written)."""
    await conn.execute(
        "UPDATE projector.subjects_new n SET published_hash = o.published_hash FROM projector.subjects o"
        " WHERE n.tenant_id = o.tenant_id AND n.source = o.source AND n.customer_ref = o.customer_ref"
        " AND n.published_hash IS DISTINCT FROM o.published_hash"
    )


async def raw_read(database_url: str, *, fetch_size: int = 20_000) -> tuple[int, float]:
    """(rows, seconds) to read ``ledger.events`` with the rebuild's cursor and do nothing
    with them: the floor a (one-worker) rebuild's read is measured against."""
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        n = 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await scan_log(conn)
            while True:
                rows = await cursor.fetch(fetch_size)
                n += len(rows)
                if len(rows) < fetch_size:
                    break
        return n, time.perf_counter() - started
    finally:
        await conn.close()


__all__ = ["RebuildInProgress", "RebuildReport", "raw_read", "rebuild", "subject_row"]
