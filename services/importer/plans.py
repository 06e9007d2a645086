"""What one batch of rows appends: per kind, a planner turns checked rows into events.

A planner looks up, for the whole batch at once (``= ANY``/``unnest``, never per row):
the import's own index (importer.invoices / importer.prospects), the subjects' stream
heads (version, erased) and, for contact data, the subjects' keys. Then, per row:

* invoices: unknown id -> InvoiceRecorded; same data as recorded -> nothing; changed
  date or contact -> InvoiceCorrected; recorded for another customer -> rejected;
* prospects: unknown (subject, acquired_on) -> ProspectRegistered; same data -> nothing;
  changed "how" or contact -> ProspectRegistered again;
* preferences: equal to the current preference -> nothing; equal to what the last
  import said while the customer changed it since (portal, staff) -> kept, nothing
  appended (a nightly full export must not undo a customer's own choice); else the
  subject gets one PreferencesChanged with the net changes of the batch;
* an erased subject -> rejected (nothing is recorded for it again).

Every stream write carries the expected version the plan was made against, so a
concurrent writer (portal, staff, an erasure) makes the append fail as a whole and the
batch is planned again. The index rows are written by the append's in-transaction hook.

``Effects`` is what a plan will have changed once committed; the next batch is planned
while this one commits, on top of these effects (docs/import.md, "Pipelining").
"""

from __future__ import annotations

import abc
import asyncio
import binascii
import contextlib
import datetime as dt
import functools
import itertools
import os
import re
from hashlib import blake2b
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.terms import cell_key
from schemas.events import (
    Actor,
    Event,
    InvoiceCorrected,
    InvoiceRecorded,
    PreferenceSetting,
    PreferencesChanged,
    ProspectRegistered,
)
from schemas.vocabulary import subject_stream
from services.importer.rows import InvoiceRow, PreferenceRow, ProspectRow, Row
from services.ledger.commands import Ledger
from services.ledger.errors import LedgerError
from services.ledger.store import AppendResult, StreamWrite, TransactionHook, translate_errors
from services.ledger.subject_keys import SubjectSealer

log = structlog.get_logger(__name__)

_FP_PURPOSE: Final = b"importer/contact-fingerprint/v1"
# Rows planned between giving the event loop to the batch that is committing meanwhile:
# each of its statements waits for the event loop, and PostgreSQL idles while it waits.
_YIELD_EVERY: Final = 250
_SEALER_CACHE: Final = 200_000  # subjects whose keys a run keeps between batches (about 0.4 KB each)
_CIPHER_CACHE: Final = 20_000  # of those, the ones used last keep their AES-GCM object (about 2.6 KB each)
_preferences_decoder: Final = msgspec.json.Decoder(PreferencesChanged)


class IndexConflict(LedgerError):
    """The import's index changed under a batch (a concurrent import): plan it again."""


class Rejection(msgspec.Struct, frozen=True, gc=False):
    line: int
    field: str
    problem: str


class Counts(msgspec.Struct, kw_only=True):
    recorded: int = 0   # rows that appended a new fact
    corrected: int = 0  # invoices re-delivered with changed data
    unchanged: int = 0  # rows that were already in the ledger as delivered
    kept: int = 0       # preference rows not applied: the customer changed it since the last import
    ignored: int = 0    # preference rows whose value maps to "ignore"

    def add(self, other: Counts) -> None:
        for f in self.__struct_fields__:
            setattr(self, f, getattr(self, f) + getattr(other, f))


class InvoiceState(msgspec.Struct, frozen=True, gc=False):
    stream_id: str
    invoice_date: dt.date
    contact_fp: bytes | None


class ProspectState(msgspec.Struct, frozen=True, gc=False):
    how: str
    contact_fp: bytes | None


class PreferenceState(msgspec.Struct, frozen=True):
    """Per cell key: the current value, and what the DMS said last."""

    current: dict[str, str]
    imported: dict[str, str]


class Effects(msgspec.Struct):
    versions: dict[str, int] = {}
    invoices: dict[str, InvoiceState] = {}
    prospects: dict[tuple[str, dt.date], ProspectState] = {}
    preferences: dict[str, PreferenceState] = {}


class Plan(msgspec.Struct, kw_only=True):
    rows: Sequence[Row]
    writes: list[StreamWrite]
    hook: TransactionHook | None
    rejections: list[Rejection]
    counts: Counts
    effects: Effects

    @property
    def events(self) -> int:
        return sum(len(w.events) for w in self.writes)


