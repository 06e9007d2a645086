-- The scheduler's question: which subjects change today with no new event?
-- (Named like PostgreSQL names indexes, so a rebuild's copy of the table maps back by name.)
CREATE INDEX subjects_next_change_idx ON projector.subjects (next_change) WHERE next_change IS NOT NULL;
