-- "I lost my link": which subjects of a tenant hold an e-mail address, found by a keyed MAC
-- of the normalised address (HMAC-SHA256, key derived from the master key per tenant), never
-- the address itself. Rows of an erased subject are deleted with its key.
CREATE TABLE mail.addresses (
    tenant_id     text NOT NULL,
    address_mac   bytea NOT NULL,
    source        text NOT NULL,
    customer_ref  text NOT NULL,
    PRIMARY KEY (tenant_id, address_mac, source, customer_ref)
);
