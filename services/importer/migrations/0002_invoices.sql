-- Every invoice the import recorded, as it stands now: one row per (tenant, invoice id).
-- Written by the append's in-transaction hook (services/ledger/store.py), in the SAME
-- transaction as the InvoiceRecorded/InvoiceCorrected event, so the index and the ledger
-- can never disagree: a re-delivered invoice is found here in one batched lookup and
-- appends nothing, or an InvoiceCorrected if its data changed.
-- contact_fp: HMAC of the delivered contact data under a key derived from the subject's
-- own key, so it cannot be checked against a guessed e-mail address once the subject is
-- erased (crypto-shredding covers it). NULL: no contact data was ever delivered.
-- position: the ledger event that set this state.
CREATE TABLE importer.invoices (
    tenant_id     text        NOT NULL,
    invoice_id    text        NOT NULL,
    stream_id     text        NOT NULL,
    invoice_date  date        NOT NULL,
    contact_fp    bytea,
    position      bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, invoice_id)
);