class Planner(abc.ABC):
    """Shared by the kinds: the batched lookups and the bookkeeping of a plan."""

    def __init__(self, ledger: Ledger, tenant: str, source: str, actor: Actor, ref_column: str) -> None:
        self.ledger = ledger
        self.pool: asyncpg.Pool = ledger.pool
        self.tenant = tenant
        self.source = source
        self.actor = actor
        self.ref_column = ref_column
        self._prefix = subject_stream(tenant, source, "")
        # The run's subjects' sealers, kept between batches: a file sorted by date brings
        # most customers back in later batches, and fetching and unwrapping their keys
        # again each time was a tenth of the import's CPU (more than that once a file has
        # more customers than fit). Bounded: past _SEALER_CACHE subjects the oldest make
        # room (about 80 MB when full). Only the _CIPHER_CACHE subjects used last keep an
        # AES-GCM object and a fingerprint MAC state (the rest make them again on use,
        # 3 us instead of a key lookup). Safe against erasure: every batch still looks up
        # every subject's head, so an erased subject's rows are rejected and nothing is
        # sealed with its old key, which stays in this process's memory only until the
        # run ends.
        self._sealers: dict[str, SubjectSealer] = {}
        self._ciphers: dict[str, None] = {}  # subjects whose sealer holds a cipher, least recently used first
        self.fp_keys: dict[str, _Blake2b] = {}  # per subject: the fingerprint MAC, keyed, to copy
        # New keys made for the batch being planned, and their inserts (see sealers()).
        self._new_keys: list[tuple[dict[str, SubjectSealer], asyncio.Future[set[str]]]] = []

    def stream(self, ref: str) -> str:
        return self._prefix + ref

    async def heads(self, streams: Sequence[str], overlay: Effects | None) -> tuple[dict[str, int], set[str]]:
        heads = await self.ledger.subject_heads(streams)
        versions = {s: v for s, (v, _) in heads.items()}
        if overlay is not None:
            versions.update((s, v) for s, v in overlay.versions.items() if s in versions)
        return versions, {s for s, (_, erased) in heads.items() if erased}

    async def existing_sealers(self, streams: set[str]) -> dict[str, SubjectSealer]:
        """Keys of subjects that have one and are not cached yet; fetched alongside the
        other lookups (it makes no key, so an erased subject cannot get a new one here)."""
        cached = self._sealers
        wanted = sorted(s for s in streams if s not in cached)
        return await self.ledger.keys.existing_sealers(wanted) if wanted else {}

    async def sealers(self, streams: set[str], existing: dict[str, SubjectSealer]) -> dict[str, SubjectSealer]:
        """A sealer for each (not erased) subject with contact data. Missing keys are made
        here and their insert is started, not awaited: the batch is sealed while
        PostgreSQL stores them, and :meth:`plan` waits for the insert before it hands the
        plan out (nothing sealed with a new key is stored before its key is)."""
        if not streams:
            return {}
        cached, ciphers = self._sealers, self._ciphers
        found = {s: cached[s] for s in streams if s in cached}
        rest = sorted(s for s in streams if s not in found)
        if rest:
            known = {s: existing[s] for s in rest if s in existing}
            self._remember(known)
            found.update(known)
            missing = [s for s in rest if s not in known]
            if missing:
                made, store = self.ledger.keys.make_keys(self.tenant, missing)
                self._new_keys.append((made, asyncio.ensure_future(store)))
                found.update(made)
        for s in found:  # this batch's subjects are now the most recently used
            ciphers.pop(s, None)
            ciphers[s] = None
        excess = len(ciphers) - _CIPHER_CACHE
        if excess > 0:
            for stale in list(itertools.islice(ciphers, excess)):
                del ciphers[stale]
                self.fp_keys.pop(stale, None)
                sealer = cached.get(stale)
                if sealer is not None:
                    sealer.release_cipher()
        return found

    def _remember(self, sealers: dict[str, SubjectSealer]) -> None:
        """Keep stored keys for the next batches; the oldest go first past _SEALER_CACHE."""
        cached = self._sealers
        excess = len(cached) + len(sealers) - _SEALER_CACHE
        if excess > 0:  # the cache stays full, hits stay likely
            for stale in list(itertools.islice(cached, excess)):
                del cached[stale]
                self._ciphers.pop(stale, None)
                self.fp_keys.pop(stale, None)
        cached.update(sealers)

    async def _keys_stored(self) -> bool:
        """Wait for the inserts of the new keys the last plan sealed with. Stored keys are
        remembered; keys that were not (another writer made one for the subject first, or
        the insert failed) are forgotten, with their fingerprint states. False if the
        batch must be planned again (raced); an insert's error is raised."""
        pending, self._new_keys = self._new_keys, []
        outcomes = await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
        planned_again = False
        error: BaseException | None = None
        for (made, _), outcome in zip(pending, outcomes):
            if isinstance(outcome, BaseException):
                error = error or outcome
                lost = set(made)
            else:
                lost = outcome
                planned_again = planned_again or bool(lost)
                self._remember({s: sealer for s, sealer in made.items() if s not in lost})
            for s in lost:
                self._ciphers.pop(s, None)
                self.fp_keys.pop(s, None)
        if error is not None:
            raise error
        return not planned_again

    async def plan(self, rows: Sequence[Row], overlay: Effects | None) -> Plan:
        """Plan a batch (:meth:`plan_batch`) and wait until its new keys are stored; if
        another writer gave one of its subjects a key meanwhile, plan it again (that key
        is then found and used)."""
        while True:
            try:
                plan = await self.plan_batch(rows, overlay)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._keys_stored()
                raise
            if await self._keys_stored():
                return plan
            log.info("import_key_race", detail="another writer made a subject key meanwhile; planning again")

    def erased(self, line: int) -> Rejection:
        return Rejection(line, self.ref_column,
                         "this customer was erased (GDPR art. 17): nothing is recorded for them any more")

    @abc.abstractmethod
    async def plan_batch(self, rows: Sequence[Row], overlay: Effects | None) -> Plan:
        """Each kind implements this."""


