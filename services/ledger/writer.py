"""The group-commit writer behind :meth:`EventStore.append` (docs/event-store.md).

One writer task per process takes whatever requests arrived while the previous batch was
committing, and commits them in one transaction: one WAL flush for many requests, every
caller answered only after that commit. A batch may hold requests of many tenants, hence
of many log partitions; each partition is numbered and hash-chained on its own head.

The batch goes the optimistic way first: read the heads, stream tails and idempotency keys
without a lock, plan in Python, and send ONE autocommit statement (``sql.WRITE_IF_HEADS``)
that locks the partitions' head rows, writes the partitions whose head has not moved since
the read, and says which it wrote. The requests of a partition another process appended to
in between go into the next batch, planned again on its fresh read (a few times), and then
the locked way: BEGIN, lock its heads, read, write, COMMIT. Only requests of the same
partitions ever wait for each other.

A request whose expected version is stale, or that writes to a closed stream (an erased
subject), fails alone; the rest of the batch commits. A request with an
``in_transaction`` hook gets a transaction of its own, the locked way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec
import structlog

from schemas.events import encode_event
from services.ledger import sql
from services.ledger.errors import IdempotencyKeyReused, LedgerError, StoreUnavailable, StreamClosed, WrongExpectedVersion
from services.ledger.hashchain import event_hash
from services.ledger.model import (
    RESULT_DECODER,
    AppendObserver,
    AppendRequest,
    AppendResult,
    StreamResult,
    new_event_ids,
    translate_errors,
)

log = structlog.get_logger(__name__)

_encode: Final = msgspec.json.Encoder().encode

# How often a request is planned on a fresh read when other processes moved its
# partition's head in between, before it goes the locked way.
OPTIMISTIC_TRIES: Final = 3

CONNECTION_LOST: Final = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    # A connection that got the server's goodbye while idle is stuck waiting for the
    # rest of that error: asyncpg refuses to start anything else on it.
    asyncpg.exceptions.InternalClientError,
)


def usable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.exceptions.InterfaceError:  # lost, and taken back by the pool
        return False


class Encoded(NamedTuple):
    """An event as the writer needs it, encoded by the caller before it is queued, so the
    writer (one at a time, holding head locks) only numbers, hashes and sends."""

    data: str
    event_type: str
    schema_version: int
    occurred_on: dt.date | None


class Pending:
    __slots__ = ("request", "future", "metadata_json", "encoded", "partition", "tries")

    def __init__(self, request: AppendRequest, future: asyncio.Future[AppendResult], partition: int) -> None:
        self.request = request
        self.future = future
        self.partition = partition
        self.tries = 0  # optimistic writes that found the partition's head moved
        self.metadata_json = _encode(request.metadata).decode()
        self.encoded = [
            [Encoded(encode_event(e).decode(), type(e).__name__, e.SCHEMA_VERSION, e.occurred_on()) for e in w.events]
            for w in request.writes
        ]


class GroupCommitWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch_events: int,
        on_commit: AppendObserver | None,
        closing_events: frozenset[str],
        on_conflict: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_conflict = on_conflict
        self._max_batch_events = max_batch_events
        self._on_commit = on_commit
        self._closing_events = closing_events
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        # Requests whose partition another process appended to between the batch's read
        # and its write: the head of the next batch.
        self._carried: list[Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None  # the writer's own, between batches

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_loop(), name="ledger-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unanswered, self._carried = self._carried, []
        while not self._queue.empty():
            unanswered.append(self._queue.get_nowait())
        for pending in unanswered:
            if not pending.future.done():
                pending.future.set_exception(StoreUnavailable("event store is shutting down"))
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a lost one cannot take it, nor needs to
                await conn.execute(sql.WRITER_SESSION_END)
            with contextlib.suppress(Exception):  # lost connections are the pool's already
                await self._pool.release(conn)

    async def submit(self, request: AppendRequest, partition: int) -> AppendResult:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(request, future, partition))
        return await future

    # -- the loop ------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            if self._carried:
                batch, self._carried = self._carried, []
            else:
                batch = [await self._queue.get()]
            size = sum(len(w.events) for p in batch for w in p.request.writes)
            while size < self._max_batch_events and not self._queue.empty():
                nxt = self._queue.get_nowait()
                batch.append(nxt)
                size += sum(len(w.events) for w in nxt.request.writes)
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            for group in _transaction_groups(live):
                await self._commit_group(group, live)

    async def _commit_group(self, group: list[Pending], live: list[Pending]) -> None:
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

    # -- connections ---------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        """The writer's own connection, kept between batches. Raises one of
        ``CONNECTION_LOST`` (having dropped it) if a fresh one is dead already."""
        if self._conn is not None and not usable(self._conn):
            await self._drop_connection()
        if self._conn is None:
            self._conn = await self._pool.acquire()
            try:
                await self._conn.execute(sql.WRITER_SESSION)
            except CONNECTION_LOST:
                await self._drop_connection()
                raise
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
            if usable(conn):
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK", timeout=5)
                return
        except (Exception, asyncio.CancelledError):
            pass
        await self._drop_connection()

    async def _begin(self, partitions: list[int]) -> asyncpg.Connection:
        """Begin the batch's transaction and take the head locks of its partitions, in
        partition order: FOR UPDATE on a partition's head row is held until this
        transaction commits, so no other writer can assign that partition's next
        positions before our rows are visible (insert order = commit order)."""
        attempts = self._pool.get_max_size() + 1
        for attempt in range(attempts):
            try:
                conn = await self._connection()
            except CONNECTION_LOST:
                if attempt == attempts - 1:
                    raise
                continue
            try:
                await conn.execute(sql.begin_and_lock(partitions))
                return conn
            except CONNECTION_LOST:
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

    # -- committing ----------------------------------------------------------------

    async def _commit_batch(self, batch: list[Pending]) -> int:
        """Commit the batch and resolve each future, but for the requests of partitions
        another process moved meanwhile: those are carried into the next batch, or after
        ``OPTIMISTIC_TRIES`` committed the locked way. Returns events appended."""
        if any(p.request.in_transaction is not None for p in batch):
            return await self._commit_locked(batch)
        try:
            conn = await self._connection()
            state = await conn.fetchrow(sql.READ_STATE, *_state_args(batch))
        except CONNECTION_LOST:
            # The kept connection died while idle; nothing was written. The locked path
            # begins again on another one.
            await self._drop_connection()
            return await self._commit_locked(batch)
        assert state is not None
        plan = _plan(batch, state, self._closing_events)
        written: set[int] = set()
        if plan.appended:
            # If this fails, whether it committed is unknown: the callers get the error,
            # and the batch is NOT tried again (a retry could append it twice).
            written = set(await conn.fetchval(sql.WRITE_IF_HEADS, *plan.write_args()))
        appended = plan.resolve(lambda p: p not in plan.heads or p in written)
        moved = [p for p in batch if not p.future.done()]
        if not moved:
            return appended
        if self._on_conflict is not None:
            self._on_conflict(len(set(plan.heads) - written))
        # Planned again with the next batch, on its read: the same two statements then
        # serve the new requests too. Retrying them alone at once cost two more round
        # trips per batch with two processes, where nearly every batch met a partition the
        # other had just written (0.96 per batch, docs/performance.md).
        for p in moved:
            p.tries += 1
        tired = [p for p in moved if p.tries >= OPTIMISTIC_TRIES]
        if tired:
            appended += await self._commit_locked(tired)
        self._carried.extend(p for p in moved if p.tries < OPTIMISTIC_TRIES)
        return appended

    async def _commit_locked(self, batch: list[Pending]) -> int:
        """One transaction for the batch, in four round trips (begin and lock; read; write;
        commit), the in-transaction hooks after the write."""
        conn = await self._begin(sorted({p.partition for p in batch}))
        try:
            # A statement of its own, after the locks are ours: its snapshot sees every
            # append committed before, so heads, versions and idempotency keys are current.
            state = await conn.fetchrow(sql.READ_STATE, *_state_args(batch))
            assert state is not None
            plan = _plan(batch, state, self._closing_events)
            if plan.appended:
                written = set(await conn.fetchval(sql.WRITE_IF_HEADS, *plan.write_args()))
                if written != set(plan.heads):  # impossible while the locks are held
                    raise AssertionError(f"locked write skipped partitions {set(plan.heads) - written}")
            for pending, outcome in plan.outcomes:
                hook = pending.request.in_transaction
                if hook is not None and isinstance(outcome, AppendResult) and not outcome.replayed:
                    await hook(conn, outcome)
            await conn.execute("COMMIT")
        except BaseException:
            await self._abandon(conn)
            raise
        return plan.resolve(lambda p: True)


def _transaction_groups(pending: list[Pending]) -> list[list[Pending]]:
    """Queue order kept; a request with an ``in_transaction`` hook gets a transaction alone."""
    groups: list[list[Pending]] = []
    for p in pending:
        if p.request.in_transaction is None and groups and groups[-1][-1].request.in_transaction is None:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _streams(batch: list[Pending]) -> list[tuple[str, int]]:
    return sorted({(w.stream_id, p.partition) for p in batch for w in p.request.writes})


def _state_args(batch: list[Pending]) -> tuple[Any, ...]:
    """The parameters of ``sql.READ_STATE`` for a batch: its streams, partitions and
    idempotency keys."""
    streams = _streams(batch)
    keyed = [(p.partition, p.request.tenant_id, p.request.idempotency_key) for p in batch if p.request.idempotency_key]
    return ("\n".join(s for s, _ in streams), "\n".join(str(p) for _, p in streams),
            sorted({p.partition for p in batch}),
            [k[0] for k in keyed], [k[1] for k in keyed], [k[2] for k in keyed])


class _Head:
    __slots__ = ("read_position", "position", "hash")

    def __init__(self, position: int, hash_: bytes) -> None:
        self.read_position = position
        self.position = position
        self.hash = hash_


def _plan(batch: list[Pending], state: asyncpg.Record, closing_events: frozenset[str]) -> BatchPlan:
    """Number, version and hash the batch's events, each partition on top of its head in
    ``state`` (with each stream's last version and event type, and the idempotency keys
    used); decide each request's outcome. No I/O."""
    plan = BatchPlan()
    heads = {p: _Head(pos, bytes(h)) for p, pos, h in zip(state["partitions"], state["positions"], state["hashes"])}
    streams = _streams(batch)
    now = dt.datetime.now(dt.timezone.utc)
    # recorded_at never goes backwards along a partition, whatever the writers' clocks
    # say: "recorded up to K" is then always a prefix of each partition.
    recorded_at = plan.recorded_at = max([now, *state["recorded_ats"]])
    versions: dict[tuple[str, int], int] = dict(zip(streams, state["versions"] or ()))
    closed: dict[tuple[str, int], str] = {
        s: t for s, t in zip(streams, state["last_types"] or ()) if t in closing_events
    }
    seen_keys: dict[tuple[int, str, str], tuple[bytes, AppendResult]] = {}
    for partition, tenant_id, key, fingerprint, result in zip(
        state["key_partitions"] or (), state["key_tenants"] or (), state["keys"] or (),
        state["fingerprints"] or (), state["results"] or (),
    ):
        seen_keys[(partition, tenant_id, key)] = (
            bytes(fingerprint),
            msgspec.structs.replace(RESULT_DECODER.decode(result), replayed=True, partition=partition),
        )

    cols = plan.cols
    outcomes = plan.outcomes
    batch_keys: dict[tuple[int, str, str], tuple[bytes, Pending]] = {}
    event_ids = iter(new_event_ids(sum(len(w.events) for p in batch for w in p.request.writes)))
    for pending in batch:
        req = pending.request
        part = pending.partition
        key = (part, req.tenant_id, req.idempotency_key) if req.idempotency_key else None
        if key is not None and key in seen_keys:
            fingerprint, previous = seen_keys[key]
            outcomes.append((pending, previous if fingerprint == req.fingerprint else IdempotencyKeyReused(key[2])))
            continue
        if key is not None and key in batch_keys:
            fingerprint, leader = batch_keys[key]
            if fingerprint == req.fingerprint:
                plan.followers.append((pending, leader))
            else:
                outcomes.append((pending, IdempotencyKeyReused(key[2])))
            continue
        refusal = _check_closed(req, part, closed) or _check_versions(req, part, versions)
        if refusal is not None:
            outcomes.append((pending, refusal))
            continue
        head = heads[part]
        position, prev_hash = head.position, head.hash
        metadata_json = pending.metadata_json
        results: list[StreamResult] = []
        request_event_ids: list[str] = []
        first_position = position + 1
        part_text = str(part)
        for write, encoded in zip(req.writes, pending.encoded):
            if not encoded:
                continue
            stream = (write.stream_id, part)
            start_version = versions.get(stream, 0)
            version = start_version
            for data, event_type, schema_version, occurred in encoded:
                position += 1
                version += 1
                event_id = next(event_ids)
                digest = event_hash(
                    prev_hash, position, event_id, write.stream_id, version, req.tenant_id,
                    event_type, schema_version, recorded_at, occurred, data, metadata_json,
                )
                cols["position"].append(str(position))
                cols["event_id"].append(event_id)
                cols["stream_id"].append(write.stream_id)
                cols["version"].append(str(version))
                cols["tenant_id"].append(req.tenant_id)
                cols["event_type"].append(event_type)
                cols["schema_version"].append(str(schema_version))
                cols["occurred_on"].append(occurred.isoformat() if occurred is not None else "")
                cols["data"].append(data)
                cols["metadata"].append(metadata_json)
                cols["partition"].append(part_text)
                plan.prev_hashes.append(prev_hash)
                plan.hashes.append(digest)
                prev_hash = digest
                request_event_ids.append(event_id)
                if event_type in closing_events:
                    closed[stream] = event_type
            versions[stream] = version
            results.append(StreamResult(write.stream_id, start_version + 1, version))
        head.position, head.hash = position, prev_hash
        plan.heads[part] = head
        result = AppendResult(
            streams=results,
            first_position=first_position,
            last_position=position,
            event_ids=request_event_ids,
            recorded_at=recorded_at,
            partition=part,
        )
        outcomes.append((pending, result))
        if key is not None:
            batch_keys[key] = (req.fingerprint, pending)
            plan.new_keys.append((part, key[1], key[2], req.fingerprint, _encode(result).decode()))
    plan.appended = len(plan.hashes)
    return plan


