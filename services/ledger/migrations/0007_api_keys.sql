-- API keys for machines and admins. Only a SHA-256 of the secret part is stored
-- (the secret is 256 random bits, so a fast hash is enough); the key is shown once.
-- tenant_id is NULL for operator keys (create tenants).
CREATE TABLE ledger.api_keys (
    key_id      text        PRIMARY KEY,
    tenant_id   text,
    role        text        NOT NULL CHECK (role IN ('operator', 'admin', 'staff', 'auditor', 'sender', 'importer')),
    label       text        NOT NULL DEFAULT '',
    secret_hash bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'operator') = (tenant_id IS NULL))
);