class _Writes:
    """Events per stream in first-seen order, and where each lands in the append."""

    def __init__(self) -> None:
        self.per_stream: dict[str, list[Event]] = {}

    def add(self, stream: str, event: Event) -> tuple[str, int]:
        events = self.per_stream.setdefault(stream, [])
        events.append(event)
        return stream, len(events) - 1

    def build(self, versions: dict[str, int]) -> tuple[list[StreamWrite], dict[str, int]]:
        """The stream writes (each pinned to its version) and each stream's offset in the
        append: event (stream, i) gets position ``first_position + offset[stream] + i``."""
        writes: list[StreamWrite] = []
        offsets: dict[str, int] = {}
        n = 0
        for stream, events in self.per_stream.items():
            offsets[stream] = n
            n += len(events)
            writes.append(StreamWrite(stream, events, versions.get(stream, 0)))
        return writes, offsets

    def versions_after(self, versions: dict[str, int]) -> dict[str, int]:
        return {s: versions.get(s, 0) + len(e) for s, e in self.per_stream.items()}


_Blake2b = type(blake2b())


def _fingerprint(keys: dict[str, _Blake2b], sealer: SubjectSealer, contact: bytes) -> bytes:
    """A MAC of the contact JSON under a key derived from the subject's key (BLAKE2b,
    keyed): comparable between deliveries, useless once the subject key is shredded.
    The keyed state is made once per subject and copied per MAC (keying costs a block)."""
    keyed = keys.get(sealer.stream_id)
    if keyed is None:
        keyed = keys[sealer.stream_id] = blake2b(key=sealer.derive(_FP_PURPOSE), digest_size=16)
    mac = keyed.copy()
    mac.update(contact)
    return mac.digest()


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def _joined(values: Iterable[str]) -> str:
    """Values as one text parameter for ``string_to_array($n, E'\\n')``: asyncpg checks
    every element of a list parameter in Python, which costs more than the query for the
    thousands of rows of a batch. Only for values that cannot hold a newline (ids, stream
    ids, dates, numbers, hex)."""
    return "\n".join(values)


_COLUMNS = ("FROM unnest(string_to_array($2, E'\\n'), string_to_array($3, E'\\n'), string_to_array($4, E'\\n'),"
            " string_to_array($5, E'\\n', '-'), string_to_array($6, E'\\n')) AS u(i, s, d, f, p)")
