-- A retried command with the same Idempotency-Key returns the first result and appends
-- nothing. `fingerprint` is a hash of the request, so reusing a key for a different
-- request is refused instead of silently answered with the wrong result.
CREATE TABLE ledger.idempotency (
    tenant_id    text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  bytea       NOT NULL,
    result       json        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
