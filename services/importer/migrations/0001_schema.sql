-- The DMS import's own tables (docs/import.md).
CREATE SCHEMA IF NOT EXISTS importer;
