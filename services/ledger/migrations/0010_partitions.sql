-- One head row per log partition (docs/event-store.md, "Partitions"): the last position of
-- the partition, its hash and recorded_at. An append locks the head rows of the partitions
-- it writes (in partition order) until it commits, so within a partition insert order =
-- commit order, positions have no gaps and the hash chain continues from `hash`; appends
-- to other partitions never wait for it.
--
-- The count is chosen once, at install: the session setting ledger.log_partitions when
-- this migration runs (`consent-ledger migrate` sets it from LEDGER_LOG_PARTITIONS),
-- else 32. It cannot change afterwards (a tenant's partition is a hash modulo the count).
--
-- Every partition starts where the single log of migrations 0002/0003 ended (position,
-- hash, recorded_at of ledger.head; 0 and the zero hash on a new install): partition p's
-- first new event gets position head + 1 and links to the old head's hash, so the events
-- written before partitioning stay, unchanged, below every new position of every partition.
CREATE TABLE ledger.partitions (
    log_partition  smallint    PRIMARY KEY CHECK (log_partition >= 0),
    position       bigint      NOT NULL,
    hash           bytea       NOT NULL,
    recorded_at    timestamptz NOT NULL
);
INSERT INTO ledger.partitions (log_partition, position, hash, recorded_at)
SELECT p, h.position, h.hash, h.recorded_at
FROM ledger.head h,
     generate_series(0, coalesce(nullif(current_setting('ledger.log_partitions', true), ''), '32')::integer - 1) AS p;