_INVOICE_COLUMNS: Final = ("tenant_id", "invoice_id", "stream_id", "invoice_date", "contact_fp", "position")
_UPDATE_INVOICES: Final = (  # $7: the append's first position
    "UPDATE importer.invoices AS x SET invoice_date = u.d::date, contact_fp = decode(u.f, 'hex'),"
    " position = $7 + u.p::bigint, updated_at = now() " + _COLUMNS
    + " WHERE x.tenant_id = $1 AND x.invoice_id = u.i AND x.stream_id = u.s")


_iso = functools.lru_cache(maxsize=4096)(dt.date.isoformat)  # a batch has few distinct dates


class _Nonces:
    """AES-GCM nonces for a batch drawn in one call to the OS random source, with their
    base64 text from one call too (12 bytes are exactly 16 base64 characters, no padding,
    so nonce i is characters 16i..16i+16 of the whole pool's base64)."""

    def __init__(self, n: int) -> None:
        self._pool = os.urandom(12 * n) if n else b""
        self._text = binascii.b2a_base64(self._pool, newline=False).decode()
        self._at = 0

    def next(self) -> tuple[bytes, str]:
        i = self._at
        self._at = i + 1
        return self._pool[12 * i:12 * i + 12], self._text[16 * i:16 * i + 16]


# ---------------------------------------------------------------------------------------
# Invoices
# ---------------------------------------------------------------------------------------


class InvoicePlanner(Planner):
    async def plan_batch(self, rows: Sequence[Row], overlay: Effects | None) -> Plan:
        row_streams = [self.stream(r.customer_ref) for r in rows]
        streams = sorted(set(row_streams))
        ids = sorted({r.invoice_id for r in rows})  # type: ignore[union-attr]
        with_contact = {s for s, r in zip(row_streams, rows) if r.contact is not None}  # type: ignore[union-attr]

        async def index() -> list[asyncpg.Record]:
            with translate_errors():
                return await self.pool.fetch(
                    "SELECT invoice_id, stream_id, invoice_date, contact_fp FROM importer.invoices"
                    " WHERE tenant_id = $1 AND invoice_id = ANY(string_to_array($2, E'\\n'))",
                    self.tenant, _joined(ids))

        found, (versions, erased), existing = await asyncio.gather(
            index(), self.heads(streams, overlay), self.existing_sealers(with_contact))
        known: dict[str, InvoiceState] = {
            r["invoice_id"]: InvoiceState(r["stream_id"], r["invoice_date"],
                                          bytes(r["contact_fp"]) if r["contact_fp"] is not None else None)
            for r in found
        }
        if overlay is not None:
            wanted = set(ids)
            known.update((i, s) for i, s in overlay.invoices.items() if i in wanted)
        in_index = set(known)  # rows the index has (or will have when the batch in flight commits)
        fresh: set[str] = set()  # invoice ids this batch adds to the index
        sealers = await self.sealers(with_contact - erased, existing)
        fp_keys = self.fp_keys
        nonces = _Nonces(len(rows))
        writes = _Writes()
        changed: dict[str, tuple[InvoiceState, tuple[str, int]]] = {}
        rejections: list[Rejection] = []
        counts = Counts()
        recorded = corrected = unchanged = 0
        add = writes.add
        for n, (stream, row) in enumerate(zip(row_streams, rows), 1):
            assert isinstance(row, InvoiceRow)
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the batch in flight send its next statement
            if stream in erased:
                rejections.append(self.erased(row.line))
                continue
            contact = row.contact
            invoice_id = row.invoice_id
            if contact is not None:
                sealer = sealers[stream]
                fp = _fingerprint(fp_keys, sealer, contact)
            else:
                sealer = fp = None
            state = known.get(invoice_id)
            event: Event
            if state is None:
                event = InvoiceRecorded(invoice_id=invoice_id, invoice_date=row.invoice_date,
                                        personal=sealer.seal_json(contact, *nonces.next()) if sealer else None)  # type: ignore[arg-type]
                recorded += 1
                if invoice_id not in in_index:
                    fresh.add(invoice_id)
            elif state.stream_id != stream:
                rejections.append(Rejection(row.line, self.ref_column,
                                            f"invoice {invoice_id} is already recorded for another customer"))
                continue
            elif state.invoice_date == row.invoice_date and (fp is None or fp == state.contact_fp):
                unchanged += 1
                continue
            else:
                event = InvoiceCorrected(invoice_id=invoice_id, invoice_date=row.invoice_date,
                                         personal=sealer.seal_json(contact, *nonces.next()) if sealer else None)  # type: ignore[arg-type]
                corrected += 1
            new_state = InvoiceState(stream, row.invoice_date, fp if fp is not None else
                                     (state.contact_fp if state is not None else None))
            known[invoice_id] = new_state
            changed[invoice_id] = (new_state, add(stream, event))
        counts.recorded, counts.corrected, counts.unchanged = recorded, corrected, unchanged
        stream_writes, offsets = writes.build(versions)
        # The index rows, prepared here so that the hook, which runs while the append holds
        # the ledger's head lock, only adds the append's first position and sends them.
        # New invoices go in with COPY (a row there already means a concurrent import: the
        # unique key fails the batch and it is planned again); corrections are an UPDATE
        # (newline-joined text columns, see _joined) that must find each row still on its
        # customer.
        tenant = self.tenant
        new_rows: list[tuple[str, str, dt.date, bytes | None, int]] = []
        updates: list[tuple[str, InvoiceState, int]] = []
        for invoice_id, (st, (stream, i)) in changed.items():
            if invoice_id in fresh:
                new_rows.append((invoice_id, st.stream_id, st.invoice_date, st.contact_fp, offsets[stream] + i))
            else:
                updates.append((invoice_id, st, offsets[stream] + i))
        update_args = (
            tenant, _joined([u[0] for u in updates]), _joined([st.stream_id for _, st, _ in updates]),
            _joined([_iso(st.invoice_date) for _, st, _ in updates]),
            _joined([st.contact_fp.hex() if st.contact_fp is not None else "-" for _, st, _ in updates]),
            _joined([str(offset) for _, _, offset in updates])) if updates else ()

        async def hook(conn: asyncpg.Connection, result: AppendResult) -> None:
            if new_rows:
                first = result.first_position
                await conn.copy_records_to_table(
                    "invoices", schema_name="importer", columns=_INVOICE_COLUMNS,
                    records=[(tenant, i, s, d, f, first + offset) for i, s, d, f, offset in new_rows])
            if updates:
                status = await conn.execute(_UPDATE_INVOICES, *update_args, result.first_position)
                if _affected(status) != len(updates):
                    raise IndexConflict("an invoice of this batch was recorded for another customer meanwhile")

        return Plan(rows=rows, writes=stream_writes, hook=hook if changed else None, rejections=rejections,
                    counts=counts, effects=Effects(versions=writes.versions_after(versions),
                                                   invoices={i: s for i, (s, _) in changed.items()}))


