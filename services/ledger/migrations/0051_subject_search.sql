-- Blind index for finding a customer: HMAC-SHA256 (first 16 bytes) of each normalised
-- value (e-mail, phone, name and its words, postcode + house number, licence plate) under a
-- per-tenant key derived from the master key. No plaintext. Tied to the subject key:
-- shredding the key (erasure) deletes the subject's rows.
CREATE TABLE ledger.subject_search (
    tenant_id  text  NOT NULL,
    digest     bytea NOT NULL,
    stream_id  text  NOT NULL REFERENCES ledger.subject_keys (stream_id) ON DELETE CASCADE,
    PRIMARY KEY (tenant_id, digest, stream_id)
);
