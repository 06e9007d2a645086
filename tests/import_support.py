"""Helpers for the DMS import tests: an in-process ledger with a tenant, files, events."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import msgspec

from schemas.events import Actor, Sealed, decode_event
from schemas.vocabulary import subject_stream
from services.importer.mapping import DEFAULT_MAPPING, Mapping
from services.importer.pipeline import Importer, Summary
from services.importer.plans import Rejection
from services.ledger.commands import Context, Ledger
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, parse_master_key

TENANT = "garage-a"
ACTOR = Actor(kind="importer", id="test")

INVOICE_HEADER = "customer_ref;invoice_id;invoice_date;name;email"


async def start_ledger(pool: asyncpg.Pool, master_key: str, tenant: str = TENANT) -> Ledger:
    store = EventStore(pool)
    await store.start()
    ledger = Ledger(pool, store, SubjectKeys(pool, parse_master_key(master_key)))
    await ledger.create_tenant(Context(Actor(kind="operator", id="test")), tenant, f"Autobedrijf {tenant}")
    return ledger


def write(tmp: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp / name
    path.write_bytes(text.encode(encoding))
    return path


async def run_import(ledger: Ledger, path: Path, *, mapping: Mapping = DEFAULT_MAPPING, source: str = "dealer",
                     tenant: str = TENANT, batch_size: int = 5000, kind: str | None = None,
                     ) -> tuple[Summary, list[Rejection]]:
    rejected: list[Rejection] = []
    summary = await Importer(ledger, batch_size=batch_size, retry_delay=0.0).run_file(
        str(path), tenant=tenant, source=source, mapping=mapping, actor=ACTOR, kind=kind,  # type: ignore[arg-type]
        on_reject=rejected.append)
    return summary, rejected


async def subject_events(pool: asyncpg.Pool, ref: str, source: str = "dealer", tenant: str = TENANT) -> list:
    rows = await pool.fetch("SELECT data FROM ledger.events WHERE stream_id = $1 ORDER BY version",
                            subject_stream(tenant, source, ref))
    return [decode_event(r["data"]) for r in rows]


async def event_types(pool: asyncpg.Pool, tenant: str = TENANT) -> list[str]:
    rows = await pool.fetch("SELECT event_type FROM ledger.events WHERE stream_id LIKE $1 ORDER BY position",
                            f"subject/{tenant}/%")
    return [r["event_type"] for r in rows]


async def open_sealed(ledger: Ledger, ref: str, sealed: Sealed, source: str = "dealer") -> dict | None:
    plain = await ledger.keys.open(subject_stream(TENANT, source, ref), sealed)
    return None if plain is None else msgspec.json.decode(plain)
