-- Mailing lists read a tenant's directory rows per data source.
CREATE INDEX subject_directory_tenant_idx ON ledger.subject_directory (tenant_id, source, customer_ref);
