-- Staff and admin accounts of a tenant. Passwords are argon2id hashes (argon2-cffi);
-- failed_logins / locked_until implement the lockout after repeated failures.
CREATE TABLE portal.users (
    user_id        text PRIMARY KEY,
    tenant_id      text NOT NULL,
    email          text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'staff')),
    password_hash  text NOT NULL,
    failed_logins  integer NOT NULL DEFAULT 0,
    locked_until   timestamptz,
    disabled_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    password_set_at timestamptz NOT NULL DEFAULT now()
);