# ---------------------------------------------------------------------------------------
# Prospects
# ---------------------------------------------------------------------------------------


class ProspectPlanner(Planner):
    async def plan_batch(self, rows: Sequence[Row], overlay: Effects | None) -> Plan:
        stream_of = self.stream
        streams = sorted({stream_of(r.customer_ref) for r in rows})
        keys = sorted({(stream_of(r.customer_ref), r.acquired_on) for r in rows})  # type: ignore[union-attr]

        async def index() -> list[asyncpg.Record]:
            with translate_errors():
                return await self.pool.fetch(
                    "SELECT p.stream_id, p.acquired_on, p.how, p.contact_fp FROM importer.prospects p"
                    " JOIN unnest($2::text[], $3::date[]) AS k(stream_id, acquired_on)"
                    " ON p.stream_id = k.stream_id AND p.acquired_on = k.acquired_on WHERE p.tenant_id = $1",
                    self.tenant, [k[0] for k in keys], [k[1] for k in keys])

        with_contact = {stream_of(r.customer_ref) for r in rows if r.contact is not None}  # type: ignore[union-attr]
        found, (versions, erased), existing = await asyncio.gather(
            index(), self.heads(streams, overlay), self.existing_sealers(with_contact))
        known: dict[tuple[str, dt.date], ProspectState] = {
            (r["stream_id"], r["acquired_on"]): ProspectState(
                r["how"], bytes(r["contact_fp"]) if r["contact_fp"] is not None else None)
            for r in found
        }
        if overlay is not None:
            known.update(overlay.prospects)
        sealers = await self.sealers(with_contact - erased, existing)
        fp_keys = self.fp_keys
        writes = _Writes()
        changed: dict[tuple[str, dt.date], tuple[ProspectState, tuple[str, int]]] = {}
        rejections: list[Rejection] = []
        counts = Counts()
        for row in rows:
            assert isinstance(row, ProspectRow)
            stream = stream_of(row.customer_ref)
            if stream in erased:
                rejections.append(self.erased(row.line))
                continue
            sealer = sealers.get(stream) if row.contact is not None else None
            fp = _fingerprint(fp_keys, sealer, row.contact) if sealer is not None else None  # type: ignore[arg-type]
            key = (stream, row.acquired_on)
            state = known.get(key)
            if state is not None and state.how == row.how and (fp is None or fp == state.contact_fp):
                counts.unchanged += 1
                continue
            personal = sealer.seal_json(row.contact) if sealer is not None else None  # type: ignore[arg-type]
            counts.recorded += 1
            new_state = ProspectState(row.how, fp if fp is not None else (state.contact_fp if state else None))
            known[key] = new_state
            changed[key] = (new_state, writes.add(stream, ProspectRegistered(
                acquired_on=row.acquired_on, how=row.how, personal=personal)))
        stream_writes, offsets = writes.build(versions)
        tenant = self.tenant

        async def hook(conn: asyncpg.Connection, result: AppendResult) -> None:
            base = result.first_position
            await conn.execute(
                "INSERT INTO importer.prospects AS p (tenant_id, stream_id, acquired_on, how, contact_fp, position)"
                " SELECT $1, u.* FROM unnest($2::text[], $3::date[], $4::text[], $5::bytea[], $6::bigint[]) AS u"
                " ON CONFLICT (tenant_id, stream_id, acquired_on) DO UPDATE SET how = EXCLUDED.how,"
                " contact_fp = EXCLUDED.contact_fp, position = EXCLUDED.position, updated_at = now()",
                tenant, [k[0] for k in changed], [k[1] for k in changed], [s.how for s, _ in changed.values()],
                [s.contact_fp for s, _ in changed.values()],
                [base + offsets[stream] + i for _, (stream, i) in changed.values()],
            )

        return Plan(rows=rows, writes=stream_writes, hook=hook if changed else None, rejections=rejections,
                    counts=counts, effects=Effects(versions=writes.versions_after(versions),
                                                   prospects={k: s for k, (s, _) in changed.items()}))


