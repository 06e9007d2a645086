-- The reach dashboard (services/projector/reach.py) asks which of a tenant's subjects moved
-- past the ledger position it last saw, and for a fingerprint (count, sum of positions).
-- (Named like PostgreSQL names indexes, so a rebuild's copy of the table maps back by name.)
CREATE INDEX subjects_tenant_id_last_position_idx ON projector.subjects (tenant_id, last_position);
