-- Kafka offsets of consent.ledger.events.v1 applied to these read models, written in the
-- same transaction as the read models: a restarted or rebalanced consumer seeks here.
CREATE TABLE projector.offsets (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