# ---------------------------------------------------------------------------------------
# Opt-in settings
# ---------------------------------------------------------------------------------------


_NOT_IN_EVIDENCE_REF: Final = re.compile(r"[^A-Za-z0-9 ._:/#+-]")


def evidence_name(file: str) -> str:
    """The file's name as an ``evidence_ref`` allows it (schemas.events.EvidenceRef: it must
    still decode when the event is read back): other characters become '_', at most 180."""
    name = _NOT_IN_EVIDENCE_REF.sub("_", os.path.basename(file) or "dms-import")[:180]
    return name if name[:1].isalnum() else "f" + name[:179]


class PreferencePlanner(Planner):
    evidence_file = "dms-import"  # the imported file's name (the pipeline sets it): evidence of dated rows
    _policies: dict[dt.date, str]

    async def _policy_on(self, given_on: dt.date) -> str:
        """The policy version in force on ``given_on``, looked up once per day per run."""
        policies = self.__dict__.setdefault("_policies", {})
        if given_on not in policies:
            policies[given_on] = (await self.ledger.consent_policy(self.tenant, None, given_on))[0]
        return policies[given_on]

    async def current(self, streams: Sequence[str]) -> dict[str, dict[str, str]]:
        """Per subject, the current value per cell (cells never set are "default")."""
        rows = await self.ledger.store.read_event_data(streams, "PreferencesChanged")
        current: dict[str, dict[str, str]] = {}
        for stream_id, data in rows:
            cells = current.setdefault(stream_id, {})
            for change in _preferences_decoder.decode(data).changes:
                cells[cell_key(change.category, change.channel)] = change.value
        return current

    async def delivered(self, streams: Sequence[str]) -> dict[str, dict[str, str]]:
        """Per subject, what the DMS said last per cell."""
        with translate_errors():
            rows = await self.pool.fetch(
                "SELECT stream_id, cell, value FROM importer.preferences WHERE tenant_id = $1"
                " AND stream_id = ANY($2::text[])", self.tenant, list(streams))
        delivered: dict[str, dict[str, str]] = {}
        for r in rows:
            delivered.setdefault(r["stream_id"], {})[r["cell"]] = r["value"]
        return delivered

    async def plan_batch(self, rows: Sequence[Row], overlay: Effects | None) -> Plan:
        stream_of = self.stream
        streams = sorted({stream_of(r.customer_ref) for r in rows})
        current, delivered, (versions, erased) = await asyncio.gather(
            self.current(streams), self.delivered(streams), self.heads(streams, overlay))
        if overlay is not None:
            for s, p in overlay.preferences.items():
                if s in versions:
                    current[s] = p.current
                    delivered[s] = p.imported
        rejections: list[Rejection] = []
        counts = Counts()
        after: dict[str, PreferenceState] = {}
        cells: dict[str, tuple[str, str]] = {}
        news: dict[tuple[str, str], str] = {}  # (stream, cell) -> value newly delivered
        dated: dict[tuple[str, str], PreferenceRow] = {}  # (stream, cell) -> the row that set it, with given_on
        for row in rows:
            assert isinstance(row, PreferenceRow)
            stream = stream_of(row.customer_ref)
            if row.value == "ignore" and not row.category:  # a write-back row (objection, erasure): the DMS's
                counts.ignored += 1
                continue
            if stream in erased:
                rejections.append(self.erased(row.line))
                continue
            if row.value == "ignore":
                counts.ignored += 1
                continue
            state = after.get(stream)
            if state is None:
                state = after[stream] = PreferenceState(dict(current.get(stream, {})), dict(delivered.get(stream, {})))
            key = cell_key(row.category, row.channel)
            cells[key] = (row.category, row.channel)
            now = state.current.get(key, "default")
            if state.imported.get(key) == row.value:  # the DMS says what it said before
                if now == row.value:
                    counts.unchanged += 1
                else:
                    counts.kept += 1  # changed since by the customer or staff: their choice stands
                continue
            state.imported[key] = row.value
            news[(stream, key)] = row.value
            if now == row.value:
                counts.unchanged += 1
            else:
                counts.recorded += 1
                state.current[key] = row.value
                if row.given_on is not None:
                    dated[(stream, key)] = row
                else:
                    dated.pop((stream, key), None)
        writes = _Writes()
        # The DMS shows the customer no text the ledger knows of; the consent record names
        # the dealer's policy in force when it was given (issue 16), read once per batch.
        policy = await self.ledger.current_policy_version(self.tenant) if after else None
        for stream, state in after.items():
            old = current.get(stream, {})
            changes = [PreferenceSetting(category=cells[k][0], channel=cells[k][1], value=v)  # type: ignore[arg-type]
                       for k, v in sorted(state.current.items())
                       if k in cells and old.get(k, "default") != v and (stream, k) not in dated]
            if changes:
                writes.add(stream, PreferencesChanged(changes=changes, changed_by=self.actor, method="import",
                                                      policy_version=policy, policy_version_basis="in_force"))
            for k, v in sorted(state.current.items()):
                row = dated.get((stream, k))
                if row is None or old.get(k, "default") == v:
                    continue
                # A dated setting is its own event: it counts from its own day, and names
                # the policy in force then and the file line that says so.
                assert row.given_on is not None
                writes.add(stream, PreferencesChanged(
                    changes=[PreferenceSetting(category=cells[k][0], channel=cells[k][1], value=v)],  # type: ignore[arg-type]
                    changed_by=self.actor, method="import", given_on=row.given_on,
                    evidence_ref=f"{self.evidence_file}:{row.line}", policy_version_basis="in_force",
                    policy_version=await self._policy_on(row.given_on)))
        stream_writes, _ = writes.build(versions)
        tenant = self.tenant

        async def remember(conn: asyncpg.Connection | asyncpg.Pool, result: AppendResult | None = None) -> None:
            """What the DMS said: with the batch's events, or alone if there are none."""
            await conn.execute(
                "INSERT INTO importer.preferences AS p (tenant_id, stream_id, cell, value)"
                " SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::text[]) AS u"
                " ON CONFLICT (tenant_id, stream_id, cell) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                tenant, [k[0] for k in news], [k[1] for k in news], list(news.values()),
            )

        return Plan(rows=rows, writes=stream_writes, hook=remember if news else None, rejections=rejections,
                    counts=counts, effects=Effects(versions=writes.versions_after(versions),
                                                   preferences={s: after[s] for s in after}))


PLANNERS: Final[dict[str, type[Planner]]] = {
    "invoices": InvoicePlanner,
    "prospects": ProspectPlanner,
    "preferences": PreferencePlanner,
}
