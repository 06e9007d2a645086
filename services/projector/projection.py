"""Applies ledger events to the read model, exactly once, and publishes what changed.

:meth:`Projection.apply` takes a batch of :class:`~schemas.events.RecordedEvent` (from the
Kafka consumer, or anything else that delivers the ledger at least once, in stream order
per stream) and:

1. applies the tenant events (their own transaction): each tenant row keeps its folded
   :class:`~consent.tenant.TenantState`; an edit of the term matrix marks the tenant for a
   re-evaluation of all its subjects (:meth:`Projection.reevaluate_tenant`, in batches);
2. applies the subject events, with the Kafka offsets, in one transaction: the rows are
   locked in key order, an event at or below a row's version is a duplicate (ignored), a
   version gap is filled from the ledger (``EventStore.read_stream``), every touched subject
   is evaluated with the pure rules (:mod:`consent.eligibility`) on today's date, the rows
   of subjects seen for the first time are inserted (which claims them), and each subject
   whose matrix changed is published before the transaction commits.

A subject without a row has nothing to lock. During a consumer-group rebalance the old and
the new owner of a partition may both be handed its first events; the first to insert the
row wins, the other's insert waits for it and, finding the row there, applies its whole
batch again on top of it (:class:`_NewSubjectTaken`). Without that, the slower instance,
holding fewer events, would overwrite the newer row and publish an older matrix last.

Every writer of a subject row (events, a term edit, a new day, a pending publication) locks
the row, evaluates, publishes and waits for the broker, then commits: so the messages for
one key reach the topic in the order of the row's changes, and a crash re-publishes
(same value) instead of losing one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.eligibility import eligibility_matrix
from consent.errors import OutOfOrderEvent
from consent.law import RULES_VERSION
from consent.subject import SubjectState, apply_subject
from consent.tenant import TenantState, apply_tenant
from consent.terms import TermMatrix
from schemas.eligibility import topic_key
from schemas.events import RecordedEvent
from schemas.vocabulary import parse_subject_stream, tenant_stream
from services.ledger.store import EventStore
from services.mail.tokens import AnswerLinks, disclosure_of
from services.projector.clock import Clock
from services.projector.metrics import ProjectorMetrics
from services.projector.publisher import Message, Publisher
from services.projector.readmodel import (
    SUBJECT_SELECT_COLUMNS,
    TENANT_SELECT,
    Evaluation,
    SubjectRow,
    TenantRow,
    decode_state,
    encode_state,
    encode_tenant,
    evaluate_subject,
    fetch_subject_rows,
    insert_new_subject_rows,
    matrix_json,
    row_from_record,
    suppressed,
    tenant_from_record,
    upsert_subject_rows,
)

log = structlog.get_logger(__name__)

SubjectKey = tuple[str, str, str]
_NO_TERMS: Final = TermMatrix()
_REPUBLISH_LOCK: Final = 0x72657075626C  # "republ"
REPUBLISH_BATCH: Final = 500


class ApplyResult(msgspec.Struct, kw_only=True):
    applied: int = 0
    duplicates: int = 0
    gap_events: int = 0
    published: int = 0
    reeval_marked: list[str] = []

    def add(self, other: ApplyResult) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.gap_events += other.gap_events
        self.published += other.published
        self.reeval_marked.extend(other.reeval_marked)


class _NewSubjectTaken(Exception):
    """Another transaction inserted the row of a subject this one found new: roll back,
    apply the batch again (now on top of that row). Raised before anything is published.
    Internal signalling, caught by the projector itself: not in the error family
    (services/errors.py), no user ever sees it."""

    def __init__(self, keys: list[SubjectKey]) -> None:
        super().__init__(f"{len(keys)} new subject(s) inserted meanwhile by another transaction")
        self.keys = keys


class Projection:
    """The read model's writer. One per process; safe to run in several processes at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        clock: Clock,
        publisher: Publisher | None = None,
        store: EventStore | None = None,
        metrics: ProjectorMetrics | None = None,
        batch_size: int = 2000,
        links: AnswerLinks | None = None,
    ) -> None:
        self.pool = pool
        self.links = links  # unsubscribe links in the messages (None: no master key here)
        self.clock = clock
        self.publisher = publisher
        self.store = store or EventStore(pool)  # reads only (gap filling)
        self.metrics = metrics or ProjectorMetrics()
        self.batch_size = batch_size
        self.reeval_wanted = asyncio.Event()
        self.epoch = 0  # the eligibility topic's epoch, carried by every message (see republish)
        self._tenants: dict[str, TenantRow] = {}  # decoded tenant rows, reused while the version matches

    # -- events --------------------------------------------------------------------------

    async def apply(
        self, events: Sequence[RecordedEvent], offsets: Mapping[tuple[str, int], int] | None = None
    ) -> ApplyResult:
        """Apply a delivered batch; ``offsets`` ((topic, partition) -> next offset) are
        stored in the same transaction as the subjects."""
        started = time.perf_counter()
        result = ApplyResult()
        checkpoint = await self.pool.fetchrow(
            "SELECT rebuilt_through, rebuilt_through_partitions FROM projector.checkpoint")
        # Per log partition (positions of two partitions are not comparable); a checkpoint
        # of before partitioning holds for every partition (0020_checkpoint_partitions.sql).
        everywhere = checkpoint["rebuilt_through"] if checkpoint is not None else 0
        per_partition: list[int] = (checkpoint["rebuilt_through_partitions"] or []) if checkpoint is not None else []
        tenant_events: dict[str, list[RecordedEvent]] = defaultdict(list)
        subject_events: dict[SubjectKey, dict[int, RecordedEvent]] = defaultdict(dict)
        for e in events:
            if per_partition:
                through = per_partition[e.partition] if e.partition < len(per_partition) else 0
            else:
                through = everywhere
            if e.position <= through:
                result.duplicates += 1
                continue
            parsed = parse_subject_stream(e.stream_id)
            if parsed is not None:
                delivered = subject_events[parsed]
                if e.version in delivered:
                    result.duplicates += 1  # delivered twice in this batch
                delivered[e.version] = e
            elif e.stream_id == tenant_stream(e.tenant_id):
                tenant_events[e.tenant_id].append(e)
            elif e.stream_id.startswith(("exports/", "users/")):
                continue  # exports and account changes (services/portal/changelog.py): no consent facts
            else:
                log.warning("projector_unknown_stream", stream=e.stream_id, position=e.position)

        if tenant_events:
            async with self.pool.acquire() as conn, conn.transaction():
                for tenant_id in sorted(tenant_events):
                    row, applied, gap, marked = await self._advance_tenant(conn, tenant_id, tenant_events[tenant_id])
                    result.applied += applied
                    result.gap_events += gap
                    result.duplicates += len(tenant_events[tenant_id]) - (applied - gap)
                    if marked:
                        result.reeval_marked.append(tenant_id)

        while True:
            subjects = ApplyResult()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if subject_events:
                        await self._apply_subjects(conn, subject_events, subjects)
                    if offsets:
                        await conn.execute(
                            "INSERT INTO projector.offsets (topic, partition, next_offset)"
                            " SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])"
                            " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset,"
                            " updated_at = now()",
                            [t for t, _ in offsets], [p for _, p in offsets], list(offsets.values()),
                        )
            except _NewSubjectTaken as taken:  # those rows exist now: the next attempt locks them
                log.info("projector_new_subject_taken", subjects=["/".join(k) for k in taken.keys[:10]],
                         count=len(taken.keys))
                continue
            result.add(subjects)
            break
        if result.reeval_marked:
            self.reeval_wanted.set()
        m = self.metrics
        m.events_applied.inc(result.applied)
        m.duplicates.inc(result.duplicates)
        m.gap_events.inc(result.gap_events)
        m.published.inc(result.published)
        m.batch_seconds.observe(time.perf_counter() - started)
        return result

    async def _apply_subjects(
        self, conn: asyncpg.Connection, subject_events: dict[SubjectKey, dict[int, RecordedEvent]],
        result: ApplyResult,
    ) -> None:
        keys = sorted(subject_events)
        rows = await fetch_subject_rows(conn, keys, lock=True)
        tenants = await self._tenant_rows(conn, {k[0] for k in keys})
        today = self.clock.today()
        out: list[SubjectRow] = []
        created: list[SubjectRow] = []  # subjects without a row yet, in key order
        messages: list[Message] = []
        for key in keys:
            delivered = subject_events[key]
            row = rows.get(key)
            state = decode_state(row.state) if row is not None else None
            version = row.version if row is not None else 0
            new = [delivered[v] for v in sorted(delivered) if v > version]
            result.duplicates += len(delivered) - len(new)
            if not new:
                continue
            if new[-1].version - version != len(new):  # versions missing before or between the delivered ones
                new, filled = await self._fill_gaps(new, version)
                result.gap_events += filled
            for e in new:
                state = apply_subject(state, e)  # raises OutOfOrderEvent if the ledger itself has a hole
            assert state is not None
            result.applied += len(new)
            if state.erased is not None:
                state = suppressed(state)
            tenant = tenants.get(key[0])
            if tenant is None:  # its tenant's events have not arrived yet: fold them from the ledger
                tenant, applied, gap, marked = await self._advance_tenant(conn, key[0], None)
                result.applied += applied
                result.gap_events += gap
                if marked:
                    result.reeval_marked.append(key[0])
                if tenant is None:
                    log.error("projector_subject_without_tenant", tenant=key[0], stream=new[0].stream_id)
                else:
                    tenants[key[0]] = tenant
            new_row, message = self._evaluate(state, tenant, today, row.published_hash if row else None)
            (out if row is not None else created).append(new_row)
            if message is not None:
                messages.append(message)
        if created:  # claim them before publishing anything
            taken = await insert_new_subject_rows(conn, created)
            if taken:
                raise _NewSubjectTaken(taken)
        result.published += await self._publish_and_write(conn, messages, out)

    async def _fill_gaps(self, delivered: list[RecordedEvent], version: int) -> tuple[list[RecordedEvent], int]:
        """The stream from ``version + 1`` through the last delivered event, with what was
        not delivered read from the ledger. Returns (events, how many were read)."""
        stream = delivered[0].stream_id
        have = {e.version for e in delivered}
        stored = await self.store.read_stream(stream, version + 1, delivered[-1].version - version)
        missing = [e for e in stored if e.version not in have]
        by_version = {e.version: e for e in stored} | {e.version: e for e in delivered}
        events = [by_version[v] for v in sorted(by_version)]
        log.info("projector_gap_filled", stream=stream, after_version=version, events=len(missing))
        return events, len(missing)

    # -- evaluation and writing ------------------------------------------------------------

    def _evaluate(
        self, state: SubjectState, tenant: TenantRow | None, today: dt.date, published_hash: bytes | None,
        *, force: bool = False, current: SubjectRow | None = None,
    ) -> tuple[SubjectRow, Message | None]:
        """The subject's new row and, if its matrix differs from the published one (or
        ``force``: a republish) and a publisher is configured, the message to publish.
        ``current``: the stored row, if it was evaluated today with these terms (its next
        change and hash are then reused: a republish evaluates only the decisions)."""
        terms = tenant.state.terms if tenant is not None else _NO_TERMS  # no tenant: fail closed
        terms_version = tenant.terms_version if tenant is not None else 0
        tenant_position = tenant.last_position if tenant is not None else 0
        if current is not None and state.erased is None:
            evaluation = Evaluation(on=today, decisions=eligibility_matrix(state, terms, today),
                                    next_change=current.next_change, matrix_hash=current.matrix_hash)
        else:
            evaluation = evaluate_subject(state, terms, today)
        row = SubjectRow(
            tenant_id=state.tenant_id, source=state.source, customer_ref=state.customer_ref,
            version=state.version, last_position=state.last_position, erased=state.erased is not None,
            state=encode_state(state), terms_version=terms_version, evaluated_on=today,
            next_change=evaluation.next_change, matrix_hash=evaluation.matrix_hash, published_hash=published_hash,
        )
        if self.publisher is None or (evaluation.matrix_hash == published_hash and not force):
            return row, None
        row.published_hash = evaluation.matrix_hash
        key = topic_key(state.tenant_id, state.source, state.customer_ref)
        if evaluation.decisions is None:
            return row, (key, None)  # erased: tombstone
        links = self.links
        value = matrix_json(
            state, evaluation, terms_version=terms_version, tenant_position=tenant_position,
            evaluated_at=self.clock.now(), epoch=self.epoch,
            unsubscribe=links.matrix(state.tenant_id, state.source, state.customer_ref, evaluation.decisions)
            if links is not None else None,
            disclosure=disclosure_of(tenant.state) if tenant is not None else None)
        return row, (key, value)

    async def _publish_and_write(
        self, conn: asyncpg.Connection, messages: list[Message], rows: list[SubjectRow],
        table: str = "projector.subjects",
    ) -> int:
        """Publish, write the rows while the broker acknowledges, then wait for every
        acknowledgement; the caller's transaction commits only after that."""
        acknowledged: Awaitable[None] | None = None
        if messages:
            assert self.publisher is not None
            acknowledged = await self.publisher.send(messages)
        try:
            await upsert_subject_rows(conn, rows, table=table)
        finally:
            if acknowledged is not None:
                await acknowledged
        return len(messages)

    # -- tenants ----------------------------------------------------------------------------

    def _decoded(self, record: asyncpg.Record) -> TenantRow:
        cached = self._tenants.get(record[0])
        if cached is not None and cached.version == record[1]:
            return msgspec.structs.replace(cached, reeval_version=record[5],
                                           reeval_after=(record[6], record[7]) if record[6] is not None else None)
        row = tenant_from_record(record)
        self._tenants[row.tenant_id] = row
        return row

    async def _tenant_rows(self, conn: asyncpg.Connection, tenant_ids: set[str]) -> dict[str, TenantRow]:
        records = await conn.fetch(TENANT_SELECT + " WHERE tenant_id = ANY($1::text[])", list(tenant_ids))
        return {r[0]: self._decoded(r) for r in records}

    async def _advance_tenant(
        self, conn: asyncpg.Connection, tenant_id: str, delivered: list[RecordedEvent] | None
    ) -> tuple[TenantRow | None, int, int, bool]:
        """Apply a tenant's delivered events (None: catch up from the ledger) to its row.

        Returns (row, events applied, of which read from the ledger, re-evaluation marked)."""
        record = await conn.fetchrow(TENANT_SELECT + " WHERE tenant_id = $1 FOR UPDATE", tenant_id)
        row = self._decoded(record) if record is not None else None
        version = row.version if row is not None else 0
        stream = tenant_stream(tenant_id)
        gap = 0
        if delivered is None:
            new = await self.store.read_stream(stream, version + 1)
            gap = len(new)
        else:
            by_version = {e.version: e for e in delivered if e.version > version}
            new = [by_version[v] for v in sorted(by_version)]
            if new and new[-1].version - version != len(new):
                new, gap = await self._fill_gaps(new, version)
        if not new:
            return row, 0, 0, False
        state: TenantState | None = row.state if row is not None else None
        terms_version = row.terms_version if row is not None else 0
        for e in new:
            before = state.terms if state is not None else None
            state = apply_tenant(state, e)
            if state.terms != before:
                terms_version = e.version
        assert state is not None
        changed = row is None or terms_version != row.terms_version
        reeval_version = terms_version if changed else (row.reeval_version if row is not None else None)
        after = None if changed else (row.reeval_after if row is not None else None)
        updated = TenantRow(
            tenant_id=tenant_id, version=state.version, last_position=state.last_position, state=state,
            terms_version=terms_version, reeval_version=reeval_version, reeval_after=after,
        )
        await conn.execute(
            "INSERT INTO projector.tenants (tenant_id, version, last_position, state, terms_version, reeval_version,"
            " reeval_after_source, reeval_after_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (tenant_id) DO UPDATE SET version = excluded.version,"
            " last_position = excluded.last_position, state = excluded.state,"
            " terms_version = excluded.terms_version, reeval_version = excluded.reeval_version,"
            " reeval_after_source = excluded.reeval_after_source, reeval_after_ref = excluded.reeval_after_ref",
            tenant_id, updated.version, updated.last_position, encode_tenant(state), terms_version, reeval_version,
            after[0] if after else None, after[1] if after else None,
        )
        self._tenants[tenant_id] = updated
        return updated, len(new), gap, changed

    # -- re-evaluation: term edits, new days, pending publications ------------------------------

    async def reevaluate_pending(self) -> int:
        """Run every pending tenant re-evaluation to its end; returns subjects re-evaluated."""
        self.reeval_wanted.clear()
        ids = await self.pool.fetch(
            "SELECT tenant_id FROM projector.tenants WHERE reeval_version IS NOT NULL ORDER BY tenant_id"
        )
        total = 0
        for r in ids:
            total += await self.reevaluate_tenant(r[0])
        return total

    async def reevaluate_tenant(self, tenant_id: str) -> int:
        """Re-evaluate every subject of the tenant not yet evaluated with its current term
        matrix, in key order, one batch per transaction; publish those that changed."""
        done = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                record = await conn.fetchrow(TENANT_SELECT + " WHERE tenant_id = $1", tenant_id)
                if record is None or record[5] is None:
                    return done
                tenant = self._decoded(record)
                target = tenant.reeval_version
                after = tenant.reeval_after or ("", "")
                records = await conn.fetch(
                    f"SELECT {SUBJECT_SELECT_COLUMNS} FROM projector.subjects s"
                    " WHERE tenant_id = $1 AND (source, customer_ref) > ($2, $3)"
                    " ORDER BY source, customer_ref LIMIT $4 FOR UPDATE",
                    tenant_id, after[0], after[1], self.batch_size,
                )
                rows = [row_from_record(r) for r in records]
                stale = [r for r in rows if r.terms_version < tenant.terms_version]
                done += await self._reevaluate_rows(conn, stale, {tenant_id: tenant}, "terms")
                if len(rows) < self.batch_size:
                    await conn.execute(
                        "UPDATE projector.tenants SET reeval_version = NULL, reeval_after_source = NULL,"
                        " reeval_after_ref = NULL WHERE tenant_id = $1 AND reeval_version = $2",
                        tenant_id, target,
                    )
                    finished = True
                else:
                    await conn.execute(
                        "UPDATE projector.tenants SET reeval_after_source = $3, reeval_after_ref = $4"
                        " WHERE tenant_id = $1 AND reeval_version = $2",
                        tenant_id, target, rows[-1].source, rows[-1].customer_ref,
                    )
                    finished = False
            if finished:
                log.info("projector_tenant_reevaluated", tenant=tenant_id, terms_version=tenant.terms_version,
                         subjects=done)
                return done

    async def reevaluate_rules(self, *, pause: float = 0.0) -> int:
        """Re-evaluate every subject evaluated with another legal rule table than this
        process's (``consent.law.RULES_VERSION``; rows from before the table have ''), in
        key order, one batch per transaction, and publish those whose answer changed: a
        deployment started after a switch date, or with a changed table, leaves no matrix
        on the topic that the law of today contradicts. Runs once when the projector starts
        (services/projector/service.py). ``pause``: seconds between batches, so live events
        get the database in between; rows a live writer holds are skipped (SKIP LOCKED):
        that writer evaluates them with this table anyway. Returns subjects re-evaluated."""
        done = 0
        started = time.perf_counter()
        for attempt in range(20):  # passes: a row skipped under a live writer that then rolled back
            after = ("", "", "")
            while True:
                async with self.pool.acquire() as conn, conn.transaction():
                    records = await conn.fetch(
                        f"SELECT {SUBJECT_SELECT_COLUMNS} FROM projector.subjects s"
                        " WHERE (tenant_id, source, customer_ref) > ($1, $2, $3) AND rules_version <> $4"
                        " ORDER BY tenant_id, source, customer_ref LIMIT $5 FOR UPDATE SKIP LOCKED",
                        *after, RULES_VERSION, self.batch_size,
                    )
                    if records:
                        rows = [row_from_record(r) for r in records]
                        tenants = await self._tenant_rows(conn, {r.tenant_id for r in rows})
                        done += await self._reevaluate_rows(conn, rows, tenants, "rules")
                        after = rows[-1].key
                if len(records) < self.batch_size:
                    break
                if pause:
                    await asyncio.sleep(pause)
            left = await self.pool.fetchval("SELECT count(*) FROM (SELECT 1 FROM projector.subjects"
                                            " WHERE rules_version <> $1 LIMIT 1) s", RULES_VERSION)
            if not left:
                break
            if attempt == 19:  # e.g. an instance of an older version still writing: the next start finishes
                log.warning("projector_rules_reevaluation_incomplete", rules_version=RULES_VERSION)
            else:
                await asyncio.sleep(max(pause, 0.05))
        if done:
            log.info("projector_rules_reevaluated", rules_version=RULES_VERSION, subjects=done,
                     seconds=round(time.perf_counter() - started, 3))
        return done

    async def run_due(self) -> int:
        """Re-evaluate (and publish) the subjects whose matrix changes today with no new
        event: a term lapses, a future-dated invoice starts counting. Returns subjects done."""
        return await self._sweep("next_change <= $1", lambda: (self.clock.today(),), "day")

    async def publish_pending(self) -> int:
        """Publish the subjects whose current matrix is not on the topic (after a rebuild,
        or while the projector ran without a broker)."""
        if self.publisher is None:
            return 0
        return await self._sweep("published_hash IS DISTINCT FROM matrix_hash", lambda: (), "pending")

    async def _sweep(self, where: str, args: Callable[[], tuple[object, ...]], why: str) -> int:
        """Re-evaluate, batch by batch, the rows matching ``where`` (rows another
        transaction holds are skipped: it is evaluating them anyway)."""
        done = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                params = args()
                n = len(params)
                records = await conn.fetch(
                    f"SELECT {SUBJECT_SELECT_COLUMNS} FROM projector.subjects s WHERE {where}"
                    f" ORDER BY tenant_id, source, customer_ref LIMIT ${n + 1} FOR UPDATE SKIP LOCKED",
                    *params, self.batch_size,
                )
                if not records:
                    return done
                rows = [row_from_record(r) for r in records]
                tenants = await self._tenant_rows(conn, {r.tenant_id for r in rows})
                done += await self._reevaluate_rows(conn, rows, tenants, why)
            if len(records) < self.batch_size:
                return done

    async def _reevaluate_rows(
        self, conn: asyncpg.Connection, rows: list[SubjectRow], tenants: dict[str, TenantRow], why: str,
        *, force: bool = False,
    ) -> int:
        if not rows:
            return 0
        today = self.clock.today()
        out: list[SubjectRow] = []
        messages: list[Message] = []
        for row in rows:
            tenant = tenants.get(row.tenant_id)
            fresh = force and tenant is not None and row.evaluated_on == today \
                and row.terms_version == tenant.terms_version
            new_row, message = self._evaluate(decode_state(row.state), tenant, today, row.published_hash,
                                              force=force, current=row if fresh else None)
            if not (fresh and new_row.published_hash == row.published_hash):  # else the row stays as it is
                out.append(new_row)
            if message is not None:
                messages.append(message)
        published = await self._publish_and_write(conn, messages, out)
        self.metrics.published.inc(published)
        self.metrics.reevaluated.labels(why).inc(len(rows))
        return len(rows)


    # -- the topic lost what was published: republish ------------------------------------------

    async def load_epoch(self, topic: str) -> int:
        """The topic's epoch as stored (another instance may have moved it)."""
        epoch = await self.pool.fetchval("SELECT epoch FROM projector.eligibility_topic WHERE topic = $1", topic)
        self.epoch = max(self.epoch, int(epoch or 0))
        self.metrics.topic_epoch.set(self.epoch)
        return self.epoch

    async def request_republish(self, topic: str, reason: str, *, tenant: str | None = None,
                                acked_ends: Mapping[int, int] | None = None) -> int:
        """Ask for every subject (of ``tenant``: only those) to be published again. A
        whole-topic republish starts a new epoch (and forgets a pending one: it covers
        it); a tenant's republish keeps the epoch. Returns the epoch it publishes with."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO projector.eligibility_topic (topic) VALUES ($1) ON CONFLICT DO NOTHING",
                               topic)
            row = await conn.fetchrow("SELECT epoch, republish_epoch, republish_tenant FROM projector.eligibility_topic"
                                      " WHERE topic = $1 FOR UPDATE", topic)
            epoch = row[0]
            if tenant is None:
                epoch += 1
            elif row[1] is not None and row[2] is None:
                return int(row[1])  # a whole-topic republish is pending: it covers this tenant
            await conn.execute(
                "UPDATE projector.eligibility_topic SET epoch = $2, republish_epoch = $2, republish_tenant = $3,"
                " republish_reason = $4, republish_after_tenant = NULL, republish_after_source = NULL,"
                " republish_after_ref = NULL, republish_done = 0, republish_started_at = now(),"
                " acked_ends = coalesce($5::bigint[], acked_ends) WHERE topic = $1",
                topic, epoch, tenant, reason, _ends_array(acked_ends) if acked_ends is not None else None,
            )
        self.epoch = max(self.epoch, epoch)
        self.metrics.topic_epoch.set(self.epoch)
        log.warning("projector_republish_requested", topic=topic, epoch=epoch, tenant=tenant, reason=reason)
        return int(epoch)

    async def republish_pending(self, topic: str, *, rate: float | None = None,
                                progress_every_s: float = 5.0) -> int:
        """Run the pending republish of ``topic`` (if any) to its end: every subject in key
        order, ``REPUBLISH_BATCH`` per transaction (each row locked, so a live change of the same
        subject waits for at most one batch and reaches the topic after it), at most ``rate``
        subjects a second. A whole-topic republish marks every partition when it starts and
        when it is done. Returns the subjects published; stops early (returns) when another
        request supersedes this one."""
        if self.publisher is None:
            return 0
        # One republisher at a time (the leader's task, `projector republish`): the lock is
        # held on a connection of its own for the whole walk.
        async with self.pool.acquire() as lock:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _REPUBLISH_LOCK):
                return 0
            try:
                return await self._republish(topic, rate=rate, progress_every_s=progress_every_s)
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", _REPUBLISH_LOCK)

    async def _republish(self, topic: str, *, rate: float | None, progress_every_s: float) -> int:
        publisher = self.publisher
        assert publisher is not None
        row = await self.pool.fetchrow(
            "SELECT republish_epoch, republish_tenant, republish_after_tenant, republish_after_source,"
            " republish_after_ref, republish_done FROM projector.eligibility_topic WHERE topic = $1", topic)
        if row is None or row[0] is None:
            return 0
        target, tenant = int(row[0]), row[1]
        after: tuple[str, str, str] = (row[2], row[3], row[4]) if row[2] is not None else ("", "", "")
        done_before = int(row[5])
        self.epoch = max(self.epoch, target)
        markers = getattr(publisher, "send_markers", None)
        total = await self.pool.fetchval(
            "SELECT count(*) FROM projector.subjects WHERE ($1::text IS NULL OR tenant_id = $1)", tenant)
        if tenant is None and done_before == 0 and row[2] is None and markers is not None:
            await markers(target, complete=False, subjects=0, at=self.clock.now())
        log.info("projector_republish_started", topic=topic, epoch=target, tenant=tenant, subjects=total,
                 resumed_after=done_before)
        started = last_log = time.monotonic()
        done = 0
        # Smaller than the other sweeps' batches: a live change of a subject waits for the
        # batch that holds its row, so the batch bounds its extra latency.
        batch = min(self.batch_size, REPUBLISH_BATCH)
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                current = await conn.fetchrow(
                    "SELECT republish_epoch, republish_tenant FROM projector.eligibility_topic WHERE topic = $1"
                    " FOR UPDATE", topic)
                if current is None or current[0] != target or current[1] != tenant:
                    log.info("projector_republish_superseded", topic=topic, epoch=target, published=done)
                    return done
                records = await conn.fetch(
                    f"SELECT {SUBJECT_SELECT_COLUMNS} FROM projector.subjects s"
                    " WHERE (tenant_id, source, customer_ref) > ($1, $2, $3) AND ($4::text IS NULL OR tenant_id = $4)"
                    " ORDER BY tenant_id, source, customer_ref LIMIT $5 FOR UPDATE",
                    after[0], after[1], after[2], tenant, batch,
                )
                rows = [row_from_record(r) for r in records]
                tenants = await self._tenant_rows(conn, {r.tenant_id for r in rows}) if rows else {}
                done += await self._reevaluate_rows(conn, rows, tenants, "republish", force=True)
                self.metrics.republished.inc(len(rows))
                finished = len(rows) < batch
                if rows:
                    after = rows[-1].key
                if finished:
                    if tenant is None and markers is not None:
                        await markers(target, complete=True, subjects=done_before + done, at=self.clock.now())
                    await conn.execute(
                        "UPDATE projector.eligibility_topic SET republish_epoch = NULL, republish_tenant = NULL,"
                        " republish_after_tenant = NULL, republish_after_source = NULL, republish_after_ref = NULL,"
                        " republish_done = $2, republished_at = now() WHERE topic = $1", topic, done_before + done)
                else:
                    await conn.execute(
                        "UPDATE projector.eligibility_topic SET republish_after_tenant = $2,"
                        " republish_after_source = $3, republish_after_ref = $4, republish_done = $5"
                        " WHERE topic = $1", topic, after[0], after[1], after[2], done_before + done)
            elapsed = time.monotonic() - started
            self.metrics.republish_remaining.set(0 if finished else max(0, total - done_before - done))
            if finished:
                log.info("projector_republished", topic=topic, epoch=target, tenant=tenant,
                         subjects=done_before + done, seconds=round(elapsed, 2),
                         subjects_per_s=round(done / elapsed) if elapsed else None)
                return done
            if time.monotonic() - last_log >= progress_every_s:
                last_log = time.monotonic()
                log.info("projector_republish_progress", topic=topic, epoch=target, published=done_before + done,
                         of=total, subjects_per_s=round(done / elapsed) if elapsed else None)
            # The throttle; and, unthrottled, a turn for the live changes waiting on these rows.
            await asyncio.sleep(max(0.0, done / rate - elapsed) if rate else 0)


def _ends_array(ends: Mapping[int, int]) -> list[int]:
    """Per-partition end offsets as a PostgreSQL array (index p + 1 = partition p)."""
    return [ends.get(p, 0) for p in range(max(ends) + 1)] if ends else []


async def apply_until_caught_up(projection: Projection, *, batch: int = 2000,
                                after: Mapping[int, int] | None = None) -> dict[int, int]:
    """Apply the whole ledger from the event store (no Kafka): for tests and tools, every
    log partition after its position in ``after`` (none: from the start). Returns the
    last position applied per partition."""
    positions = dict(after or {})
    while True:
        events = await projection.store.read_partitions(positions, batch)
        if not events:
            return positions
        await projection.apply(events)
        for e in events:
            positions[e.partition] = e.position


__all__ = ["ApplyResult", "OutOfOrderEvent", "Projection", "apply_until_caught_up"]
