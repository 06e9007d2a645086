"""The suppression list: an objection that outlives the erasure of its subject.

GDPR art. 21(3): after an objection the data may no longer be used for direct marketing,
and the controller must be able to keep honouring that. Erasure destroys everything that
identifies the subject, so what stays is a keyed hash of the subject's identifier (the
dealer's customer ref is all a DMS delivers again), not the identifier itself:
HMAC-SHA256 over ``{tenant}/{source}/{customer_ref}`` with a per-tenant key derived
(HKDF-SHA256) from the deployment's master key. Without the master key the table reveals
nothing, and one tenant's hashes say nothing about another's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Final, Literal

import asyncpg
import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.vocabulary import parse_subject_stream, subject_key
from services.ledger.store import streams_with_event_type, translate_errors

_INFO: Final = b"consent-ledger/suppression/v1/"


class Suppression(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    suppressed: bool
    objected_on: dt.date | None = None
    erased_at: dt.datetime | None = None


def tenant_secret(master_key: bytes, tenant_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + tenant_id.encode()).derive(master_key)


def ref_hmac(master_key: bytes, tenant_id: str, source: str, customer_ref: str) -> bytes:
    key = tenant_secret(master_key, tenant_id)
    return hmac.new(key, subject_key(tenant_id, source, customer_ref).encode(), hashlib.sha256).digest()


async def suppress(conn: asyncpg.Connection, master_key: bytes, tenant_id: str, source: str, customer_ref: str,
                   objected_on: dt.date, erased_at: dt.datetime, reason: Literal["request", "retention"]) -> None:
    with translate_errors():
        await conn.execute(
            "INSERT INTO audit.suppressions (tenant_id, ref_hmac, objected_on, erased_at, reason)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, ref_hmac) DO NOTHING",
            tenant_id, ref_hmac(master_key, tenant_id, source, customer_ref), objected_on, erased_at, reason,
        )


async def lookup(pool: asyncpg.Pool | asyncpg.Connection, master_key: bytes, tenant_id: str, source: str,
                 customer_ref: str, *, previous: bytes | None = None) -> Suppression:
    """Whether this customer ref objected before it was erased. During a master key
    rotation (``previous``), a record hashed with the previous key counts too."""
    hashes_ = [ref_hmac(key, tenant_id, source, customer_ref) for key in (master_key, previous) if key is not None]
    with translate_errors():
        row = await pool.fetchrow(
            "SELECT objected_on, erased_at FROM audit.suppressions WHERE tenant_id = $1 AND ref_hmac = ANY($2::bytea[])"
            " ORDER BY erased_at LIMIT 1",
            tenant_id, hashes_,
        )
    subject = subject_key(tenant_id, source, customer_ref)
    if row is None:
        return Suppression(subject=subject, suppressed=False)
    return Suppression(subject=subject, suppressed=True, objected_on=row["objected_on"], erased_at=row["erased_at"])


async def rehash(pool: asyncpg.Pool, current: bytes, previous: bytes) -> int:
    """After a master key rotation: re-hash the records made with the previous key. The
    customer ref of every erased subject is still in its stream id (docs/erasure.md), so
    each one's old and new hash can be computed; a record is moved only if its old hash
    matches. Returns the records moved; safe to run again."""
    erased = await streams_with_event_type(pool, "SubjectErased")
    moved = 0
    for stream_id in erased:
        parsed = parse_subject_stream(stream_id)
        if parsed is None:
            continue
        tenant_id, source, ref = parsed
        with translate_errors():
            done = await pool.execute(
                "UPDATE audit.suppressions SET ref_hmac = $3 WHERE tenant_id = $1 AND ref_hmac = $2",
                tenant_id, ref_hmac(previous, tenant_id, source, ref), ref_hmac(current, tenant_id, source, ref),
            )
        moved += int(done.split()[-1])
    return moved
