-- Per-subject data keys for personal data in events (crypto-shredding). The key is
-- stored wrapped (AES-GCM) with the deployment's master key. Erasure deletes the row:
-- from then on every Sealed field of that subject is unreadable, while the events and
-- their hash chain stay intact.
CREATE TABLE ledger.subject_keys (
    key_id       text        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    stream_id    text        NOT NULL UNIQUE,
    wrapped_key  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
