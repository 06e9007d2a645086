-- The ledger's own schema. Everything the ledger owns is schema-qualified.
CREATE SCHEMA IF NOT EXISTS ledger;
