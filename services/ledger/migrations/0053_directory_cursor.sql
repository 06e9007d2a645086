-- How far the directory and search index have read each tenant's ledger events.
CREATE TABLE ledger.directory_cursor (
    tenant_id  text   PRIMARY KEY,
    position   bigint NOT NULL
);
