"""``consent-ledger projector rebuild``: the read model again, from the PostgreSQL ledger.

Built for speed, in one pass over ``ledger.events``:

1. read every event up to the head in one REPEATABLE READ snapshot, with a server-side
   cursor (large fetches), decode it with msgspec and fold it in memory with the same
   ``apply_subject``/``apply_tenant`` the live projector uses;
2. evaluate each subject once, with its tenant's final term matrix, and stream the rows
   into fresh tables (``projector.subjects_new``, ``projector.tenants_new``) with COPY
   (an async generator: PostgreSQL inserts while Python evaluates); indexes afterwards;
3. swap, in one transaction: lock the live tables against writers (readers go on), apply
   what the ledger committed since the snapshot, carry over what is on the topic
   (``published_hash``: a rebuild publishes nothing by itself), drop the old tables,
   rename the new ones and their indexes, and record the checkpoint (the ledger position
   the model is complete through). A live projector blocked on the lock continues on the
   new tables; events at or below the checkpoint are skipped as already applied.

A subject whose rebuilt matrix differs from the published one is left pending; the
projector's maintenance loop publishes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.subject import SubjectState, apply_subject
from consent.tenant import TenantState, apply_tenant
from consent.terms import TermMatrix
from schemas.events import RecordedEvent
from services.ledger.store import _COLUMNS as EVENT_COLUMNS  # the columns row_to_recorded reads
from services.ledger.store import row_to_recorded
from services.projector.clock import Clock
from services.projector.readmodel import (
    SUBJECT_COLUMNS,
    SubjectRow,
    encode_state,
    encode_tenant,
    evaluate_subject,
    suppressed,
    upsert_subject_rows,
)

log = structlog.get_logger(__name__)

_REBUILD_LOCK: Final = 0x72656275696C64  # "rebuild"
_NO_TERMS: Final = TermMatrix()
TENANT_COLUMNS: Final = ("tenant_id", "version", "last_position", "state", "terms_version", "reeval_version",
                         "reeval_after_source", "reeval_after_ref")


class RebuildReport(msgspec.Struct, kw_only=True):
    events: int = 0
    subjects: int = 0
    tenants: int = 0
    caught_up_events: int = 0
    rebuilt_through: int = 0
    read_fold_seconds: float = 0.0
    write_seconds: float = 0.0
    swap_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class RebuildInProgress(Exception):
    """Another rebuild holds the lock."""


class _Fold:
    """The whole ledger folded in memory: subject states and tenant states."""

    def __init__(self) -> None:
        self.subjects: dict[str, SubjectState] = {}
        self.tenants: dict[str, TenantState] = {}
        self.terms_version: dict[str, int] = {}
        self.position = 0

    def apply(self, recorded: RecordedEvent) -> tuple[str, str | None]:
        """Apply one event; returns ("subject", stream) / ("tenant", tenant_id if its terms
        changed else None) / ("other", None)."""
        self.position = recorded.position
        stream = recorded.stream_id
        if stream.startswith("subject/"):
            self.subjects[stream] = apply_subject(self.subjects.get(stream), recorded)
            return "subject", stream
        if stream == f"tenant/{recorded.tenant_id}":
            before = self.tenants.get(recorded.tenant_id)
            state = apply_tenant(before, recorded)
            self.tenants[recorded.tenant_id] = state
            if before is None or state.terms != before.terms:
                self.terms_version[recorded.tenant_id] = recorded.version
                return "tenant", recorded.tenant_id
            return "tenant", None
        log.warning("rebuild_unknown_stream", stream=stream, position=recorded.position)
        return "other", None

    def row(self, stream: str, on: dt.date, published_hash: bytes | None) -> SubjectRow:
        state = self.subjects[stream]
        if state.erased is not None:
            state = suppressed(state)
            self.subjects[stream] = state
        tenant = self.tenants.get(state.tenant_id)
        evaluation = evaluate_subject(state, tenant.terms if tenant is not None else _NO_TERMS, on)
        return SubjectRow(
            tenant_id=state.tenant_id, source=state.source, customer_ref=state.customer_ref, version=state.version,
            last_position=state.last_position, erased=state.erased is not None, state=encode_state(state),
            terms_version=self.terms_version.get(state.tenant_id, 0), evaluated_on=on,
            next_change=evaluation.next_change, matrix_hash=evaluation.matrix_hash, published_hash=published_hash,
        )


async def read_and_fold(conn: asyncpg.Connection, fold: _Fold, *, after: int, until: int | None,
                        fetch_size: int) -> int:
    """Fold the events with ``after < position <= until`` (in ledger order) with a
    server-side cursor; returns how many. The caller holds the transaction."""
    n = 0
    if until is None:
        cursor = await conn.cursor(f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE position > $1"
                                   " ORDER BY position", after)
    else:
        cursor = await conn.cursor(f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE position > $1"
                                   " AND position <= $2 ORDER BY position", after, until)
    apply = fold.apply
    while True:
        rows = await cursor.fetch(fetch_size)
        for row in rows:
            apply(row_to_recorded(row))
        n += len(rows)
        if len(rows) < fetch_size:
            return n


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
        definition = r["indexdef"].replace(f"INDEX {name} ON projector.{table} ", f"INDEX {new_name} ON projector.{table}_new ", 1)
        if new_name not in definition:
            raise RuntimeError(f"cannot adapt the definition of {name}: {r['indexdef']}")
        out.append((new_name, definition, bool(r["pk"])))
    return out


async def rebuild(
    database_url: str, *, clock: Clock, fetch_size: int = 20_000, lock_timeout_s: float = 30.0
) -> RebuildReport:
    """Rebuild ``projector.subjects`` and ``projector.tenants`` from ``ledger.events`` and
    swap them in. Safe while a live projector runs (it waits on the swap, briefly)."""
    report = RebuildReport()
    started = time.perf_counter()
    on = clock.today()
    read_conn = await asyncpg.connect(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _REBUILD_LOCK):
            raise RebuildInProgress("another rebuild is running")
        for table in ("subjects", "tenants"):
            await conn.execute(f"DROP TABLE IF EXISTS projector.{table}_new")
            await conn.execute(f"CREATE TABLE projector.{table}_new (LIKE projector.{table} INCLUDING DEFAULTS"
                               " INCLUDING CONSTRAINTS INCLUDING STORAGE)")

        # 1. read and fold, in one snapshot
        fold = _Fold()
        async with read_conn.transaction(isolation="repeatable_read", readonly=True):
            head = await read_conn.fetchval("SELECT position FROM ledger.head")
            report.events = await read_and_fold(read_conn, fold, after=0, until=head, fetch_size=fetch_size)
            fold.position = head
        report.read_fold_seconds = time.perf_counter() - started

        # 2. evaluate and write
        t_write = time.perf_counter()
        published = {
            f"subject/{r[0]}/{r[1]}/{r[2]}": r[3]
            for r in await conn.fetch("SELECT tenant_id, source, customer_ref, published_hash FROM projector.subjects")
        }

        async def rows() -> AsyncIterator[tuple[object, ...]]:
            for i, stream in enumerate(sorted(fold.subjects)):
                r = fold.row(stream, on, published.get(stream))
                yield (r.tenant_id, r.source, r.customer_ref, r.version, r.last_position, r.erased, r.state,
                       r.terms_version, r.evaluated_on, r.next_change, r.matrix_hash, r.published_hash)
                if i % 2000 == 1999:
                    await asyncio.sleep(0)  # let the COPY writer flush

        await conn.copy_records_to_table("subjects_new", schema_name="projector", columns=list(SUBJECT_COLUMNS),
                                         records=rows())
        await conn.copy_records_to_table("tenants_new", schema_name="projector", columns=list(TENANT_COLUMNS),
                                         records=[_tenant_record(fold, t) for t in sorted(fold.tenants)])
        report.subjects, report.tenants = len(fold.subjects), len(fold.tenants)
        for table in ("subjects", "tenants"):
            for new_name, definition, pk in await _index_statements(conn, table):
                await conn.execute(definition)
                if pk:
                    await conn.execute(f"ALTER TABLE projector.{table}_new ADD CONSTRAINT {new_name}"
                                       f" PRIMARY KEY USING INDEX {new_name}")
            await conn.execute(f"ANALYZE projector.{table}_new")
        report.write_seconds = time.perf_counter() - t_write

        # 3. swap
        t_swap = time.perf_counter()
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            await conn.execute("LOCK TABLE projector.subjects, projector.tenants IN EXCLUSIVE MODE")
            report.caught_up_events = await _catch_up(conn, fold, on, fetch_size)
            await _carry_over_published(conn)
            for table in ("subjects", "tenants"):
                indexes = [r[0] for r in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'projector' AND tablename = $1",
                    f"{table}_new")]
                await conn.execute(f"DROP TABLE projector.{table}")
                await conn.execute(f"ALTER TABLE projector.{table}_new RENAME TO {table}")
                for name in indexes:
                    await conn.execute(f"ALTER INDEX projector.{name} RENAME TO {table}{name[len(table) + 4:]}")
            await conn.execute(
                "INSERT INTO projector.checkpoint (id, rebuilt_through) VALUES (true, $1)"
                " ON CONFLICT (id) DO UPDATE SET rebuilt_through = excluded.rebuilt_through, rebuilt_at = now()",
                fold.position,
            )
        report.rebuilt_through = fold.position
        report.swap_seconds = time.perf_counter() - t_swap
    finally:
        await read_conn.close()
        await conn.close()  # also releases the advisory lock
    report.seconds = time.perf_counter() - started
    log.info("projector_rebuilt", **msgspec.structs.asdict(report))
    return report


def _tenant_record(fold: _Fold, tenant_id: str) -> tuple[object, ...]:
    state = fold.tenants[tenant_id]
    return (tenant_id, state.version, state.last_position, encode_tenant(state), fold.terms_version[tenant_id],
            None, None, None)


async def _catch_up(conn: asyncpg.Connection, fold: _Fold, on: dt.date, fetch_size: int) -> int:
    """Under the lock: fold what was committed after the snapshot into the new tables."""
    touched: set[str] = set()
    retermed: set[str] = set()
    n = 0
    while True:
        records = await conn.fetch(f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE position > $1"
                                   " ORDER BY position LIMIT $2", fold.position, fetch_size)
        for r in records:
            kind, name = fold.apply(row_to_recorded(r))
            if kind == "subject" and name is not None:
                touched.add(name)
            elif kind == "tenant" and name is not None:
                retermed.add(name)  # its terms changed: every subject of it is re-evaluated
        n += len(records)
        if len(records) < fetch_size:
            break
    if not n:
        return 0
    if retermed:
        touched.update(stream for stream, state in fold.subjects.items() if state.tenant_id in retermed)
    # tenants: rewrite every tenant whose stream moved
    moved = await conn.fetch("SELECT tenant_id, version FROM projector.tenants_new")
    versions = {r[0]: r[1] for r in moved}
    changed_tenants = [t for t, s in fold.tenants.items() if versions.get(t) != s.version]
    if changed_tenants:
        await conn.execute("DELETE FROM projector.tenants_new WHERE tenant_id = ANY($1::text[])", changed_tenants)
        await conn.copy_records_to_table("tenants_new", schema_name="projector", columns=list(TENANT_COLUMNS),
                                         records=[_tenant_record(fold, t) for t in changed_tenants])
    rows = [fold.row(s, on, None) for s in sorted(touched)]
    if rows:
        # the published hash is carried over afterwards, for every row
        await upsert_subject_rows(conn, rows, table="projector.subjects_new")
    log.info("rebuild_caught_up", events=n, subjects=len(rows), tenants=len(changed_tenants))
    return n


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
    with them: the floor a rebuild's read is measured against."""
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        n = 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(f"SELECT {EVENT_COLUMNS} FROM ledger.events ORDER BY position")
            while True:
                rows = await cursor.fetch(fetch_size)
                n += len(rows)
                if len(rows) < fetch_size:
                    break
        return n, time.perf_counter() - started
    finally:
        await conn.close()


__all__ = ["RebuildInProgress", "RebuildReport", "raw_read", "read_and_fold", "rebuild"]
