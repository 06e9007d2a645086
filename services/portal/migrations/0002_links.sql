-- Personal portal links. The token is selector (64 bits) + verifier (128 bits); both are
-- stored only as SHA-256. The selector digest finds the row, the verifier digest is compared
-- in constant time. At most one live (not revoked) link per subject, see 0003.
CREATE TABLE portal.links (
    link_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    selector_hash  bytea NOT NULL UNIQUE,
    verifier_hash  bytea NOT NULL,
    tenant_id      text NOT NULL,
    source         text NOT NULL,
    customer_ref   text NOT NULL,
    issued_at      timestamptz NOT NULL DEFAULT now(),
    issued_by      text NOT NULL,
    revoked_at     timestamptz,
    revoked_by     text
);
