"""The import run: read, check, plan and append a file in bounded, atomic batches.

Memory is bounded whatever the file size: records are read line by line, at most
``batch_size`` rows are planned at a time, and at most one batch is committing while the
next is planned (two batches in memory). Each batch is ONE append through the event
store (many stream writes, one transaction, with the import's index written by the
append's in-transaction hook): a batch is in the ledger entirely or not at all.

Pipelining: batch N+1 is planned while batch N commits, on top of N's expected effects;
N+1 is submitted only after N committed. If N fails (a concurrent writer moved a stream,
the database went away) N is planned again from the ledger and retried, and N+1 is
planned again too: a plan is never submitted on top of a batch that did not commit.

Rows that fail their checks are reported (line, field, problem) and skipped; the valid
rows of the same batch are still committed. A run is for one tenant at a time (an
advisory lock): a second import for the same tenant is refused instead of racing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Final

import asyncpg
import msgspec
import structlog

from schemas.events import Actor, Metadata
from services.errors import LedgerError
from services.importer.mapping import Kind, Mapping
from services.importer.plans import (
    PLANNERS,
    Counts,
    Effects,
    IndexConflict,
    Plan,
    Planner,
    PreferencePlanner,
    Rejection,
    evidence_name,
)
from services.importer.reader import RecordReader, RowProblem
from services.importer.rows import Row, RowParser
from services.ledger.commands import CommandRejected, Ledger
from services.ledger.errors import IntegrityError, StoreUnavailable, StreamClosed, WrongExpectedVersion
from services.ledger.store import AppendRequest, AppendResult, translate_errors

log = structlog.get_logger(__name__)

DEFAULT_BATCH: Final = 5000
MAX_BATCH: Final = 20000
_ATTEMPTS: Final = 5
_YIELD_EVERY: Final = 250  # rows parsed between giving the event loop to the batch that is committing
_GC_THRESHOLD: Final = 50_000  # allocations between young-generation GC passes during a run (default 700)
_RETRYABLE: Final = (WrongExpectedVersion, StreamClosed, IndexConflict, IntegrityError, StoreUnavailable)


class ImportRefused(LedgerError):
    """The import cannot start (unknown tenant or source, another import running, a file
    that cannot be read). Nothing was written. ``field`` names what is wrong.

    Over HTTP: the 4xx given (404 unknown tenant, 409 ``conflict`` for another import
    running), else 422 ``import_refused``; the CLI prints the text and exits 2 whatever
    the status (the CLI's own refusals pass 2)."""

    status = 422
    error = "import_refused"

    def __init__(self, message: str, field: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status if 400 <= status < 500 else 422
        if status == 409:
            self.error = "conflict"


class Summary(msgspec.Struct, kw_only=True):
    run_id: str
    tenant: str
    source: str
    file: str
    kind: str = ""
    format: str = ""
    encoding: str = ""
    rows: int = 0
    recorded: int = 0
    corrected: int = 0
    unchanged: int = 0
    kept: int = 0
    ignored: int = 0
    rejected: int = 0
    events: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    first_position: int | None = None
    last_position: int | None = None
    aborted: str | None = None  # why the run stopped early; rows after last_line_done were not imported
    last_line_done: int = 0
    # Seconds spent reading and checking rows, planning batches (lookups, sealing) and
    # waiting for appends to commit: where an import's time goes.
    timings: dict[str, float] = msgspec.field(default_factory=lambda: {"read": 0.0, "plan": 0.0, "wait": 0.0})

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.aborted is None


RejectSink = Callable[[Rejection], None]
ProgressSink = Callable[[int, int], None]  # (rows so far, bytes read so far)


class Importer:
    """Runs imports into one ledger (in-process: the CLI, the HTTP upload, the benchmark)."""

    def __init__(self, ledger: Ledger, *, batch_size: int = DEFAULT_BATCH, retry_delay: float = 0.2) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be 1..{MAX_BATCH}")
        self.ledger = ledger
        self.pool: asyncpg.Pool = ledger.pool
        self.batch_size = batch_size
        self.retry_delay = retry_delay  # seconds, doubled per attempt, while the database is unreachable

    async def run_file(self, path: str, *, tenant: str, source: str, mapping: Mapping, actor: Actor,
                       kind: Kind | None = None, fmt: str | None = None, on_reject: RejectSink,
                       on_progress: ProgressSink | None = None, display_name: str | None = None) -> Summary:
        """Import one file. Raises ImportRefused before anything is written; otherwise
        returns the summary (``aborted`` set if it had to stop early)."""
        try:
            await self.ledger.require_source(tenant, source)
        except CommandRejected as exc:
            raise ImportRefused(exc.message, field=exc.field or "tenant", status=exc.status) from None
        reader = RecordReader(path, mapping, kind=kind, fmt=fmt)  # type: ignore[arg-type]
        try:
            reader.open()
        except ValueError as exc:  # FileProblem
            reader.close()
            raise ImportRefused(str(exc), field=getattr(exc, "field", "file")) from None
        try:
            assert reader.kind is not None
            summary = Summary(run_id=uuid.uuid4().hex, tenant=tenant, source=source, file=display_name or str(path),
                              kind=reader.kind, format=reader.format, encoding=reader.encoding)
            parser = RowParser(reader.kind, mapping)
            planner = PLANNERS[reader.kind](self.ledger, tenant, source, actor,
                                            mapping.column_for(reader.kind, "customer_ref"))
            if isinstance(planner, PreferencePlanner):
                planner.evidence_file = evidence_name(summary.file)
            async with self._tenant_lock(tenant):
                with _fewer_gc_passes():
                    await self._run(reader, parser, planner, summary, actor, on_reject, on_progress)
            return summary
        finally:
            reader.close()

    def _tenant_lock(self, tenant: str) -> _TenantLock:
        return _TenantLock(self.pool, tenant)

    async def _run(self, reader: RecordReader, parser: RowParser, planner: Planner, summary: Summary, actor: Actor,
                   on_reject: RejectSink, on_progress: ProgressSink | None) -> None:
        started = time.perf_counter()
        metadata = Metadata(actor=actor, method="import", request_id=summary.run_id, correlation_id=summary.run_id)
        log_ = log.bind(run_id=summary.run_id, tenant=summary.tenant, source=summary.source, kind=summary.kind)
        log_.info("import_started", file=summary.file, encoding=summary.encoding)
        batches = _Batches(iter(reader), parser, self.batch_size, summary, on_reject)
        inflight: tuple[Plan, asyncio.Task[AppendResult | None]] | None = None
        try:
            clock = time.perf_counter
            timings = summary.timings
            while True:
                t0 = clock()
                rows = await batches.next()
                t1 = clock()
                timings["read"] += t1 - t0
                if not rows:
                    break
                plan = await self._plan(planner, rows, inflight[0].effects if inflight else None, summary)
                t2 = clock()
                timings["plan"] += t2 - t1
                if inflight is not None:
                    settled, inflight = inflight, None
                    if not await self._settle(settled, planner, metadata, summary, on_reject):
                        # it was planned on a batch that was redone
                        plan = await self._plan(planner, rows, None, summary)
                    timings["wait"] += clock() - t2
                inflight = (plan, asyncio.create_task(self._submit(plan, metadata, summary)))
                if on_progress is not None:
                    on_progress(summary.rows, reader.position())
            if inflight is not None:
                t3 = clock()
                settled, inflight = inflight, None
                await self._settle(settled, planner, metadata, summary, on_reject)
                timings["wait"] += clock() - t3
            if batches.stopped is not None:
                raise _Aborted(batches.stopped)
        except _Aborted as exc:
            if inflight is not None:  # the batch before may still commit: count it before stopping
                settled, inflight = inflight, None
                with contextlib.suppress(_Aborted):
                    await self._settle(settled, planner, metadata, summary, on_reject)
            summary.aborted = str(exc)
            log_.error("import_aborted", reason=str(exc), last_line_done=summary.last_line_done)
        finally:
            if inflight is not None:  # an unexpected error or a cancelled request: the batch
                inflight[1].cancel()  # commits whole or not at all; a re-run completes it
        summary.timings = {k: round(v, 3) for k, v in summary.timings.items()}
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.rows_per_s = round(summary.rows / summary.seconds, 1) if summary.seconds else 0.0
        if on_progress is not None:
            on_progress(summary.rows, reader.size)
        log_.info("import_finished", rows=summary.rows, recorded=summary.recorded, corrected=summary.corrected,
                  unchanged=summary.unchanged, kept=summary.kept, ignored=summary.ignored, rejected=summary.rejected,
                  events=summary.events, batches=summary.batches, seconds=summary.seconds, aborted=summary.aborted)

    async def _plan(self, planner: Planner, rows: list[Row], overlay: Effects | None, summary: Summary) -> Plan:
        """Plan a batch; the lookups are retried while the database is unreachable."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await planner.plan(rows, overlay)
            except StoreUnavailable as exc:
                if attempt == _ATTEMPTS:
                    raise _Aborted(f"the database is unavailable ({exc}); the rows from line {rows[0].line} on"
                                   " were not imported") from None
                summary.retries += 1
                log.warning("import_plan_retry", attempt=attempt, detail=str(exc))
                await asyncio.sleep(self.retry_delay * 2**attempt)
        raise AssertionError("unreachable")

    async def _submit(self, plan: Plan, metadata: Metadata, summary: Summary) -> AppendResult | None:
        if not plan.writes:
            if plan.hook is not None:  # only the import's own memory changes
                with translate_errors():
                    async with self.pool.acquire() as conn, conn.transaction():
                        await plan.hook(conn, None)  # type: ignore[arg-type]
            return None
        # The store's bulk path: a transaction of its own, events by binary COPY, the same
        # head lock and checks as every append (services/ledger/bulk.py).
        return await self.ledger.store.append_bulk(AppendRequest(
            tenant_id=summary.tenant, writes=plan.writes, metadata=metadata, in_transaction=plan.hook))

    async def _settle(self, inflight: tuple[Plan, asyncio.Task[AppendResult | None]], planner: Planner,
                      metadata: Metadata, summary: Summary, on_reject: RejectSink) -> bool:
        """Wait for the batch in flight; retry it (planned afresh) if it failed. True if it
        committed as planned, False if it had to be planned again."""
        plan, task = inflight
        attempt = 1
        while True:
            try:
                result = await task
                break
            except _RETRYABLE as exc:
                if attempt >= _ATTEMPTS:
                    raise _Aborted(f"a batch failed {attempt} times ({type(exc).__name__}: {exc});"
                                   f" the rows from line {plan.rows[0].line} on were not imported") from None
                summary.retries += 1
                log.warning("import_batch_retry", attempt=attempt, error=type(exc).__name__, detail=str(exc))
                if isinstance(exc, StoreUnavailable):
                    await asyncio.sleep(self.retry_delay * 2**attempt)
                attempt += 1
                plan = await self._plan(planner, list(plan.rows), None, summary)
                task = asyncio.create_task(self._submit(plan, metadata, summary))
        summary.batches += 1
        summary.events += plan.events
        for f in Counts.__struct_fields__:
            setattr(summary, f, getattr(summary, f) + getattr(plan.counts, f))
        for rejection in plan.rejections:
            _reject(rejection, summary, on_reject)
        summary.last_line_done = plan.rows[-1].line
        if result is not None:
            if summary.first_position is None:
                summary.first_position = result.first_position
            summary.last_position = result.last_position
        return attempt == 1


class _Aborted(Exception):
    """Internal signalling: the run stops early and reports it in its summary (``aborted``);
    never raised to a caller, so not in the error family (services/errors.py)."""


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Young-generation GC passes every 50,000 allocations instead of 700 while a run
    lasts. A batch allocates tens of thousands of acyclic objects (rows, events, sealed
    fields) that survive until it commits; with the default threshold the collector
    traversed them again and again: 15 % of the import's CPU. Cycles are still collected,
    just less often. The previous threshold is restored unless another run (an HTTP
    upload next to this one) changed it meanwhile, so overlapping runs end at the
    original setting."""
    before = gc.get_threshold()
    ours = (max(before[0], _GC_THRESHOLD), *before[1:])
    gc.set_threshold(*ours)
    try:
        yield
    finally:
        if gc.get_threshold() == ours:
            gc.set_threshold(*before)


def _reject(rejection: Rejection, summary: Summary, on_reject: RejectSink) -> None:
    summary.rejected += 1
    on_reject(rejection)


class _Batches:
    """Reads up to ``size`` valid rows at a time; unreadable rows are rejected on the way.
    A file that cannot be decoded further stops the reading (``stopped`` says why)."""

    def __init__(self, records: Iterator[tuple[int, object]], parser: RowParser, size: int, summary: Summary,
                 on_reject: RejectSink) -> None:
        self._records = records
        self._parse = parser.parse
        self._size = size
        self._summary = summary
        self._on_reject = on_reject
        self.stopped: str | None = None

    async def next(self) -> list[Row]:
        rows: list[Row] = []
        if self.stopped is not None:
            return rows
        parse, summary, on_reject, size = self._parse, self._summary, self._on_reject, self._size
        append = rows.append
        n = 0  # records read by this call, added to summary.rows at the end
        try:
            for line, values in self._records:
                n += 1
                if isinstance(values, RowProblem):
                    _reject(Rejection(line, values.field, values.problem), summary, on_reject)
                else:
                    try:
                        append(parse(line, values))  # type: ignore[arg-type]
                    except RowProblem as exc:
                        _reject(Rejection(line, exc.field, exc.problem), summary, on_reject)
                if len(rows) >= size:
                    break
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the batch in flight send its next statement
        except UnicodeDecodeError as exc:
            self.stopped = f"the file cannot be decoded after line {summary.rows + n}: {exc.reason}"
        finally:
            summary.rows += n
        return rows


class _TenantLock:
    """One import per tenant at a time: a session advisory lock on a held connection."""

    def __init__(self, pool: asyncpg.Pool, tenant: str) -> None:
        self._pool = pool
        self._tenant = tenant
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None

    async def __aenter__(self) -> None:
        with translate_errors():
            conn = await self._pool.acquire()
            try:
                got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                          f"importer/{self._tenant}")
            except BaseException:
                await self._pool.release(conn)
                raise
        if not got:
            await self._pool.release(conn)
            raise ImportRefused(f"another import for tenant {self._tenant!r} is running; try again when it is done",
                                field="tenant", status=409)
        self._conn = conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", f"importer/{self._tenant}")
            except BaseException:
                # The pool does not reset sessions (services/database.py): a lock we could
                # not release must not go back with the connection, so the session ends.
                conn.terminate()
                raise
            finally:
                await self._pool.release(conn)
