-- The ledger position through which the read models are known complete: set by
-- `consent-ledger projector rebuild` in the transaction that swaps the rebuilt tables in.
-- Any event at or below it is already applied (the consumer skips it without a lookup).
CREATE TABLE projector.checkpoint (
    id             boolean     PRIMARY KEY DEFAULT true CHECK (id),
    rebuilt_through bigint     NOT NULL,
    rebuilt_at     timestamptz NOT NULL DEFAULT now()
);
