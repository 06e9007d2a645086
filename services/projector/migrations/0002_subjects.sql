-- One row per subject: its folded consent facts and what was last evaluated and published.
-- `state` is consent.subject.SubjectState as msgpack (reduced to the bookkeeping and the
-- erasure event once the subject is erased: the minimal record that keeps it suppressed).
-- `version`/`last_position` are the last applied event of the subject's stream: an event
-- with a version at or below it is a duplicate; one above version + 1 means a gap, filled
-- from the ledger. `matrix_hash` is the hash of the matrix evaluated on `evaluated_on`
-- (with the term matrix as of tenant version `terms_version`), `published_hash` that of the last value written to
-- consent.eligibility.v1 for this key (they differ only while a publication is pending,
-- e.g. after a rebuild or with no broker). `next_change`: the first day the matrix changes
-- with no new event (a term lapses); the scheduler re-evaluates the subject on that day.
CREATE TABLE projector.subjects (
    tenant_id       text     NOT NULL,
    source          text     NOT NULL,
    customer_ref    text     NOT NULL,
    version         integer  NOT NULL,
    last_position   bigint   NOT NULL,
    erased          boolean  NOT NULL DEFAULT false,
    state           bytea    NOT NULL,
    terms_version   integer  NOT NULL,
    evaluated_on    date     NOT NULL,
    next_change     date,
    matrix_hash     bytea    NOT NULL,
    published_hash  bytea,
    PRIMARY KEY (tenant_id, source, customer_ref)
);
