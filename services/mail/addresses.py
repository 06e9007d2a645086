"""Finding a tenant's subjects by e-mail address, for "I lost my link" on the portal,
without storing any address: ``mail.addresses`` holds an HMAC-SHA256 of the normalised
address (trimmed, lower-cased) under a key derived from the master key per tenant, so the
table alone tells nothing, and one tenant's MACs mean nothing for another.

The index follows the ledger (:meth:`AddressIndex.catch_up`, run by the mail worker): it
opens the sealed contact of each invoice and prospect event with the subject's key and
records the MAC of its e-mail address. A SubjectErased removes the subject's rows, and so
does erasure itself (:func:`forget_subject`, in the erasure's transaction).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import asyncpg
import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.vocabulary import parse_subject_stream
from schemas.events import InvoiceCorrected, InvoiceRecorded, ProspectRegistered, SubjectErased
from services.ledger.store import EventStore, translate_errors
from services.ledger.subject_keys import SubjectKeys

_INFO: Final = b"consent-ledger mail address index v1:"
_contact: Final = msgspec.json.Decoder(dict)


def normalise(address: str) -> str:
    return address.strip().lower()


class AddressIndex:
    def __init__(self, pool: asyncpg.Pool, keys: SubjectKeys, master_key: bytes) -> None:
        self.pool = pool
        self.keys = keys
        self._master = master_key
        self._tenant_keys: dict[str, bytes] = {}

    def mac(self, tenant_id: str, address: str) -> bytes:
        key = self._tenant_keys.get(tenant_id)
        if key is None:
            key = self._tenant_keys[tenant_id] = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + tenant_id.encode()).derive(self._master)
        return hmac.new(key, normalise(address).encode(), hashlib.sha256).digest()

    async def find(self, tenant_id: str, address: str) -> list[tuple[str, str]]:
        """(source, customer_ref) of the tenant's subjects that gave this address."""
        with translate_errors():
            rows = await self.pool.fetch(
                "SELECT source, customer_ref FROM mail.addresses WHERE tenant_id = $1 AND address_mac = $2"
                " ORDER BY source, customer_ref", tenant_id, self.mac(tenant_id, address))
        return [(r["source"], r["customer_ref"]) for r in rows]

    async def catch_up(self, *, batch: int = 2000) -> int:
        """Index the ledger events after the checkpoint; the number of events read."""
        store = EventStore(self.pool)
        with translate_errors():
            stored = await self.pool.fetchval("SELECT positions FROM mail.address_checkpoint") or []
        # Positions count per log partition: one checkpoint each (docs/event-store.md).
        after = {p: pos for p, pos in enumerate(stored)}
        read = 0
        while True:
            events = await store.read_partitions(after, batch)
            if not events:
                return read
            read += len(events)
            wanted = [e for e in events if isinstance(e.event, (InvoiceRecorded, InvoiceCorrected, ProspectRegistered))
                      and e.event.personal is not None]
            sealers = await self.keys.existing_sealers(sorted({e.stream_id for e in wanted}))
            add: list[tuple[str, bytes, str, str]] = []
            erased: list[tuple[str, str, str]] = []
            for e in events:
                parsed = parse_subject_stream(e.stream_id)
                if parsed is None:
                    continue
                if isinstance(e.event, SubjectErased):
                    erased.append(parsed)
                    continue
                sealer = sealers.get(e.stream_id)
                personal = getattr(e.event, "personal", None)
                if sealer is None or personal is None:
                    continue
                plain = sealer.open_json(personal)
                address = _contact.decode(plain).get("email") if plain is not None else None
                if isinstance(address, str) and address:
                    add.append((parsed[0], self.mac(parsed[0], address), parsed[1], parsed[2]))
            for e in events:  # ordered by partition, then position: the last of each wins
                after[e.partition] = e.position
            positions = [after.get(p, 0) for p in range(max(after) + 1)]
            with translate_errors():
                async with self.pool.acquire() as conn, conn.transaction():
                    if add:
                        await conn.executemany(
                            "INSERT INTO mail.addresses (tenant_id, address_mac, source, customer_ref)"
                            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", add)
                    for tenant_id, source, ref in erased:
                        await forget_subject(conn, tenant_id, source, ref)
                    await conn.execute(
                        "INSERT INTO mail.address_checkpoint (only_row, positions) VALUES (true, $1)"
                        " ON CONFLICT (only_row) DO UPDATE SET positions = excluded.positions", positions)


async def forget_subject(conn: asyncpg.Connection, tenant_id: str, source: str, ref: str) -> int:
    """Erasure: remove the subject's address MACs and drop its unsent mails (in the
    caller's transaction)."""
    done = await conn.execute(
        "DELETE FROM mail.addresses WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3", tenant_id, source, ref)
    await conn.execute(
        "UPDATE mail.outbox SET status = 'dropped', last_error = 'subject erased'"
        " WHERE tenant_id = $1 AND source = $2 AND customer_ref = $3 AND status = 'pending'", tenant_id, source, ref)
    return int(done.split()[-1])
