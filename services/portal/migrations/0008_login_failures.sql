-- Failed logins per (tenant, typed e-mail, client address): the back-off after repeated
-- wrong passwords (services/portal/accounts.py). Keyed by what was typed, not by the
-- account, so an address that does not belong to any account is counted and answered
-- exactly like one that does; only SHA-256 of the lower-cased e-mail is kept (someone may
-- type a password into the e-mail field). A block holds for that client only: nobody can
-- lock a user out from another address.
CREATE TABLE portal.login_failures (
    tenant_id       text NOT NULL,
    email_key       bytea NOT NULL,
    client          text NOT NULL,
    failures        integer NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    blocked_until   timestamptz,
    PRIMARY KEY (tenant_id, email_key, client)
);
