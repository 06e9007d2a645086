-- Tenant-wide reads (audit snapshot, rebuild of one tenant) in ledger order, within the
-- tenant's partition (replaces 0004's index, which did not lead with the partition).
DROP INDEX ledger.events_tenant_position_idx;
CREATE INDEX events_tenant_position_idx ON ledger.events (log_partition, tenant_id, position);
