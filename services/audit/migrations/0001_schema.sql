-- The audit package's own schema (services/audit): data subject rights bookkeeping.
CREATE SCHEMA IF NOT EXISTS audit;
