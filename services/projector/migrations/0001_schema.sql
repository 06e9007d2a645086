-- The eligibility projector's read models (services/projector, docs/projector.md).
CREATE SCHEMA IF NOT EXISTS projector;
