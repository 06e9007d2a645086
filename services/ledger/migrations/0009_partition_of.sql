-- The log partition of a tenant: the first 32 bits of SHA-256 of the tenant id (UTF-8),
-- modulo the partition count. Stable (same tenant, same partition, in every process and
-- in SQL), so every event of a tenant lands in one partition and per-tenant order stays
-- total. services/ledger/partitions.py `partition_of` computes the same in Python (a
-- test compares them). IMMUTABLE: the count is an argument, read from ledger.partitions.
CREATE FUNCTION ledger.partition_of(tenant_id text, partitions integer) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (('x' || substr(encode(sha256(convert_to(tenant_id, 'UTF8')), 'hex'), 1, 8))::bit(32)::bigint % partitions)::smallint;
