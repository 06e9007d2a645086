-- Tenant-wide reads (audit snapshot, rebuild of one tenant) in ledger order.
CREATE INDEX events_tenant_position_idx ON ledger.events (tenant_id, position);
