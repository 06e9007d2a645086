-- Login sessions. Only SHA-256 of the (256-bit random) session id is stored.
CREATE TABLE portal.sessions (
    session_hash  bytea PRIMARY KEY,
    user_id       text NOT NULL REFERENCES portal.users (user_id) ON DELETE CASCADE,
    tenant_id     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
