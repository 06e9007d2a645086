-- How far the address index has read the ledger (services/mail/addresses.py).
CREATE TABLE mail.address_checkpoint (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position  bigint NOT NULL
);
