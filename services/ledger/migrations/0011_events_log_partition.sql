-- Every event carries its tenant's log partition (ledger.partition_of). Events written
-- before partitioning get theirs here; their positions, hashes and prev_hashes are not
-- touched (they still form the single chain they were hashed in: `verify` checks it).
ALTER TABLE ledger.events ADD COLUMN log_partition smallint;
UPDATE ledger.events SET log_partition = ledger.partition_of(tenant_id, (SELECT count(*)::integer FROM ledger.partitions));
ALTER TABLE ledger.events ALTER COLUMN log_partition SET NOT NULL;
