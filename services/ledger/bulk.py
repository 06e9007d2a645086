"""Bulk appends (the DMS import): one big request in a transaction of its own, the events
written with binary COPY.

The guarantees are exactly those of :meth:`EventStore.append` (docs/event-store.md),
because the transaction is built the same way: it begins by taking the head lock of the
tenant's log partition (``SELECT ... FROM ledger.partitions ... FOR UPDATE``, held until
COMMIT, so positions = commit order within the partition, without gaps; other partitions
are not held up); reads the head and the streams' last versions and event types in a
statement that starts after the lock is held; refuses the whole request on a stale
expected version (WrongExpectedVersion) or a closed stream (StreamClosed); numbers,
hash-chains and inserts the events; moves the head; runs the caller's in-transaction hook;
commits. Only the insert differs: ``COPY ledger.events FROM STDIN (FORMAT binary)`` (asyncpg
``copy_records_to_table``) instead of ``INSERT ... SELECT FROM unnest(...)`` of text
columns. PostgreSQL skips parsing and casting thirteen text columns per event (the JSON
columns are still validated), and Python skips joining them.

Everything that does not depend on the head (encoding the events and the metadata, event
ids, the JSON text of each event's hash input except its place in the log) is done before
the lock is taken, so the lock is held for numbering, SHA-256 and the database's own work.

There are no idempotency keys here: a bulk caller (the import) has its own idempotency
(docs/import.md). A request with a key is refused rather than silently not deduplicated.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import time
from typing import Final

import asyncpg
import msgspec

from schemas.events import encode_event
from services.ledger import sql
from services.ledger.errors import StreamClosed, WrongExpectedVersion
from services.ledger.hashchain import format_timestamp
from services.ledger.model import (
    CLOSING_EVENTS,
    AppendObserver,
    AppendRequest,
    AppendResult,
    StreamResult,
    new_event_ids,
    translate_errors,
)
from services.ledger.store import check_request

_encode: Final = msgspec.json.Encoder().encode

class _Prepared:
    """A request's events as columns, encoded before the lock is taken.

    ``tails[i]`` is the end of event i's hash input (hashchain.event_hash): the JSON text
    ``,occurred_on,data,metadata]``; the part before it depends on where the event lands
    and is filled in under the lock (``chain``)."""

    __slots__ = (
        "counts",
        "data",
        "event_ids",
        "metadata",
        "occurred",
        "schema_versions",
        "stream_ids",
        "stream_json",
        "tails",
        "type_keys",
        "types",
    )

    def __init__(self, request: AppendRequest) -> None:
        self.metadata = metadata = _encode(request.metadata).decode()
        writes = [w for w in request.writes if w.events]
        self.stream_ids = [w.stream_id for w in writes]
        self.stream_json = [_encode(s) for s in self.stream_ids]
        self.counts = [len(w.events) for w in writes]
        events = [e for w in writes for e in w.events]
        classes = [type(e) for e in events]
        kinds = {cls: (cls.__name__, cls.SCHEMA_VERSION) for cls in set(classes)}
        self.type_keys = [kinds[cls] for cls in classes]
        self.types = [k[0] for k in self.type_keys]
        self.schema_versions = [k[1] for k in self.type_keys]
        self.occurred = [e.occurred_on() for e in events]
        self.data = [b.decode() for b in map(encode_event, events)]
        occurred_json = {d: b',"' + d.isoformat().encode() + b'",' if d is not None else b",null,"
                         for d in set(self.occurred)}
        meta_tail = b"," + _encode(metadata) + b"]"
        self.tails = [occurred_json[d] + quoted + meta_tail
                      for d, quoted in zip(self.occurred, map(_encode, self.data))]
        self.event_ids = new_event_ids(len(events))

    def chain(self, tenant_id: str, recorded_at: dt.datetime, prev_hash: bytes, first_position: int,
              start_versions: list[int]) -> tuple[list[int], list[bytes]]:
        """Versions and hashes of every event, continuing the chain from ``prev_hash``:
        byte for byte the input hashchain.event_hash builds (a test compares them)."""
        tenant_json, ts_json = _encode(tenant_id), _encode(format_timestamp(recorded_at))
        middles = {k: b"," + tenant_json + b"," + _encode(k[0]) + b",%d," % k[1] + ts_json for k in set(self.type_keys)}
        versions: list[int] = []
        hashes: list[bytes] = []
        sha256, hexlify = hashlib.sha256, binascii.hexlify
        position = first_position
        i = 0
        eids, keys, tails = self.event_ids, self.type_keys, self.tails
        for stream_json, count, start in zip(self.stream_json, self.counts, start_versions):
            for version in range(start + 1, start + count + 1):
                prev_hash = sha256(b'["%s",%d,"%s",%s,%d%s%s' % (
                    hexlify(prev_hash), position, eids[i].encode(), stream_json, version, middles[keys[i]],
                    tails[i])).digest()
                hashes.append(prev_hash)
                versions.append(version)
                position += 1
                i += 1
        return versions, hashes


async def bulk_append(pool: asyncpg.Pool, request: AppendRequest, partition: int, *,
                      closing_events: frozenset[str] = CLOSING_EVENTS,
                      on_commit: AppendObserver | None = None) -> AppendResult:
    """Append one request atomically in a transaction of its own, events by binary COPY.
    Returns after COMMIT. Raises WrongExpectedVersion, StreamClosed, StoreUnavailable,
    IntegrityError, or whatever the request's hook raises (nothing is then written)."""
    if request.idempotency_key is not None:
        raise ValueError("bulk appends take no idempotency key (the caller deduplicates)")
    check_request(request)
    started = time.perf_counter()
    prepared = _Prepared(request)
    streams = sorted(set(prepared.stream_ids))
    with translate_errors():
        async with pool.acquire() as conn:
            try:
                await conn.execute(sql.begin_and_lock([partition]))
                result = await _write(conn, request, partition, prepared, streams, closing_events)
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed() and conn.is_in_transaction():
                    try:
                        await conn.execute("ROLLBACK", timeout=5)
                    except BaseException:
                        conn.terminate()  # the pool replaces it
                        raise
                raise
    if on_commit is not None:
        on_commit(len(prepared.data), time.perf_counter() - started)
    return result


