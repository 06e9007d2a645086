"""Bulk appends (the DMS import): one big request in a transaction of its own, the events
written with binary COPY.

The guarantees are exactly those of :meth:`EventStore.append` (docs/event-store.md),
because the transaction is built the same way: it begins by taking the head lock
(``SELECT ... FROM ledger.head FOR UPDATE``, held until COMMIT, so positions = commit
order, without gaps); reads the head and the streams' last versions and event types in a
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
import os
import time
from typing import Final

import asyncpg
import msgspec

from schemas.events import encode_event
from services.ledger.errors import StreamClosed, WrongExpectedVersion
from services.ledger.hashchain import format_timestamp
from services.ledger.store import (
    CLOSING_EVENTS,
    AppendObserver,
    AppendRequest,
    AppendResult,
    StreamResult,
    translate_errors,
)

_encode: Final = msgspec.json.Encoder().encode

_BEGIN_AND_LOCK: Final = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1 FROM ledger.head FOR UPDATE"
# After the lock is ours, in a statement of its own (its snapshot sees every earlier
# append): the head, and per stream (in the order given) its last version and event type.
_READ_STATE: Final = (
    "SELECT h.position, h.hash, h.recorded_at, s.versions, s.last_types"
    " FROM ledger.head h"
    " CROSS JOIN LATERAL ("
    "  SELECT array_agg(coalesce(e.version, 0) ORDER BY u.ord) AS versions,"
    "   array_agg(e.event_type ORDER BY u.ord) AS last_types"
    "  FROM unnest(string_to_array($1, E'\\n')) WITH ORDINALITY AS u(stream_id, ord)"
    "  LEFT JOIN LATERAL (SELECT ev.version, ev.event_type FROM ledger.events ev"
    "   WHERE ev.stream_id = u.stream_id ORDER BY ev.version DESC LIMIT 1) e ON true"
    " ) s"
)
_MOVE_HEAD: Final = "UPDATE ledger.head SET position = $1, hash = $2, recorded_at = $3"
_EVENT_COLUMNS: Final = (
    "position", "event_id", "stream_id", "version", "tenant_id", "event_type", "schema_version",
    "recorded_at", "occurred_on", "data", "metadata", "prev_hash", "hash",
)
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _event_ids(count: int) -> list[str]:
    """Random (version 4) UUIDs as text, from one ``os.urandom`` call."""
    h = os.urandom(16 * count).hex()
    variant = _VARIANT
    return [f"{h[a:a + 8]}-{h[a + 8:a + 12]}-4{h[a + 13:a + 16]}-{variant[h[a + 16]]}{h[a + 17:a + 20]}-{h[a + 20:a + 32]}"
            for a in range(0, 32 * count, 32)]


class _Prepared:
    """A request's events as columns, encoded before the lock is taken.

    ``tails[i]`` is the end of event i's hash input (hashchain.event_hash): the JSON text
    ``,occurred_on,data,metadata]``; the part before it depends on where the event lands
    and is filled in under the lock (``chain``)."""

    __slots__ = ("stream_ids", "stream_json", "counts", "event_ids", "types", "schema_versions", "occurred",
                 "data", "metadata", "tails", "type_keys")

    def __init__(self, request: AppendRequest) -> None:
        metadata = _encode(request.metadata).decode()
        meta_tail = b"," + _encode(metadata) + b"]"
        self.metadata = metadata
        self.stream_ids: list[str] = []
        self.stream_json: list[bytes] = []
        self.counts: list[int] = []
        self.types: list[str] = []
        self.schema_versions: list[int] = []
        self.type_keys: list[tuple[str, int]] = []
        self.occurred: list[dt.date | None] = []
        self.data: list[str] = []
        self.tails: list[bytes] = []
        encode, types, svs, keys, occurred, data, tails = (
            encode_event, self.types, self.schema_versions, self.type_keys, self.occurred, self.data, self.tails)
        iso_json: dict[dt.date | None, bytes] = {None: b",null,"}
        for write in request.writes:
            if not write.events:
                continue
            self.stream_ids.append(write.stream_id)
            self.stream_json.append(_encode(write.stream_id))
            self.counts.append(len(write.events))
            for event in write.events:
                cls = type(event)
                name, sv = cls.__name__, cls.SCHEMA_VERSION
                day = event.occurred_on()
                text = encode(event).decode()
                types.append(name)
                svs.append(sv)
                keys.append((name, sv))
                occurred.append(day)
                data.append(text)
                occ = iso_json.get(day)
                if occ is None:
                    occ = iso_json[day] = b',"' + day.isoformat().encode() + b'",'  # type: ignore[union-attr]
                tails.append(occ + _encode(text) + meta_tail)
        self.event_ids = _event_ids(len(data))

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


async def bulk_append(pool: asyncpg.Pool, request: AppendRequest, *,
                      closing_events: frozenset[str] = CLOSING_EVENTS,
                      on_commit: AppendObserver | None = None) -> AppendResult:
    """Append one request atomically in a transaction of its own, events by binary COPY.
    Returns after COMMIT. Raises WrongExpectedVersion, StreamClosed, StoreUnavailable,
    IntegrityError, or whatever the request's hook raises (nothing is then written)."""
    if request.idempotency_key is not None:
        raise ValueError("bulk appends take no idempotency key (the caller deduplicates)")
    if not request.writes or not any(w.events for w in request.writes):
        raise ValueError("append needs at least one event")
    if not _is_id(request.tenant_id) or not all(_is_id(w.stream_id) for w in request.writes):
        raise ValueError("tenant and stream ids are non-empty printable text")
    started = time.perf_counter()
    prepared = _Prepared(request)
    streams = sorted(set(prepared.stream_ids))
    with translate_errors():
        async with pool.acquire() as conn:
            await conn.execute(_BEGIN_AND_LOCK)
            try:
                result = await _write(conn, request, prepared, streams, closing_events)
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


async def _write(conn: asyncpg.Connection, request: AppendRequest, prepared: _Prepared, streams: list[str],
                 closing_events: frozenset[str]) -> AppendResult:
    state = await conn.fetchrow(_READ_STATE, "\n".join(streams))
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
    recorded_at = max(dt.datetime.now(dt.timezone.utc), state["recorded_at"])  # never backwards along the log
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
    records = zip(range(first, first + n), prepared.event_ids, stream_column, event_versions,
                  [tenant] * n, prepared.types, prepared.schema_versions, [recorded_at] * n,
                  prepared.occurred, prepared.data, [meta] * n, [first_prev, *hashes[:-1]], hashes)
    await conn.copy_records_to_table("events", schema_name="ledger", columns=_EVENT_COLUMNS, records=records)
    await conn.execute(_MOVE_HEAD, head_position + n, hashes[-1], recorded_at)
    result = AppendResult(streams=results, first_position=first, last_position=head_position + n,
                          event_ids=prepared.event_ids, recorded_at=recorded_at)
    if request.in_transaction is not None:
        await request.in_transaction(conn, result)
    return result


def _is_id(text: str) -> bool:
    return bool(text) and text.isprintable()
