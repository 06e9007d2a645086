"""The projector's read model: rows, their codecs, and one subject's evaluation.

A row keeps the subject's folded :class:`~consent.subject.SubjectState` (msgpack, so a
term edit or a new day re-evaluates it without reading the ledger), and what was last
evaluated (``matrix_hash``, ``next_change``) and published (``published_hash``). The
eligibility itself always comes from the pure rules in :mod:`consent.eligibility`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg
import msgspec
from xxhash import xxh3_128_digest

from consent.eligibility import Decision, eligibility_matrix, next_change
from consent.law import RULES_VERSION
from consent.subject import SubjectState
from consent.tenant import TenantState
from consent.terms import ALL_CELLS, TermMatrix, cell_key
from schemas.eligibility import SCHEMA_VERSION, Disclosure, UnsubscribeLinks
from schemas.vocabulary import CATEGORIES, CHANNELS

__all__ = [
    "TOMBSTONE_HASH",
    "Evaluation",
    "SubjectRow",
    "TenantRow",
    "decode_state",
    "decode_tenant",
    "encode_state",
    "encode_tenant",
    "evaluate_subject",
    "fetch_subject_rows",
    "insert_new_subject_rows",
    "matrix_json",
    "suppressed",
    "upsert_subject_rows",
]

_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(SubjectState)
_tenant_decoder: Final = msgspec.msgpack.Decoder(TenantState)
_json: Final = msgspec.json.Encoder()

TOMBSTONE_HASH: Final = b"\x00" * 16
"""``matrix_hash`` of an erased subject: its topic value is a tombstone (null)."""


def encode_state(state: SubjectState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(data: bytes) -> SubjectState:
    return _state_decoder.decode(data)


def encode_tenant(state: TenantState) -> bytes:
    return _state_encoder.encode(state)


def decode_tenant(data: bytes) -> TenantState:
    return _tenant_decoder.decode(data)


def suppressed(state: SubjectState) -> SubjectState:
    """What is kept of an erased subject: its key, the erasure event and the stream
    bookkeeping (so later or re-delivered events are still recognised). No facts."""
    return SubjectState(
        tenant_id=state.tenant_id,
        source=state.source,
        customer_ref=state.customer_ref,
        erased=state.erased,
        version=state.version,
        last_position=state.last_position,
        last_recorded_at=state.last_recorded_at,
    )


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------

_LAYOUT: Final = tuple((c, tuple((h, cell_key(c, h)) for h in CHANNELS)) for c in CATEGORIES)


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """One subject evaluated on ``on``: the 25 decisions (None once erased), the next day
    they change with no new event, and the hash that tells whether it changed. The hash
    covers exactly what the rules say holds until ``next_change`` (the decisions and that
    date), so a matrix re-evaluated on a later day with no change hashes the same."""

    on: dt.date
    decisions: dict[str, Decision] | None
    next_change: dt.date | None
    matrix_hash: bytes


def evaluate_subject(state: SubjectState, terms: TermMatrix, on: dt.date) -> Evaluation:
    if state.erased is not None:
        return Evaluation(on=on, decisions=None, next_change=None, matrix_hash=TOMBSTONE_HASH)
    decisions = eligibility_matrix(state, terms, on)
    change = next_change(state, terms, on, current=decisions)
    # xxh3-128: the hash only tells whether the matrix changed since it was published (a
    # collision would have to come from two histories of the same subject); blake2b cost ~8 us
    # per subject here, more than the 25 decisions themselves, and every rebuilt, re-evaluated
    # or published subject pays it.
    digest = xxh3_128_digest(_state_encoder.encode((decisions, change)))
    return Evaluation(on=on, decisions=decisions, next_change=change, matrix_hash=digest)


class _MatrixOut(msgspec.Struct, frozen=True, kw_only=True):
    """Encodes exactly as :class:`schemas.eligibility.EligibilityMatrix` (a test pins it),
    straight from the rule's Decision structs, without copying 25 cells per subject."""

    schema_version: int
    tenant_id: str
    source: str
    customer_ref: str
    erased: bool
    evaluated_on: dt.date
    valid_until: dt.date | None
    position: int
    subject_version: int
    terms_version: int
    rules_version: str
    cells: dict[str, dict[str, Decision]]
    evaluated_at: dt.datetime | None = None
    epoch: int = 0
    unsubscribe: UnsubscribeLinks | None = None
    disclosure: Disclosure | None = None


