"""The event store's SQL, in one place (the writer in writer.py, the bulk path in bulk.py,
the readers in store.py). Nothing outside services/ledger/ reads ``ledger.events`` with
these: other services call the store's verbs.

Every statement on ``ledger.events``, ``ledger.partitions`` and ``ledger.idempotency``
names the partition(s) it touches (the leading column of every key), so each is answered
from one partition's part of the indexes, and on a sharded PostgreSQL (Citus,
docs/deploy.md) from one shard.

Column values travel as ONE newline-joined text parameter per column, split by
PostgreSQL: asyncpg checks every element of a list parameter against collections.abc (two
Python-level calls per text element), which cost more than the insert itself for a bulk
append. No column value holds a newline: JSON from msgspec escapes it, ids are checked in
``EventStore.append``.
"""

from __future__ import annotations

from typing import Final

# What row_to_recorded reads (model.py), in this order (the rebuild reads by index).
EVENT_COLUMNS: Final = (
    "position, event_id::text AS event_id, stream_id, version, tenant_id, event_type, schema_version,"
    " recorded_at, occurred_on, data, metadata, hash, log_partition"
)

# The locked way begins with this (simple protocol: two statements, one round trip); the
# partitions, in ascending order, are filled in by ``lock_partitions`` (integers only).
# Every writer locks head rows in ascending partition order, so two writers that need
# overlapping sets never deadlock.
_BEGIN_AND_LOCK: Final = (
    "BEGIN ISOLATION LEVEL READ COMMITTED;"
    " SELECT 1 FROM ledger.partitions WHERE log_partition IN ({}) ORDER BY log_partition FOR UPDATE"
)


def begin_and_lock(partitions: list[int]) -> str:
    """BEGIN and take the head locks of ``partitions`` (held until COMMIT)."""
    return _BEGIN_AND_LOCK.format(", ".join(str(int(p)) for p in sorted(set(partitions))))


# The writer's session: its two statements (READ_STATE, WRITE_IF_HEADS) run on generic
# plans. PostgreSQL otherwise plans them afresh on every execution when batches are small
# (a few requests, as with several API processes): 798 -> 512 us of PostgreSQL CPU per
# batch of 4 events, no change at 16 (docs/performance.md, "Fifth session"). Every lookup
# in them is by key, so one plan suits every batch. Reset before the connection goes back
# to the pool (the API's pool does not reset connections: services/database.py).
WRITER_SESSION: Final = "SET plan_cache_mode = force_generic_plan"
WRITER_SESSION_END: Final = "RESET plan_cache_mode"

# Each stream's last version (0 if new) and event type, in the order of the
# newline-joined streams $1 with their partitions $2.
STREAM_TAILS: Final = (
    " CROSS JOIN LATERAL ("
    "  SELECT array_agg(coalesce(e.version, 0) ORDER BY u.ord) AS versions,"
    "   array_agg(e.event_type ORDER BY u.ord) AS last_types"
    "  FROM unnest(string_to_array($1, E'\\n'), string_to_array($2, E'\\n')::smallint[])"
    "   WITH ORDINALITY AS u(stream_id, log_partition, ord)"
    "  LEFT JOIN LATERAL (SELECT ev.version, ev.event_type FROM ledger.events ev"
    "   WHERE ev.log_partition = u.log_partition AND ev.stream_id = u.stream_id"
    "   ORDER BY ev.version DESC LIMIT 1) e ON true"
    " ) s"
)
# The heads of the partitions $3 (in partition order), the streams' tails, and the
# idempotency keys ($4 partitions, $5 tenants, $6 keys) already used.
READ_STATE: Final = (
    "SELECT h.partitions, h.positions, h.hashes, h.recorded_ats, s.versions, s.last_types,"
    " k.key_partitions, k.key_tenants, k.keys, k.fingerprints, k.results"
    " FROM (SELECT array_agg(log_partition ORDER BY log_partition) AS partitions,"
    "  array_agg(position ORDER BY log_partition) AS positions, array_agg(hash ORDER BY log_partition) AS hashes,"
    "  array_agg(recorded_at ORDER BY log_partition) AS recorded_ats"
    "  FROM ledger.partitions WHERE log_partition = ANY($3::smallint[])) h"
    + STREAM_TAILS +
    " CROSS JOIN LATERAL ("
    "  SELECT array_agg(i.log_partition ORDER BY q.ord) AS key_partitions,"
    "   array_agg(i.tenant_id ORDER BY q.ord) AS key_tenants, array_agg(i.key ORDER BY q.ord) AS keys,"
    "   array_agg(i.fingerprint ORDER BY q.ord) AS fingerprints, array_agg(i.result ORDER BY q.ord) AS results"
    "  FROM unnest($4::smallint[], $5::text[], $6::text[]) WITH ORDINALITY AS q(log_partition, tenant_id, key, ord)"
    "  JOIN ledger.idempotency i ON i.log_partition = q.log_partition AND i.tenant_id = q.tenant_id AND i.key = q.key"
    " ) k"
)

