-- The keys of ledger.events lead with the partition: a position is unique within its
-- partition (two partitions both have a position 40), a stream lives in one partition
-- (its tenant's), and no unique constraint spans partitions, so the table can be
-- distributed by log_partition (Citus: docs/deploy.md) with every constraint enforced on
-- one shard. Every hot query names its partition and uses these indexes.
ALTER TABLE ledger.events
    DROP CONSTRAINT events_pkey,
    ADD CONSTRAINT events_pkey PRIMARY KEY (log_partition, position),
    DROP CONSTRAINT events_stream_version_key,
    ADD CONSTRAINT events_stream_version_key UNIQUE (log_partition, stream_id, version),
    DROP CONSTRAINT events_event_id_key,
    ADD CONSTRAINT events_event_id_key UNIQUE (log_partition, event_id);