def matrix_json(state: SubjectState, evaluation: Evaluation, *, terms_version: int, tenant_position: int,
                evaluated_at: dt.datetime | None = None, epoch: int = 0,
                unsubscribe: UnsubscribeLinks | None = None, disclosure: Disclosure | None = None) -> bytes:
    """The topic value (and HTTP answer) for an evaluation of a subject that is not erased."""
    decisions = evaluation.decisions
    if decisions is None:
        raise ValueError("an erased subject has no matrix (publish a tombstone)")
    return _json.encode(_MatrixOut(
        schema_version=SCHEMA_VERSION,
        tenant_id=state.tenant_id,
        source=state.source,
        customer_ref=state.customer_ref,
        erased=False,
        evaluated_on=evaluation.on,
        valid_until=evaluation.next_change,
        position=max(state.last_position, tenant_position),
        subject_version=state.version,
        terms_version=terms_version,
        rules_version=RULES_VERSION,
        cells={c: {h: decisions[k] for h, k in channels} for c, channels in _LAYOUT},
        evaluated_at=evaluated_at,
        epoch=epoch,
        unsubscribe=unsubscribe,
        disclosure=disclosure if disclosure is not None and any(d.requires_disclosure for d in decisions.values())
        else None,
    ))


def erased_matrix_json(state: SubjectState, on: dt.date, *, terms_version: int, tenant_position: int,
                       evaluated_at: dt.datetime | None = None, epoch: int = 0) -> bytes:
    """The HTTP answer for an erased subject: every cell "no", reason ``erased`` (the topic
    carries a tombstone instead)."""
    decisions = eligibility_matrix(state, TermMatrix(), on)
    return _json.encode(_MatrixOut(
        schema_version=SCHEMA_VERSION,
        tenant_id=state.tenant_id,
        source=state.source,
        customer_ref=state.customer_ref,
        erased=True,
        evaluated_on=on,
        valid_until=None,
        position=max(state.last_position, tenant_position),
        subject_version=state.version,
        terms_version=terms_version,
        rules_version=RULES_VERSION,
        cells={c: {h: decisions[k] for h, k in channels} for c, channels in _LAYOUT},
        evaluated_at=evaluated_at,
        epoch=epoch,
    ))


assert len(ALL_CELLS) == sum(len(ch) for _, ch in _LAYOUT)


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


class SubjectRow(msgspec.Struct, kw_only=True):
    tenant_id: str
    source: str
    customer_ref: str
    version: int
    last_position: int
    erased: bool
    state: bytes
    terms_version: int
    evaluated_on: dt.date
    next_change: dt.date | None
    matrix_hash: bytes
    published_hash: bytes | None
    rules_version: str = RULES_VERSION  # the legal rule table it was evaluated with: this process's

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant_id, self.source, self.customer_ref)

    @property
    def stream_id(self) -> str:
        return f"subject/{self.tenant_id}/{self.source}/{self.customer_ref}"


SUBJECT_COLUMNS: Final = (
    "tenant_id", "source", "customer_ref", "version", "last_position", "erased", "state", "terms_version",
    "evaluated_on", "next_change", "matrix_hash", "published_hash", "rules_version",
)
SUBJECT_SELECT_COLUMNS: Final = ", ".join(f"s.{c}" for c in SUBJECT_COLUMNS)
"""The columns of :class:`SubjectRow`, for a query on ``projector.subjects s``."""


