"""Log partitions: which partition a tenant's events live in.

The log is split into a fixed number of partitions chosen at install (migration
``0010_partitions.sql``: ``LEDGER_LOG_PARTITIONS``, default 32). Every stream of a tenant is
in the tenant's partition, so per-tenant order is total while appends of tenants in other
partitions never wait for each other (docs/event-store.md, "Partitions").

A position is meaningful together with its partition: ``(partition, position)`` names one
event; positions of one partition are gap-free and increase in commit order; positions of
two partitions are not comparable. Since a tenant lives in one partition, a tenant's
positions (everything the HTTP API answers) order that tenant's events.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final

DEFAULT_PARTITIONS: Final = 32
MAX_PARTITIONS: Final = 1024


@functools.lru_cache(maxsize=65536)  # several calls per append, the same few thousand tenants
def partition_of(tenant_id: str, partitions: int) -> int:
    """The partition of ``tenant_id``: the first 32 bits of SHA-256 of its UTF-8 bytes,
    modulo the count. The same function as SQL ``ledger.partition_of`` (0009)."""
    return int.from_bytes(hashlib.sha256(tenant_id.encode()).digest()[:4], "big") % partitions


def stream_tenant(stream_id: str) -> str | None:
    """The tenant a stream id names: its second ``/``-separated segment
    (``tenant/{tenant}``, ``subject/{tenant}/{source}/{ref}``), or None."""
    parts = stream_id.split("/", 2)
    return parts[1] if len(parts) >= 2 and parts[1] else None
