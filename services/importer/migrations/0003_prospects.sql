-- Every prospect acquisition the import recorded: one row per (tenant, subject stream,
-- acquired_on), written in the same transaction as its ProspectRegistered event (see
-- 0002_invoices.sql). The same acquisition delivered again with the same data appends
-- nothing; with a different "how" or contact it is registered again.
CREATE TABLE importer.prospects (
    tenant_id     text        NOT NULL,
    stream_id     text        NOT NULL,
    acquired_on   date        NOT NULL,
    how           text        NOT NULL,
    contact_fp    bytea,
    position      bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stream_id, acquired_on)
);