async def _write(conn: asyncpg.Connection, request: AppendRequest, partition: int, prepared: _Prepared,
                 streams: list[str], closing_events: frozenset[str]) -> AppendResult:
    # After the lock is ours, in a statement of its own (its snapshot sees every earlier
    # append): the partition's head, and per stream its last version and event type.
    state = await conn.fetchrow(sql.BULK_READ_STATE, "\n".join(streams), "\n".join([str(partition)] * len(streams)),
                                partition)
    assert state is not None
    current = dict(zip(streams, state["versions"] or ()))
    last_types = dict(zip(streams, state["last_types"] or ()))
    for write in request.writes:  # the same refusals, in the same order, as EventStore.append
        if write.events and last_types.get(write.stream_id) in closing_events:
            raise StreamClosed(write.stream_id, last_types[write.stream_id])
    for write in request.writes:
        if write.expected_version is not None and current.get(write.stream_id, 0) != write.expected_version:
            raise WrongExpectedVersion(write.stream_id, write.expected_version, current.get(write.stream_id, 0))
    head_position: int = state["position"]
    first_prev = bytes(state["hash"])
    recorded_at = max(dt.datetime.now(dt.UTC), state["recorded_at"])  # never backwards along the partition
    # A stream written twice in one request continues from its first write.
    versions = dict(current)
    start_versions: list[int] = []
    results: list[StreamResult] = []
    for stream_id, count in zip(prepared.stream_ids, prepared.counts):
        start = versions.get(stream_id, 0)
        start_versions.append(start)
        versions[stream_id] = start + count
        results.append(StreamResult(stream_id, start + 1, start + count))
    first = head_position + 1
    event_versions, hashes = prepared.chain(request.tenant_id, recorded_at, first_prev, first, start_versions)
    n = len(hashes)
    stream_column = [s for s, c in zip(prepared.stream_ids, prepared.counts) for _ in range(c)]
    tenant, meta = request.tenant_id, prepared.metadata
    records = zip([partition] * n, range(first, first + n), prepared.event_ids, stream_column, event_versions,
                  [tenant] * n, prepared.types, prepared.schema_versions, [recorded_at] * n,
                  prepared.occurred, prepared.data, [meta] * n, [first_prev, *hashes[:-1]], hashes)
    await conn.copy_records_to_table("events", schema_name="ledger", columns=sql.BULK_EVENT_COLUMNS, records=records)
    await conn.execute(sql.MOVE_HEAD, partition, head_position + n, hashes[-1], recorded_at)
    result = AppendResult(streams=results, first_position=first, last_position=head_position + n,
                          event_ids=prepared.event_ids, recorded_at=recorded_at, partition=partition)
    if request.in_transaction is not None:
        await request.in_transaction(conn, result)
    return result
