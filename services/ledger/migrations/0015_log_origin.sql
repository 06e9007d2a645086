-- The single head of the log before partitioning (0003) is frozen: nothing moves it any
-- more, and every partition's chain starts from its hash (0010). Renamed so that code
-- still reading it as "the head" fails loudly instead of seeing a position that no
-- longer moves. `verify` checks the pre-partitioning events against it.
ALTER TABLE ledger.head RENAME TO log_origin;
