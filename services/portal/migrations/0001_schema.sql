-- The portal's operational tables (not events): personal links, user accounts, sessions.
CREATE SCHEMA IF NOT EXISTS portal;
