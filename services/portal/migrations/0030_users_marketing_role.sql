-- A role of its own for mailing exports (issue 15): a marketing user may export the
-- eligible subjects of a campaign with their contact details; admins and staff may not.
ALTER TABLE portal.users DROP CONSTRAINT users_role_check,
    ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'staff', 'marketing'));
