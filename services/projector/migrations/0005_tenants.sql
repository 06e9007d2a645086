-- One row per tenant: consent.tenant.TenantState as msgpack, `terms_version` = the version of
-- the last event that changed its term matrix, and the re-evaluation of all
-- its subjects that a term matrix edit requires. `reeval_version` (not null = pending) is the
-- tenant version whose terms every subject must be evaluated with; the job walks the
-- subjects in key order and records how far it got in `reeval_after_*`, so it resumes
-- after a crash and restarts when another edit arrives.
CREATE TABLE projector.tenants (
    tenant_id           text     PRIMARY KEY,
    version             integer  NOT NULL,
    last_position       bigint   NOT NULL,
    state               bytea    NOT NULL,
    terms_version       integer  NOT NULL,
    reeval_version      integer,
    reeval_after_source text,
    reeval_after_ref    text
);
