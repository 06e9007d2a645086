-- Idempotency keys live in their tenant's partition, next to the events they were
-- recorded with (written in the same statement, on the same shard under Citus).
ALTER TABLE ledger.idempotency ADD COLUMN log_partition smallint;
UPDATE ledger.idempotency SET log_partition = ledger.partition_of(tenant_id, (SELECT count(*)::integer FROM ledger.partitions));
ALTER TABLE ledger.idempotency
    ALTER COLUMN log_partition SET NOT NULL,
    DROP CONSTRAINT idempotency_pkey,
    ADD CONSTRAINT idempotency_pkey PRIMARY KEY (log_partition, tenant_id, key);
