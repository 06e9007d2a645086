-- One live link per subject: issuing a second one must rotate (revoke) the first.
CREATE UNIQUE INDEX links_live_subject ON portal.links (tenant_id, source, customer_ref)
    WHERE revoked_at IS NULL;