# The write: ONE statement that
# 1. takes the head locks of the partitions it writes ($20), in partition order (the
#    CTE is evaluated before any row is written: every other part reads `ok`);
# 2. keeps the partitions whose head is still at the position the batch was planned on
#    ($21). Positions only grow and every append moves its partition's head, so an
#    unmoved head means nothing was appended to that partition since the read, and the
#    plan is still the truth there;
# 3. inserts those partitions' events (positions $1, partitions $14, each event's
#    prev_hash and hash 32-byte slices of $12 and $13) and idempotency keys ($15-$19), and
#    moves their heads ($22, $23);
# and returns the partitions it wrote. Run in autocommit it is the optimistic way (the
# locks are held only inside the server, from this statement's start to its commit);
# inside the locked way's transaction every head is unmoved and it writes everything.
WRITE_IF_HEADS: Final = (
    "WITH heads AS (SELECT log_partition, position FROM ledger.partitions"
    "  WHERE log_partition = ANY($20::smallint[]) ORDER BY log_partition FOR UPDATE),"
    " ok AS (SELECT h.log_partition FROM heads h JOIN unnest($20::smallint[], $21::bigint[]) AS x(p, pos)"
    "  ON h.log_partition = x.p AND h.position = x.pos),"
    " new_events AS (INSERT INTO ledger.events (log_partition, position, event_id, stream_id, version, tenant_id,"
    "  event_type, schema_version, recorded_at, occurred_on, data, metadata, prev_hash, hash)"
    "  SELECT u.p::smallint, u.pos::bigint, u.e::uuid, u.s, u.v::int, u.t, u.ty, u.sv::smallint, $8,"
    "  nullif(u.o, '')::date, u.d::json, u.m::json,"
    "  substring($12::bytea FROM (u.n::int - 1) * 32 + 1 FOR 32), substring($13::bytea FROM (u.n::int - 1) * 32 + 1 FOR 32)"
    "  FROM unnest(string_to_array($1, E'\\n'), string_to_array($2, E'\\n'), string_to_array($3, E'\\n'),"
    "  string_to_array($4, E'\\n'), string_to_array($5, E'\\n'), string_to_array($6, E'\\n'),"
    "  string_to_array($7, E'\\n'), string_to_array($9, E'\\n'), string_to_array($10, E'\\n'),"
    "  string_to_array($11, E'\\n'), string_to_array($14, E'\\n'))"
    "  WITH ORDINALITY AS u(pos, e, s, v, t, ty, sv, o, d, m, p, n)"
    "  WHERE u.p::smallint IN (SELECT log_partition FROM ok)),"
    " new_keys AS (INSERT INTO ledger.idempotency (log_partition, tenant_id, key, fingerprint, result)"
    "  SELECT * FROM unnest($15::smallint[], $16::text[], $17::text[], $18::bytea[], $19::json[]) AS k(p, t, key, f, r)"
    "  WHERE k.p IN (SELECT log_partition FROM ok)),"
    " moved AS (UPDATE ledger.partitions h SET position = n.pos, hash = n.hash, recorded_at = $8"
    "  FROM unnest($20::smallint[], $22::bigint[], $23::bytea[]) AS n(p, pos, hash)"
    "  WHERE h.log_partition = n.p AND n.p IN (SELECT log_partition FROM ok) RETURNING h.log_partition)"
    " SELECT coalesce(array_agg(log_partition), '{}') FROM moved"
)

# The bulk path (bulk.py), after the lock: the head of partition $3 and the streams' tails.
BULK_READ_STATE: Final = (
    "SELECT h.position, h.hash, h.recorded_at, s.versions, s.last_types"
    " FROM ledger.partitions h" + STREAM_TAILS + " WHERE h.log_partition = $3"
)
MOVE_HEAD: Final = "UPDATE ledger.partitions SET position = $2, hash = $3, recorded_at = $4 WHERE log_partition = $1"
BULK_EVENT_COLUMNS: Final = (
    "log_partition", "position", "event_id", "stream_id", "version", "tenant_id", "event_type", "schema_version",
    "recorded_at", "occurred_on", "data", "metadata", "prev_hash", "hash",
)

# -- readers ---------------------------------------------------------------------------

