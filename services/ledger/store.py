"""The event store on PostgreSQL: few verbs, after Message DB.

* :meth:`EventStore.append` writes events to one or more streams, atomically, with an
  expected version per stream and an optional idempotency key;
* :meth:`EventStore.read_stream` reads one stream in version order;
* :meth:`EventStore.read_all` reads the global order (optionally one tenant's) after a
  position, never skipping a row that commits later (see ``0003_head.sql``).

Appends go through one writer task per process that batches whatever requests arrived
while the previous batch was committing into a single transaction (group commit): one
WAL flush for many requests, and every caller is answered only after that commit. A
batch is planned on a read of the head and written by one statement that takes the head
lock and writes only if the head has not moved since (no client round trip while the
lock is held); if it moved, the batch runs again with the lock held from the start.
A request whose expected version is stale, or that writes to a closed stream (one whose
last event is in ``CLOSING_EVENTS``: an erased subject), fails alone; the rest of the
batch commits. Those checks run under the head lock, inside the batch's transaction, so
no request needs a query of its own before it is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec
import structlog
from asyncpg.pgproto.pgproto import UUID as PgUUID

from schemas.events import Event, Metadata, RecordedEvent, SubjectErased, decode_event, encode_event
from services.ledger.errors import (
    IdempotencyKeyReused,
    IntegrityError,
    LedgerError,
    StoreUnavailable,
    StreamClosed,
    WrongExpectedVersion,
)
from services.ledger.hashchain import event_hash

log = structlog.get_logger(__name__)

ANY_VERSION: Final = None
NO_STREAM: Final = 0

_metadata_decoder: Final = msgspec.json.Decoder(Metadata)
_encode: Final = msgspec.json.Encoder().encode


class StreamWrite(msgspec.Struct, frozen=True):
    """Events for one stream. ``expected_version``: None = any, 0 = stream must not exist."""

    stream_id: str
    events: Sequence[Event]
    expected_version: int | None = None


class AppendRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    writes: Sequence[StreamWrite]
    metadata: Metadata
    idempotency_key: str | None = None
    # A hash of what the client asked for; a reused key with another fingerprint is refused.
    fingerprint: bytes = b""
    # The caller's own statements, run in the SAME transaction right after this request's
    # events are inserted (e.g. the DMS import's invoice index, docs/import.md): both
    # commit or neither. A request with a hook commits in a transaction of its own (never
    # grouped), so a failing hook fails only that request.
    in_transaction: TransactionHook | None = None


class StreamResult(msgspec.Struct, frozen=True):
    stream_id: str
    from_version: int
    to_version: int


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    streams: list[StreamResult]
    first_position: int
    last_position: int
    event_ids: list[str]
    recorded_at: dt.datetime
    replayed: bool = False


_result_decoder: Final = msgspec.json.Decoder(AppendResult)

# Event types after which a stream takes no more events (a closed stream): an erased
# subject (GDPR art. 17, docs/erasure.md). Checked under the head lock, in the batch.
CLOSING_EVENTS: Final = frozenset({SubjectErased.__name__})

# An append batch is one transaction. The locked way takes four round trips
# (docs/performance.md); the optimistic way (_WRITE_IF_HEAD below) two: 2., then 3. as
# one autocommit statement that locks, checks and writes.
# 1. begin and take the head lock (simple protocol: two statements, one round trip);
_BEGIN_AND_LOCK: Final = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1 FROM ledger.head FOR UPDATE"
# 2. read, in a statement that starts after the lock is held (so its snapshot includes
#    every earlier append): the head, each stream's last version and event type (stream
#    ids as one newline-joined text: see 3.), and the idempotency keys already used;
# Each stream's last version (0 if new) and event type, in the order of $1 (the bulk path
# in bulk.py reads the same).
_STREAM_TAILS: Final = (
    " CROSS JOIN LATERAL ("
    "  SELECT array_agg(coalesce(e.version, 0) ORDER BY u.ord) AS versions,"
    "   array_agg(e.event_type ORDER BY u.ord) AS last_types"
    "  FROM unnest(string_to_array($1, E'\\n')) WITH ORDINALITY AS u(stream_id, ord)"
    "  LEFT JOIN LATERAL (SELECT ev.version, ev.event_type FROM ledger.events ev"
    "   WHERE ev.stream_id = u.stream_id ORDER BY ev.version DESC LIMIT 1) e ON true"
    " ) s"
)
_READ_STATE: Final = (
    "SELECT h.position, h.hash, h.recorded_at, s.versions, s.last_types,"
    " k.key_tenants, k.keys, k.fingerprints, k.results"
    " FROM ledger.head h" + _STREAM_TAILS +
    " CROSS JOIN LATERAL ("
    "  SELECT array_agg(i.tenant_id ORDER BY q.ord) AS key_tenants, array_agg(i.key ORDER BY q.ord) AS keys,"
    "   array_agg(i.fingerprint ORDER BY q.ord) AS fingerprints, array_agg(i.result ORDER BY q.ord) AS results"
    "  FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS q(tenant_id, key, ord)"
    "  JOIN ledger.idempotency i ON i.tenant_id = q.tenant_id AND i.key = q.key"
    " ) k"
)
# 3. write the events, the new idempotency keys and the new head in one statement.
#    Each column goes as ONE newline-joined text parameter, split by PostgreSQL: asyncpg
#    checks every element of a list parameter against collections.abc (two Python-level
#    calls per text element), which cost more than the insert itself for a bulk append.
#    No column value holds a newline: JSON from msgspec escapes it, ids are checked in
#    append(). Positions are consecutive from $1; the hashes are 32-byte slices of $13
#    and each event's prev_hash is the slice before it ($12, the head's, for the first).
_INSERT_EVENTS: Final = (
    "INSERT INTO ledger.events (position, event_id, stream_id, version, tenant_id, event_type,"
    " schema_version, recorded_at, occurred_on, data, metadata, prev_hash, hash)"
    " SELECT $1::bigint + u.n - 1, u.e::uuid, u.s, u.v::int, u.t, u.ty, u.sv::smallint, $8,"
    " nullif(u.o, '')::date, u.d::json, u.m::json,"
    " CASE WHEN u.n = 1 THEN $12::bytea ELSE substring($13::bytea FROM (u.n::int - 2) * 32 + 1 FOR 32) END,"
    " substring($13::bytea FROM (u.n::int - 1) * 32 + 1 FOR 32)"
    " FROM unnest(string_to_array($2, E'\\n'), string_to_array($3, E'\\n'), string_to_array($4, E'\\n'),"
    " string_to_array($5, E'\\n'), string_to_array($6, E'\\n'), string_to_array($7, E'\\n'),"
    " string_to_array($9, E'\\n'), string_to_array($10, E'\\n'), string_to_array($11, E'\\n'))"
    " WITH ORDINALITY AS u(e, s, v, t, ty, sv, o, d, m, n)"
)
_INSERT_KEYS: Final = (
    "INSERT INTO ledger.idempotency (tenant_id, key, fingerprint, result)"
    " SELECT * FROM unnest($14::text[], $15::text[], $16::bytea[], $17::json[])"
)
_MOVE_HEAD: Final = "UPDATE ledger.head SET position = $18, hash = $19, recorded_at = $8"
_WRITE: Final = f"WITH new_events AS ({_INSERT_EVENTS}), new_keys AS ({_INSERT_KEYS}) {_MOVE_HEAD}"
# The optimistic path (EventStore._commit_batch): 2. without a lock, then 3. as ONE
# autocommit statement that first takes the head lock (the InitPlan runs before any row
# is written) and writes only if the head is still at the position read ($20). Positions
# only grow, so an unmoved head means no append committed since the read, and the read is
# still the truth. Returns whether it wrote.
_IF_HEAD_UNMOVED: Final = " WHERE EXISTS (SELECT 1 FROM ok)"
_WRITE_IF_HEAD: Final = (
    "WITH head AS (SELECT position FROM ledger.head FOR UPDATE),"
    " ok AS (SELECT 1 FROM head WHERE position = $20),"
    f" new_events AS ({_INSERT_EVENTS}{_IF_HEAD_UNMOVED}),"
    f" new_keys AS ({_INSERT_KEYS}{_IF_HEAD_UNMOVED}),"
    f" moved AS ({_MOVE_HEAD}{_IF_HEAD_UNMOVED} RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM moved)"
)
# 4. COMMIT. The writer keeps its own connection between batches: taking one from the
#    pool and giving it back would add a reset round trip to every batch.
_CONNECTION_LOST: Final = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    # A connection that got the server's goodbye while idle is stuck waiting for the
    # rest of that error: asyncpg refuses to start anything else on it.
    asyncpg.exceptions.InternalClientError,
)


def _is_id(text: str) -> bool:
    return bool(text) and text.isprintable()


def _usable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.exceptions.InterfaceError:  # lost, and taken back by the pool
        return False


# Event ids are time-ordered (version 7, RFC 9562) UUIDs: the batch's Unix time in
# milliseconds in the first 48 bits, then the version nibble 7, the variant bits 10 and 74
# random bits. The event_id index then grows at its right end, like the position index,
# instead of taking each new id on a random leaf page: with random (version 4) ids, writing
# 400,000 events into a copy of ledger.events cost PostgreSQL 21-23 us of CPU a row, with
# these 19 us, and the gap widens as the index outgrows the cache. The time in the id says
# no more than the event's recorded_at.
_UUID_CLEAR: Final = bytes.fromhex("000000000000" "0fff" "3fff" "ffffffffffff")
_UUID_SET: Final = bytes.fromhex("000000000000" "7000" "8000" "000000000000")


def new_event_ids(count: int) -> list[str]:
    """``count`` version 7 UUIDs as text, from one ``os.urandom`` call masked as one big
    integer (a system call and a UUID object per event are a visible cost at thousands of
    events a second; asyncpg's UUID type formats them in C)."""
    if not count:
        return []
    size = 16 * count
    now_ms = time.time_ns() // 1_000_000
    clear = int.from_bytes(_UUID_CLEAR * count, "big")
    set_ = int.from_bytes((now_ms.to_bytes(6, "big") + _UUID_SET[6:]) * count, "big")
    block = ((int.from_bytes(os.urandom(size), "big") & clear) | set_).to_bytes(size, "big")
    return [str(PgUUID(block[a:a + 16])) for a in range(0, size, 16)]


TransactionHook = Callable[[asyncpg.Connection, AppendResult], Awaitable[None]]
"""``hook(conn, result)``: extra writes inside the append's transaction (see AppendRequest)."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """The one place where asyncpg's errors become the ledger's own."""
    try:
        yield
    except LedgerError:
        raise
    except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.InterfaceError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    except asyncpg.exceptions.PostgresConnectionError as exc:
        raise StoreUnavailable(str(exc)) from exc
    except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
        raise IntegrityError(str(exc)) from exc


_COLUMNS: Final = (
    "position, event_id::text AS event_id, stream_id, version, tenant_id, event_type, schema_version,"
    " recorded_at, occurred_on, data, metadata, hash"
)


def row_to_recorded(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        tenant_id=row["tenant_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        occurred_on=row["occurred_on"],
        event=decode_event(row["data"]),
        metadata=_metadata_decoder.decode(row["metadata"]),
        hash=bytes(row["hash"]).hex(),
    )


class _Encoded(NamedTuple):
    """An event as the writer needs it, encoded by the caller before it is queued, so the
    writer (one at a time, holding the head lock) only numbers, hashes and sends."""

    data: str
    event_type: str
    schema_version: int
    occurred_on: dt.date | None


class _Pending:
    __slots__ = ("request", "future", "metadata_json", "encoded")

    def __init__(self, request: AppendRequest, future: asyncio.Future[AppendResult]) -> None:
        self.request = request
        self.future = future
        self.metadata_json = _encode(request.metadata).decode()
        self.encoded = [
            [_Encoded(encode_event(e).decode(), type(e).__name__, e.SCHEMA_VERSION, e.occurred_on()) for e in w.events]
            for w in request.writes
        ]


AppendObserver = Callable[[int, float], None]
"""Called after each committed batch with (events appended, seconds the batch took)."""


class EventStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch_events: int = 5000,
        on_commit: AppendObserver | None = None,
        closing_events: frozenset[str] = CLOSING_EVENTS,
    ) -> None:
        self._pool = pool
        self._max_batch_events = max_batch_events
        self._on_commit = on_commit
        self._closing_events = closing_events
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None  # the writer's own, between batches

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(StoreUnavailable("event store is shutting down"))
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # lost connections are the pool's already
                await self._pool.release(conn)

    # -- writing -------------------------------------------------------------------

    async def append(self, request: AppendRequest) -> AppendResult:
        """Append atomically; returns after commit. Raises WrongExpectedVersion,
        StreamClosed, IdempotencyKeyReused, StoreUnavailable."""
        if not request.writes or not any(w.events for w in request.writes):
            raise ValueError("append needs at least one event")
        if not _is_id(request.tenant_id) or not all(_is_id(w.stream_id) for w in request.writes):
            raise ValueError("tenant and stream ids are non-empty printable text (no newline: see _WRITE)")
        if self._writer is None:
            raise StoreUnavailable("event store writer is not running")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            size = sum(len(w.events) for w in first.request.writes)
            while size < self._max_batch_events and not self._queue.empty():
                nxt = self._queue.get_nowait()
                batch.append(nxt)
                size += sum(len(w.events) for w in nxt.request.writes)
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            for group in _transaction_groups(live):
                await self._commit_group(group, live)

    async def _commit_group(self, group: list[_Pending], live: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            with translate_errors():
                appended = await self._commit_batch(group)
        except asyncio.CancelledError:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(StoreUnavailable("event store is shutting down"))
            raise
        except Exception as exc:  # the whole transaction failed: every caller learns why
            log.error("append_batch_failed", error=str(exc), requests=len(group))
            err = exc if isinstance(exc, LedgerError) else StoreUnavailable(str(exc))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        if self._on_commit is not None and appended:
            self._on_commit(appended, time.perf_counter() - started)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not _usable(self._conn):
            await self._drop_connection()
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
            with contextlib.suppress(Exception):  # the pool may have taken it back already
                await self._pool.release(conn)

    async def _abandon(self, conn: asyncpg.Connection) -> None:
        """After a failed batch: roll back and keep the connection, or, if even that
        fails, drop it (the next batch takes a fresh one from the pool)."""
        try:
            if _usable(conn):
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK", timeout=5)
                return
        except (Exception, asyncio.CancelledError):
            pass
        await self._drop_connection()

    async def _begin(self) -> asyncpg.Connection:
        """Begin the batch's transaction and take the head lock: the lock that keeps
        insert order equal to commit order. FOR UPDATE on the single head row is held
        until this transaction commits, so no other writer can assign the next
        positions before our rows are visible."""
        attempts = self._pool.get_max_size() + 1
        for attempt in range(attempts):
            conn = await self._connection()
            try:
                await conn.execute(_BEGIN_AND_LOCK)
                return conn
            except _CONNECTION_LOST:
                # The kept connection died while idle (server restart, idle timeout),
                # and maybe the pool's others with it: nothing of this batch was
                # written, so begin again on another one.
                await self._drop_connection()
                if attempt == attempts - 1:
                    raise
            except BaseException:
                await self._abandon(conn)
                raise
        raise AssertionError("unreachable")

    async def _commit_batch(self, batch: list[_Pending]) -> int:
        """Commit the batch and resolve each future; returns events appended.

        Without hooks, optimistically first (two round trips, none under the lock): read
        the state without a lock, number and hash the events on that head, and send one
        statement that takes the head lock, checks the head has not moved since the read,
        writes, and commits on its own (autocommit). If the head did move (another
        process or the import appended meanwhile), it writes nothing and the batch runs
        the locked way: begin and lock, read, write, commit (four round trips)."""
        if all(p.request.in_transaction is None for p in batch):
            conn = await self._connection()
            try:
                state = await conn.fetchrow(_READ_STATE, *_state_args(batch))
            except _CONNECTION_LOST:
                # The kept connection died while idle; nothing was written. The locked
                # path begins again on another one.
                await self._drop_connection()
            else:
                assert state is not None
                plan = self._plan(batch, state)
                if not plan.appended:  # only replays and refusals, true at the read: nothing to write
                    return plan.resolve()
                # If this fails, whether it committed is unknown: the callers get the error,
                # and the batch is NOT tried again (a retry could append it twice).
                if await conn.fetchval(_WRITE_IF_HEAD, *plan.write_args(), state["position"]):
                    return plan.resolve()
        return await self._commit_locked(batch)

    async def _commit_locked(self, batch: list[_Pending]) -> int:
        """One transaction for the batch, in four round trips (begin and lock; read; write;
        commit), the in-transaction hooks after the write."""
        conn = await self._begin()
        try:
            # A statement of its own, after the lock is ours: its snapshot sees every
            # append committed before, so versions and idempotency keys are current.
            state = await conn.fetchrow(_READ_STATE, *_state_args(batch))
            assert state is not None
            plan = self._plan(batch, state)
            if plan.appended:
                await conn.execute(_WRITE, *plan.write_args())
            for pending, outcome in plan.outcomes:
                hook = pending.request.in_transaction
                if hook is not None and isinstance(outcome, AppendResult) and not outcome.replayed:
                    await hook(conn, outcome)
            await conn.execute("COMMIT")
        except BaseException:
            await self._abandon(conn)
            raise
        return plan.resolve()

    def _plan(self, batch: list[_Pending], state: asyncpg.Record) -> _BatchPlan:
        """Number, version and hash the batch's events on top of ``state`` (the head, each
        stream's last version and event type, the idempotency keys used); decide each
        request's outcome. No I/O."""
        plan = _BatchPlan()
        position: int = state["position"]
        prev_hash: bytes = bytes(state["hash"])
        plan.first_prev_hash = prev_hash
        stream_ids = _stream_ids(batch)
        now = dt.datetime.now(dt.timezone.utc)
        # recorded_at never goes backwards along the log, whatever the writers' clocks
        # say: "recorded up to K" is then always a prefix of the global order.
        recorded_at = plan.recorded_at = max(now, state["recorded_at"])
        versions: dict[str, int] = dict(zip(stream_ids, state["versions"] or ()))
        closed: dict[str, str] = {
            s: t for s, t in zip(stream_ids, state["last_types"] or ()) if t in self._closing_events
        }
        seen_keys: dict[tuple[str, str], tuple[bytes, AppendResult]] = {}
        for tenant_id, key, fingerprint, result in zip(
            state["key_tenants"] or (), state["keys"] or (), state["fingerprints"] or (), state["results"] or (),
        ):
            seen_keys[(tenant_id, key)] = (
                bytes(fingerprint),
                msgspec.structs.replace(_result_decoder.decode(result), replayed=True),
            )

        cols = plan.cols
        outcomes = plan.outcomes
        batch_keys: dict[tuple[str, str], tuple[bytes, _Pending]] = {}
        event_ids = iter(new_event_ids(sum(len(w.events) for p in batch for w in p.request.writes)))
        for pending in batch:
            req = pending.request
            key = (req.tenant_id, req.idempotency_key) if req.idempotency_key else None
            if key is not None and key in seen_keys:
                fingerprint, previous = seen_keys[key]
                outcomes.append((pending, previous if fingerprint == req.fingerprint else IdempotencyKeyReused(key[1])))
                continue
            if key is not None and key in batch_keys:
                fingerprint, leader = batch_keys[key]
                if fingerprint == req.fingerprint:
                    plan.followers.append((pending, leader))
                else:
                    outcomes.append((pending, IdempotencyKeyReused(key[1])))
                continue
            refusal = self._check_closed(req, closed) or self._check_versions(req, versions)
            if refusal is not None:
                outcomes.append((pending, refusal))
                continue
            metadata_json = pending.metadata_json
            results: list[StreamResult] = []
            request_event_ids: list[str] = []
            first_position = position + 1
            for write, encoded in zip(req.writes, pending.encoded):
                if not encoded:
                    continue
                start_version = versions.get(write.stream_id, 0)
                version = start_version
                for data, event_type, schema_version, occurred in encoded:
                    position += 1
                    version += 1
                    event_id = next(event_ids)
                    digest = event_hash(
                        prev_hash, position, event_id, write.stream_id, version, req.tenant_id,
                        event_type, schema_version, recorded_at, occurred, data, metadata_json,
                    )
                    cols["event_id"].append(event_id)
                    cols["stream_id"].append(write.stream_id)
                    cols["version"].append(str(version))
                    cols["tenant_id"].append(req.tenant_id)
                    cols["event_type"].append(event_type)
                    cols["schema_version"].append(str(schema_version))
                    cols["occurred_on"].append(occurred.isoformat() if occurred is not None else "")
                    cols["data"].append(data)
                    cols["metadata"].append(metadata_json)
                    cols["hash"].append(digest)
                    prev_hash = digest
                    request_event_ids.append(event_id)
                    if event_type in self._closing_events:
                        closed[write.stream_id] = event_type
                versions[write.stream_id] = version
                results.append(StreamResult(write.stream_id, start_version + 1, version))
            result = AppendResult(
                streams=results,
                first_position=first_position,
                last_position=position,
                event_ids=request_event_ids,
                recorded_at=recorded_at,
            )
            outcomes.append((pending, result))
            if key is not None:
                batch_keys[key] = (req.fingerprint, pending)
                plan.new_keys.append((key[0], key[1], req.fingerprint, _encode(result).decode()))
        plan.position, plan.last_hash = position, prev_hash
        plan.appended = len(cols["hash"])
        return plan

    async def append_bulk(self, request: AppendRequest) -> AppendResult:
        """One big request (the DMS import) in a transaction of its own, the events written
        with binary COPY; same guarantees as :meth:`append`, no idempotency key
        (services/ledger/bulk.py). Bypasses the group-commit writer."""
        from services.ledger.bulk import bulk_append  # bulk.py imports this module

        return await bulk_append(self._pool, request, closing_events=self._closing_events,
                                 on_commit=self._on_commit)

    @staticmethod
    def _check_closed(req: AppendRequest, closed: dict[str, str]) -> StreamClosed | None:
        if closed:
            for write in req.writes:
                if write.events and write.stream_id in closed:
                    return StreamClosed(write.stream_id, closed[write.stream_id])
        return None

    @staticmethod
    def _check_versions(req: AppendRequest, versions: dict[str, int]) -> WrongExpectedVersion | None:
        for write in req.writes:
            if write.expected_version is None:
                continue
            current = versions.get(write.stream_id, 0)
            if current != write.expected_version:
                return WrongExpectedVersion(write.stream_id, write.expected_version, current)
        return None

    # -- reading -------------------------------------------------------------------

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        with translate_errors():
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM ledger.events WHERE stream_id = $1 AND version >= $2"
                " ORDER BY version LIMIT $3",
                stream_id, from_version, limit,
            )
        return [row_to_recorded(r) for r in rows]

    async def read_streams(self, stream_ids: Sequence[str], event_types: Sequence[str]) -> list[RecordedEvent]:
        """The events of the given types of many streams, in one query (by stream, then
        version): e.g. the contact details of every subject of a mailing."""
        if not stream_ids:
            return []
        with translate_errors():
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM ledger.events WHERE stream_id = ANY($1::text[])"
                " AND event_type = ANY($2::text[]) ORDER BY stream_id, version",
                list(stream_ids), list(event_types),
            )
        return [row_to_recorded(r) for r in rows]

    async def stream_version(self, stream_id: str) -> int:
        with translate_errors():
            v = await self._pool.fetchval("SELECT max(version) FROM ledger.events WHERE stream_id = $1", stream_id)
        return v or 0

    async def read_all(
        self, after: int = 0, limit: int = 1000, *, tenant_id: str | None = None
    ) -> list[RecordedEvent]:
        """Events with position > ``after`` in ledger order. Safe to follow: a row that is
        not visible yet can only get a position above every visible one."""
        with translate_errors():
            if tenant_id is None:
                rows = await self._pool.fetch(
                    f"SELECT {_COLUMNS} FROM ledger.events WHERE position > $1 ORDER BY position LIMIT $2",
                    after, limit,
                )
            else:
                rows = await self._pool.fetch(
                    f"SELECT {_COLUMNS} FROM ledger.events WHERE tenant_id = $1 AND position > $2"
                    " ORDER BY position LIMIT $3",
                    tenant_id, after, limit,
                )
        return [row_to_recorded(r) for r in rows]

    async def follow(
        self, after: int = 0, *, batch: int = 1000, idle_sleep: float = 0.05, stop: Callable[[], bool] | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Follow the global order forever (or until ``stop()``), polling when idle."""
        position = after
        while stop is None or not stop():
            events = await self.read_all(position, batch)
            for e in events:
                yield e
                position = e.position
            if len(events) < batch:
                await asyncio.sleep(idle_sleep)

    async def head_position(self) -> int:
        with translate_errors():
            return await self._pool.fetchval("SELECT position FROM ledger.head")


def _transaction_groups(pending: list[_Pending]) -> list[list[_Pending]]:
    """Queue order kept; a request with an ``in_transaction`` hook gets a transaction alone."""
    groups: list[list[_Pending]] = []
    for p in pending:
        if p.request.in_transaction is None and groups and groups[-1][-1].request.in_transaction is None:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _stream_ids(batch: list[_Pending]) -> list[str]:
    return sorted({w.stream_id for p in batch for w in p.request.writes})


def _state_args(batch: list[_Pending]) -> tuple[str, list[str], list[str]]:
    """The parameters of ``_READ_STATE`` for a batch: its streams and idempotency keys."""
    keyed = [(p.request.tenant_id, p.request.idempotency_key) for p in batch if p.request.idempotency_key]
    return "\n".join(_stream_ids(batch)), [t for t, _ in keyed], [k for _, k in keyed]


class _BatchPlan:
    """What a batch writes (columns, new idempotency keys, the new head) and what each
    request gets, decided on one read of the state (EventStore._plan)."""

    __slots__ = ("cols", "outcomes", "followers", "new_keys", "first_prev_hash", "recorded_at", "position",
                 "last_hash", "appended")

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {
            k: [] for k in ("event_id", "stream_id", "version", "tenant_id", "event_type", "schema_version",
                            "occurred_on", "data", "metadata", "hash")
        }
        self.outcomes: list[tuple[_Pending, AppendResult | Exception]] = []
        self.followers: list[tuple[_Pending, _Pending]] = []  # same idempotency key as a leader in the batch
        self.new_keys: list[tuple[str, str, bytes, str]] = []
        self.first_prev_hash = b""
        self.recorded_at = dt.datetime.min
        self.position = 0
        self.last_hash = b""
        self.appended = 0

    def write_args(self) -> tuple[Any, ...]:
        """The parameters of ``_WRITE`` (and the first 19 of ``_WRITE_IF_HEAD``)."""
        lines = {k: "\n".join(v) for k, v in self.cols.items() if k != "hash"}
        keys = self.new_keys
        return (
            self.position - self.appended + 1, lines["event_id"], lines["stream_id"], lines["version"],
            lines["tenant_id"], lines["event_type"], lines["schema_version"], self.recorded_at,
            lines["occurred_on"], lines["data"], lines["metadata"], self.first_prev_hash, b"".join(self.cols["hash"]),
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
            self.position, self.last_hash,
        )

    def resolve(self) -> int:
        """After the commit, and only then: answer every caller; the events appended."""
        by_pending = {id(p): o for p, o in self.outcomes}
        for pending, outcome in self.outcomes:
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        for pending, leader in self.followers:
            outcome = by_pending[id(leader)]
            if not pending.future.done():
                if isinstance(outcome, Exception):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(msgspec.structs.replace(outcome, replayed=True))
        return self.appended


def request_fingerprint(*parts: bytes | str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        b = part.encode() if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.digest()


async def with_retry(fn: Callable[[], Awaitable[Any]], attempts: int = 3, delay: float = 0.2) -> Any:
    """Retry only StoreUnavailable (connection errors)."""
    for attempt in range(attempts):
        try:
            return await fn()
        except StoreUnavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay * (2**attempt))
