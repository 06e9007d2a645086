-- What the projector knows about each eligibility topic it publishes to (docs/projector.md,
-- "When the topic loses what was published"). `epoch` goes up each time every subject is
-- published again because the topic no longer held what it had (broker data lost, topic
-- recreated, `consent-ledger projector republish`); every message carries it.
-- `acked_ends[p + 1]`: the end offset of partition p the broker acknowledged a write up to;
-- a partition that ends below it lost records. A pending republish (`republish_epoch` not
-- null) walks the subjects in key order (`republish_after_*`, so it resumes after a crash;
-- `republish_tenant` limits it to one tenant) and, for a whole-topic republish, writes the
-- epoch markers when it is done.
CREATE TABLE projector.eligibility_topic (
    topic                  text        PRIMARY KEY,
    epoch                  integer     NOT NULL DEFAULT 0,
    acked_ends             bigint[]    NOT NULL DEFAULT '{}',
    republish_epoch        integer,
    republish_tenant       text,
    republish_reason       text,
    republish_after_tenant text,
    republish_after_source text,
    republish_after_ref    text,
    republish_done         integer     NOT NULL DEFAULT 0,
    republish_started_at   timestamptz,
    republished_at         timestamptz
);
