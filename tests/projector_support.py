"""Helpers for the projector tests: write real events to the event store, read the rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from consent.seed import new_tenant
from consent.subject import SubjectState, fold_subject
from consent.tenant import TenantState, fold_tenant
from schemas.events import (
    Actor,
    Event,
    InvoiceRecorded,
    Metadata,
    ObjectionRecorded,
    PreferencesChanged,
    PreferenceSetting,
    ProspectRegistered,
    SubjectErased,
    TermCell,
    TermMatrixEdited,
)
from schemas.vocabulary import subject_stream, tenant_stream
from services.ledger.relay import RelayConfig
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite
from services.projector.readmodel import SUBJECT_COLUMNS, SubjectRow, decode_state, row_from_record
from services.projector.service import ProjectorConfig

META = Metadata(actor=Actor(kind="api", id="test"), method="api")
ACTOR = Actor(kind="staff", id="u-test")


async def append(store: EventStore, tenant: str, stream: str, *events: Event) -> AppendResult:
    return await store.append(AppendRequest(tenant_id=tenant, writes=[StreamWrite(stream, list(events))],
                                            metadata=META))


async def create_tenant(store: EventStore, tenant: str) -> AppendResult:
    return await append(store, tenant, tenant_stream(tenant), new_tenant(tenant, f"Autobedrijf {tenant}"))


async def subject(store: EventStore, tenant: str, ref: str, *events: Event, source: str = "dealer") -> AppendResult:
    return await append(store, tenant, subject_stream(tenant, source, ref), *events)


def invoice(day: str, invoice_id: str = "F1") -> InvoiceRecorded:
    return InvoiceRecorded(invoice_id=invoice_id, invoice_date=dt.date.fromisoformat(day))


def prospect(day: str) -> ProspectRegistered:
    return ProspectRegistered(acquired_on=dt.date.fromisoformat(day), how="beurs")


def prefs(**cells: str) -> PreferencesChanged:
    """``prefs(newsletter__email="opt_out")``."""
    changes = [PreferenceSetting(category=k.split("__")[0], channel=k.split("__")[1], value=v)  # type: ignore[arg-type]
               for k, v in cells.items()]
    return PreferencesChanged(changes=changes, changed_by=ACTOR, method="staff_portal")


def objection() -> ObjectionRecorded:
    return ObjectionRecorded(changed_by=ACTOR, method="phone")


def erased() -> SubjectErased:
    return SubjectErased(reason="request")


def term_edit(**cells: int) -> TermMatrixEdited:
    return TermMatrixEdited(cells=[
        TermCell(category=k.split("__")[0], channel=k.split("__")[1], months=v)  # type: ignore[arg-type]
        for k, v in cells.items()
    ])


async def folded_subject(store: EventStore, tenant: str, ref: str, source: str = "dealer") -> SubjectState:
    state = fold_subject(await store.read_stream(subject_stream(tenant, source, ref)))
    assert state is not None
    return state


async def folded_tenant(store: EventStore, tenant: str) -> TenantState:
    return fold_tenant(await store.read_stream(tenant_stream(tenant)))


async def subject_rows(conn: asyncpg.Pool | asyncpg.Connection, table: str = "projector.subjects") -> list[SubjectRow]:
    records = await conn.fetch(f"SELECT {', '.join(SUBJECT_COLUMNS)} FROM {table}"
                               " ORDER BY tenant_id, source, customer_ref")
    return [row_from_record(r) for r in records]


async def subject_row(pool: asyncpg.Pool, tenant: str, ref: str, source: str = "dealer") -> SubjectRow | None:
    for row in await subject_rows(pool):
        if row.key == (tenant, source, ref):
            return row
    return None


def state_of(row: SubjectRow) -> SubjectState:
    return decode_state(row.state)


def comparable(rows: Sequence[SubjectRow]) -> list[tuple[object, ...]]:
    """Rows as tuples with the state decoded (msgpack map order is not part of equality)."""
    return [(r.key, r.version, r.last_position, r.erased, decode_state(r.state), r.terms_version, r.evaluated_on,
             r.next_change, r.matrix_hash, r.published_hash) for r in rows]


# -- Kafka -------------------------------------------------------------------------------


async def topic_records(bootstrap: str, topic: str, timeout: float = 20.0) -> list[tuple[str, bytes | None]]:
    """Every (key, value) on the topic from its beginning to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[str, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out += [(r.key.decode(), r.value) for r in records]
        return out
    finally:
        await consumer.stop()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def topic_by_key(bootstrap: str, topic: str) -> dict[str, list[bytes | None]]:
    """The topic's values per key, in the order they were written."""
    out: dict[str, list[bytes | None]] = {}
    for key, value in await topic_records(bootstrap, topic):
        out.setdefault(key, []).append(value)
    return out


def projector_config(db_url: str, bootstrap: str, topics: tuple[str, str], **kw: object) -> ProjectorConfig:
    """A projector on the test's database and topics (the ``topics`` fixture), quick to react."""
    values: dict[str, object] = {
        "database_url": db_url, "bootstrap": bootstrap, "group_id": None, "ledger_topic": topics[0],
        "eligibility_topic": topics[1], "eligibility_partitions": 2, "maintenance_interval": 0.1,
    }
    values.update(kw)
    return ProjectorConfig(**values)  # type: ignore[arg-type]


def relay_for_topics(db_url: str, bootstrap: str, topics: tuple[str, str]) -> RelayConfig:
    """A relay from the test's database to its ledger topic (3 partitions), polling quickly."""
    return RelayConfig(database_url=db_url, bootstrap=bootstrap, topic=topics[0], partitions=3, idle_poll=0.01)
