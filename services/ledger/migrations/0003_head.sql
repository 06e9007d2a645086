-- A single row holding the last position, its hash and recorded_at. Every append
-- transaction locks it (SELECT ... FOR UPDATE) before assigning positions and holds the
-- lock until commit: that one lock serialises writers, so positions are assigned in
-- commit order and a follower reading "position > p" can never skip a row that commits
-- later with a lower position. It is also where the hash chain continues from.
CREATE TABLE ledger.head (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    position     bigint      NOT NULL,
    hash         bytea       NOT NULL,
    recorded_at  timestamptz NOT NULL
);
INSERT INTO ledger.head (id, position, hash, recorded_at)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', '1970-01-01T00:00:00Z');
