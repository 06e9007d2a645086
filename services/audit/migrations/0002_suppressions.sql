-- What stays of an erased subject that had objected to direct marketing (docs/erasure.md):
-- no name, no contact data, not even the customer ref in clear; only an HMAC of
-- "{tenant}/{source}/{customer_ref}" under a per-tenant key derived from the master key,
-- the day the objection took effect, and when the subject was erased. It lets the objection
-- be honoured if the dealer's system delivers the same customer ref again.
CREATE TABLE audit.suppressions (
    tenant_id    text        NOT NULL,
    ref_hmac     bytea       NOT NULL,
    objected_on  date        NOT NULL,
    erased_at    timestamptz NOT NULL,
    reason       text        NOT NULL CHECK (reason IN ('request', 'retention')),
    PRIMARY KEY (tenant_id, ref_hmac)
);