def row_from_record(r: asyncpg.Record) -> SubjectRow:
    return SubjectRow(
        tenant_id=r[0], source=r[1], customer_ref=r[2], version=r[3], last_position=r[4], erased=r[5],
        state=r[6], terms_version=r[7], evaluated_on=r[8], next_change=r[9], matrix_hash=r[10],
        published_hash=r[11], rules_version=r[12],
    )


def row_tuple(row: SubjectRow) -> tuple[object, ...]:
    return (row.tenant_id, row.source, row.customer_ref, row.version, row.last_position, row.erased, row.state,
            row.terms_version, row.evaluated_on, row.next_change, row.matrix_hash, row.published_hash,
            row.rules_version)


async def fetch_subject_rows(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str, str]], *, lock: bool, table: str = "projector.subjects"
) -> dict[tuple[str, str, str], SubjectRow]:
    """The rows of ``keys`` (one query); ``lock`` takes them FOR UPDATE in key order, so
    two transactions that lock overlapping sets cannot deadlock."""
    if not keys:
        return {}
    records = await conn.fetch(
        f"SELECT {SUBJECT_SELECT_COLUMNS} FROM {table} s"
        " JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, so, r)"
        " ON s.tenant_id = k.t AND s.source = k.so AND s.customer_ref = k.r"
        " ORDER BY s.tenant_id, s.source, s.customer_ref" + (" FOR UPDATE OF s" if lock else ""),
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
    )
    rows = (row_from_record(r) for r in records)
    return {row.key: row for row in rows}


async def upsert_subject_rows(
    conn: asyncpg.Connection, rows: Iterable[SubjectRow], *, table: str = "projector.subjects"
) -> int:
    rows = list(rows)
    if not rows:
        return 0
    columns = list(zip(*(row_tuple(r) for r in rows)))
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(SUBJECT_COLUMNS)})"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bool[],"
        " $7::bytea[], $8::int[], $9::date[], $10::date[], $11::bytea[], $12::bytea[], $13::text[])"
        " ON CONFLICT (tenant_id, source, customer_ref) DO UPDATE SET"
        + ", ".join(f" {c} = excluded.{c}" for c in SUBJECT_COLUMNS[3:]),
        *columns,
    )
    return len(rows)


async def insert_new_subject_rows(
    conn: asyncpg.Connection, rows: Sequence[SubjectRow], *, table: str = "projector.subjects"
) -> list[tuple[str, str, str]]:
    """Insert the rows of subjects that had none, in the given (key) order; returns the keys
    that exist already: another transaction inserted them (this insert waited for it to
    commit). The uncommitted rows are this transaction's claim on those subjects."""
    if not rows:
        return []
    columns = list(zip(*(row_tuple(r) for r in rows)))
    records = await conn.fetch(
        f"INSERT INTO {table} ({', '.join(SUBJECT_COLUMNS)})"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bool[],"
        " $7::bytea[], $8::int[], $9::date[], $10::date[], $11::bytea[], $12::bytea[], $13::text[])"
        " ON CONFLICT (tenant_id, source, customer_ref) DO NOTHING RETURNING tenant_id, source, customer_ref",
        *columns,
    )
    inserted = {(r[0], r[1], r[2]) for r in records}
    return [r.key for r in rows if r.key not in inserted]


class TenantRow(msgspec.Struct, kw_only=True):
    tenant_id: str
    version: int
    last_position: int
    state: TenantState
    terms_version: int
    reeval_version: int | None = None
    reeval_after: tuple[str, str] | None = None


TENANT_SELECT: Final = (
    "SELECT tenant_id, version, last_position, state, terms_version, reeval_version, reeval_after_source,"
    " reeval_after_ref FROM projector.tenants"
)


def tenant_from_record(r: asyncpg.Record, state: TenantState | None = None) -> TenantRow:
    return TenantRow(
        tenant_id=r[0], version=r[1], last_position=r[2], state=state or decode_tenant(r[3]), terms_version=r[4],
        reeval_version=r[5], reeval_after=(r[6], r[7]) if r[6] is not None else None,
    )
