-- What the DMS said last, per subject and (category, channel) cell ("category:channel").
-- A delivered opt-in setting is applied only when the DMS says something new (first
-- delivery, or a value other than last time) and it differs from the current preference:
-- a nightly full export that still says "opt_in" must not undo an opt-out the customer
-- made in the portal since (docs/import.md). Updated in the same transaction as the
-- PreferencesChanged events of the batch, or alone when the batch appends nothing.
CREATE TABLE importer.preferences (
    tenant_id   text        NOT NULL,
    stream_id   text        NOT NULL,
    cell        text        NOT NULL,
    value       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stream_id, cell)
);