PARTITION_COUNT: Final = "SELECT count(*)::integer FROM ledger.partitions"
READ_STREAM: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE log_partition = $1 AND stream_id = $2 AND version >= $3"
    " ORDER BY version LIMIT $4"
)
# The events of types $3 of the streams $2 (newline-joined) in partitions $1, by stream.
READ_STREAMS: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE log_partition = ANY($1::smallint[])"
    " AND stream_id = ANY(string_to_array($2, E'\\n')) AND event_type = ANY($3::text[]) ORDER BY stream_id, version"
)
# (stream id, data) of the events of type $3 of the streams $2 (newline-joined) in
# partitions $1, by stream and version: for a reader that decodes one event type itself.
READ_EVENT_DATA: Final = (
    "SELECT stream_id, data FROM ledger.events WHERE log_partition = ANY($1::smallint[])"
    " AND stream_id = ANY(string_to_array($2, E'\\n')) AND event_type = $3 ORDER BY stream_id, version"
)
# Every stream holding an event of type $1 (every partition: not a hot query).
STREAMS_WITH_EVENT_TYPE: Final = "SELECT DISTINCT stream_id FROM ledger.events WHERE event_type = $1 ORDER BY 1"
STREAM_VERSION: Final = (
    "SELECT max(version) FROM ledger.events WHERE log_partition = $1 AND stream_id = $2"
)
# Each stream's version as of position $3 of partition $1 (streams $2, newline-joined: a
# stream id has no newline, and asyncpg checks each element of a list parameter in Python,
# slow for 10,000 of them).
STREAM_VERSIONS_AT: Final = (
    "SELECT e.stream_id, max(e.version) FROM ledger.events e WHERE e.log_partition = $1"
    " AND e.stream_id = ANY(string_to_array($2, E'\\n')) AND e.position <= $3 GROUP BY e.stream_id"
)
# (version, last event type) of each stream $1 (newline-joined) in partitions $2.
STREAM_HEADS: Final = "SELECT s.versions, s.last_types FROM (SELECT 1) one" + STREAM_TAILS
READ_TENANT: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE log_partition = $1 AND tenant_id = $2 AND position > $3"
    " ORDER BY position LIMIT $4"
)
READ_PARTITION: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE log_partition = $1 AND position > $2"
    " ORDER BY position LIMIT $3"
)
# Several partitions at once, each from its own position ($1 partitions, $2 positions),
# at most $3 events each: one round trip for a follower of many partitions (the relay).
READ_PARTITIONS: Final = (
    f"SELECT e.* FROM unnest($1::smallint[], $2::bigint[]) AS c(p, after)"
    f" CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM ledger.events"
    "  WHERE log_partition = c.p AND position > c.after ORDER BY position LIMIT $3) e"
    " ORDER BY e.log_partition, e.position"
)
HEADS: Final = "SELECT log_partition, position FROM ledger.partitions ORDER BY log_partition"
PARTITION_HEAD: Final = "SELECT position FROM ledger.partitions WHERE log_partition = $1"
# A tenant's subject events by (stream, version), known by $3 (audit scans).
TENANT_SUBJECT_EVENTS: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events"
    " WHERE log_partition = $1 AND tenant_id = $2 AND stream_id LIKE 'subject/%' AND recorded_at <= $3"
    " ORDER BY stream_id, version"
)
# Every tenant that has a stream of its own (every partition: not a hot query).
TENANT_IDS: Final = (
    "SELECT substr(stream_id, 8) AS tenant_id FROM ledger.events"
    " WHERE stream_id LIKE 'tenant/%' AND version = 1 ORDER BY 1"
)
# Everything visible in the caller's snapshot whose stream id is LIKE $1, in a share of the
# streams ($2 shares, this is number $3), partition after partition in position order (so
# every stream in version order): the rebuild's full read. Not a hot query.
SCAN_LOG: Final = (
    f"SELECT {EVENT_COLUMNS} FROM ledger.events WHERE stream_id LIKE $1"
    " AND (hashtext(stream_id) & 2147483647) % $2 = $3 ORDER BY log_partition, position"
)


def stream_subquery(partitions_param: str, tenant_expr: str, stream_expr: str, condition: str = "true") -> str:
    """A subquery of one stream's events in version order, for a caller that joins them
    laterally to its own rows in one round trip (the portal's link page): the partition is
    ``ledger.partition_of(tenant, count)`` with the count as the parameter named."""
    return (f"SELECT {EVENT_COLUMNS} FROM ledger.events"
            f" WHERE log_partition = ledger.partition_of({tenant_expr}, {partitions_param})"
            f" AND stream_id = {stream_expr} AND ({condition}) ORDER BY version")


# -- verify ----------------------------------------------------------------------------

VERIFY_COLUMNS: Final = (
    "log_partition, position, event_id::text AS event_id, stream_id, version, tenant_id, event_type,"
    " schema_version, recorded_at, occurred_on, data, metadata, prev_hash, hash"
)
ORIGIN: Final = "SELECT position, hash FROM ledger.log_origin"
# The events written before partitioning: one chain over every partition (not hot).
VERIFY_BEFORE_ORIGIN: Final = (
    f"SELECT {VERIFY_COLUMNS} FROM ledger.events WHERE position <= $1 ORDER BY position"
)
VERIFY_PARTITION: Final = (
    f"SELECT {VERIFY_COLUMNS} FROM ledger.events WHERE log_partition = $1 AND position > $2 ORDER BY position"
)
PARTITION_HEADS: Final = "SELECT log_partition, position, hash FROM ledger.partitions ORDER BY log_partition"
