-- The latest contact data per subject, for finding customers and for mailing lists: a
-- copy of the Sealed field of the subject's newest event that carried contact data
-- (still encrypted with the subject's key), written by services/ledger/directory.py.
-- Tied to the subject key: shredding the key (erasure) deletes the row.
CREATE TABLE ledger.subject_directory (
    stream_id     text   PRIMARY KEY REFERENCES ledger.subject_keys (stream_id) ON DELETE CASCADE,
    tenant_id     text   NOT NULL,
    source        text   NOT NULL,
    customer_ref  text   NOT NULL,
    key_id        text   NOT NULL,
    nonce         text   NOT NULL,
    ciphertext    text   NOT NULL,
    position      bigint NOT NULL
);
