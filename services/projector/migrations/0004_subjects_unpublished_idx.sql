-- Subjects whose current matrix is not on the topic yet (after a rebuild, or while no broker).
-- (Named like PostgreSQL names indexes, so a rebuild's copy of the table maps back by name.)
CREATE INDEX subjects_tenant_id_idx ON projector.subjects (tenant_id)
    WHERE published_hash IS DISTINCT FROM matrix_hash;
