-- How far the address index has read the ledger (services/mail/addresses.py): the last
-- position read in each log partition (element p + 1 for partition p; missing: none yet).
CREATE TABLE mail.address_checkpoint (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    positions  bigint[] NOT NULL
);