def _check_closed(req: AppendRequest, part: int, closed: dict[tuple[str, int], str]) -> StreamClosed | None:
    if closed:
        for write in req.writes:
            if write.events and (write.stream_id, part) in closed:
                return StreamClosed(write.stream_id, closed[(write.stream_id, part)])
    return None


def _check_versions(req: AppendRequest, part: int, versions: dict[tuple[str, int], int]) -> WrongExpectedVersion | None:
    for write in req.writes:
        if write.expected_version is None:
            continue
        current = versions.get((write.stream_id, part), 0)
        if current != write.expected_version:
            return WrongExpectedVersion(write.stream_id, write.expected_version, current)
    return None


class BatchPlan:
    """What a batch writes (columns, new idempotency keys, the partitions' new heads) and
    what each request gets, decided on one read of the state (``_plan``)."""

    __slots__ = ("cols", "outcomes", "followers", "new_keys", "recorded_at", "heads", "prev_hashes", "hashes",
                 "appended")

    def __init__(self) -> None:
        self.cols: dict[str, list[str]] = {
            k: [] for k in ("position", "event_id", "stream_id", "version", "tenant_id", "event_type",
                            "schema_version", "occurred_on", "data", "metadata", "partition")
        }
        self.outcomes: list[tuple[Pending, AppendResult | Exception]] = []
        self.followers: list[tuple[Pending, Pending]] = []  # same idempotency key as a leader in the batch
        self.new_keys: list[tuple[int, str, str, bytes, str]] = []
        self.recorded_at = dt.datetime.min
        self.heads: dict[int, _Head] = {}  # the partitions this batch appends to
        self.prev_hashes: list[bytes] = []
        self.hashes: list[bytes] = []
        self.appended = 0

    def write_args(self) -> tuple[Any, ...]:
        """The parameters of ``sql.WRITE_IF_HEADS``."""
        c = {k: "\n".join(v) for k, v in self.cols.items()}
        keys = self.new_keys
        parts = sorted(self.heads)
        return (
            c["position"], c["event_id"], c["stream_id"], c["version"], c["tenant_id"], c["event_type"],
            c["schema_version"], self.recorded_at, c["occurred_on"], c["data"], c["metadata"],
            b"".join(self.prev_hashes), b"".join(self.hashes), c["partition"],
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
            [k[4] for k in keys],
            parts, [self.heads[p].read_position for p in parts], [self.heads[p].position for p in parts],
            [self.heads[p].hash for p in parts],
        )

    def resolve(self, committed: Callable[[int], bool]) -> int:
        """After the commit, and only then: answer every caller of a partition for which
        ``committed(partition)`` holds (written, or nothing to write there); the events
        appended for them. The others stay pending, to be planned again."""
        by_pending = {id(p): o for p, o in self.outcomes}
        appended = 0
        for pending, outcome in self.outcomes:
            if pending.future.done() or not committed(pending.partition):
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
                if not outcome.replayed:
                    appended += outcome.last_position - outcome.first_position + 1
        for pending, leader in self.followers:
            if pending.future.done() or not committed(pending.partition):
                continue
            outcome = by_pending[id(leader)]
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(msgspec.structs.replace(outcome, replayed=True))
        return appended


__all__ = ["CONNECTION_LOST", "GroupCommitWriter", "usable"]
