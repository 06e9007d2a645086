-- Erasure deletes a subject's rows by subject.
CREATE INDEX addresses_subject_idx ON mail.addresses (tenant_id, source, customer_ref);
