-- Named positions of consumers of the ledger (relay to Kafka, projectors).
CREATE TABLE ledger.checkpoints (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
