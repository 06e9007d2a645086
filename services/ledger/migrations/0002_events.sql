-- One row per event, append-only. `position` is the global order and equals commit
-- order: appends are serialised on ledger.head (see 0003 and docs/event-store.md).
-- `data` and `metadata` keep the exact JSON text that was hashed (type json, not jsonb,
-- preserves it byte for byte), so `consent-ledger verify` can recompute every hash.
CREATE TABLE ledger.events (
    position        bigint      PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version >= 1),
    tenant_id       text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  smallint    NOT NULL,
    recorded_at     timestamptz NOT NULL,
    occurred_on     date,
    data            json        NOT NULL,
    metadata        json        NOT NULL,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
