"""The dealer's reach: how many subjects may get a message per (category, channel) today,
in 30 and in 90 days, per data source; and who drops out of reach soon.

Everything here comes from the projector's read model (``projector.subjects``: each
subject's folded state), evaluated with the same pure rule the bulk campaign check uses
(:func:`consent.eligibility.eligibility_matrix`, the 25-cell form of ``evaluate``), for the
tenant's term matrix as the projector holds it. No event is replayed. Whatever the rule
takes into account (terms lapsing, future-dated facts, dated legal rules) is therefore in
these figures too, on the dates the rule says.

Evaluating 100,000 states costs seconds of CPU, far above what a dashboard may take per
view. So each process keeps, per tenant, what one evaluation gave per subject (a bit mask
of the eligible cells on today, +30 and +90 days, and the subject's next change date) and
counts of subjects per (source, mask). A view first asks PostgreSQL for a fingerprint of the
tenant's rows (count and sum of ``last_position``: every new event of a subject raises its
row's position, so any change moves the sum); when it moved, it re-evaluates the rows whose
position is above the highest it has seen (an index range scan), and only if the
fingerprint still differs from its own (a row applied late by the projector, below that
position) reads the (source, ref, position) of every row and re-evaluates those that
changed. A new
Dutch calendar day, another term matrix version or another asked date start over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.eligibility import Decision, eligibility_matrix, evaluate, next_change
from consent.subject import SubjectState
from consent.tenant import TenantState
from consent.terms import ALL_CELLS, TermMatrix, cell_key
from schemas.dealer import LapseEntry
from schemas.vocabulary import CATEGORIES, CHANNELS
from services.projector.readmodel import decode_state, decode_tenant

log = structlog.get_logger(__name__)

__all__ = [
    "HORIZONS",
    "MAX_LAPSE_DAYS",
    "ReachCache",
    "ReachCounts",
    "TenantNotProjected",
]

HORIZONS: Final = (0, 30, 90)
"""Days after the asked date that the dashboard counts."""

MAX_LAPSE_DAYS: Final = 366
"""The longest look-ahead of the lapse list (a year; a longer one is refused)."""

CELL_KEYS: Final = tuple(cell_key(c, h) for c, h in ALL_CELLS)
_BIT: Final = {k: i for i, k in enumerate(CELL_KEYS)}
_N: Final = len(CELL_KEYS)
_YIELD_EVERY: Final = 2_000  # subjects evaluated between two yields to the event loop


class TenantNotProjected(LookupError):
    """The projector has not seen the tenant (yet). A signal, not an answer: the route
    decides between 404 (no such tenant) and 503 ``not_projected_yet``, so it stays outside
    the error family (services/errors.py)."""


def _mask(decisions: dict[str, Decision]) -> int:
    m = 0
    for i, k in enumerate(CELL_KEYS):
        if decisions[k].eligible:
            m |= 1 << i
    return m


class _Entry(msgspec.Struct, gc=False, array_like=True):
    position: int
    source: str
    mask: int  # bits of HORIZONS[0] cells, then HORIZONS[1], ...
    next_change: dt.date | None
    erased: bool


def _evaluate(state: SubjectState, terms: TermMatrix, on: dt.date, days: Sequence[dt.date]) -> tuple[int, dt.date | None]:
    """Eligible cells on each of ``days`` (all >= ``on``) as one mask, and the subject's next
    change after ``on``. The matrix is the same on every day before the next change, so
    only days on or after it are evaluated again."""
    if state.erased is not None:
        return 0, None
    today = eligibility_matrix(state, terms, on)
    change = next_change(state, terms, on, current=today)
    base = _mask(today)
    mask = 0
    for j, day in enumerate(days):
        m = base if change is None or day < change else _mask(eligibility_matrix(state, terms, day))
        mask |= m << (j * _N)
    return mask, change


class ReachCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Eligible subjects per source, date and cell; ``subjects`` per source counts every
    subject that is not erased."""

    tenant_id: str
    on: dt.date
    dates: tuple[dt.date, ...]
    terms_version: int
    subjects: dict[str, int]
    counts: dict[str, list[dict[str, int]]]  # source -> per date -> cell key -> eligible

    def total(self, date_index: int, key: str) -> int:
        return sum(per_date[date_index][key] for per_date in self.counts.values())




class _TenantCache:
    def __init__(self, on: dt.date, terms_version: int, tenant_version: int) -> None:
        self.on = on
        self.terms_version = terms_version
        self.tenant_version = tenant_version
        self.fingerprint: tuple[int, int] | None = None
        self.max_position = 0  # the highest row position seen
        self.position_sum = 0  # of the entries' positions (equals the table's when nothing was missed)
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.by_mask: Counter[tuple[str, int]] = Counter()
        self.live: Counter[str] = Counter()  # subjects not erased, per source
        self.lock = asyncio.Lock()


async def _tenant(conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str) -> tuple[int, int, TenantState]:
    row = await conn.fetchrow(
        "SELECT version, terms_version, state FROM projector.tenants WHERE tenant_id = $1", tenant_id)
    if row is None:
        raise TenantNotProjected(tenant_id)
    return row[0], row[1], decode_tenant(row[2])


class ReachCache:
    """Per process (one per app): the evaluated read model of each tenant asked for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._tenants: dict[str, _TenantCache] = {}
        self._terms: dict[str, tuple[int, TenantState]] = {}

    async def _tenant_state(self, tenant_id: str, row: asyncpg.Record | None = None) -> tuple[int, int, TenantState]:
        if row is None:
            row = await self._pool.fetchrow(
                "SELECT version, terms_version FROM projector.tenants WHERE tenant_id = $1", tenant_id)
        if row is None:
            raise TenantNotProjected(tenant_id)
        cached = self._terms.get(tenant_id)
        if cached is not None and cached[0] == row[0]:
            return row[0], row[1], cached[1]
        version, terms_version, state = await _tenant(self._pool, tenant_id)
        self._terms[tenant_id] = (version, state)
        return version, terms_version, state

    async def counts(self, tenant_id: str, on: dt.date) -> ReachCounts:
        cache, _ = await self._fresh(tenant_id, on)
        dates = tuple(on + dt.timedelta(days=d) for d in HORIZONS)
        counts: dict[str, list[dict[str, int]]] = {}
        for source in sorted(set(cache.live) | {s for s, _ in cache.by_mask}):
            counts[source] = [dict.fromkeys(CELL_KEYS, 0) for _ in HORIZONS]
        for (source, mask), n in cache.by_mask.items():
            if n <= 0 or mask == 0:
                continue
            per_date = counts[source]
            for j in range(len(HORIZONS)):
                bits = (mask >> (j * _N)) & ((1 << _N) - 1)
                cells = per_date[j]
                while bits:
                    low = bits & -bits
                    cells[CELL_KEYS[low.bit_length() - 1]] += n
                    bits ^= low
        return ReachCounts(tenant_id=tenant_id, on=on, dates=dates, terms_version=cache.terms_version,
                           subjects={s: cache.live.get(s, 0) for s in counts}, counts=counts)

    async def campaign(self, tenant_id: str, category: str, channel: str, send_date: dt.date,
                       *, source: str | None = None) -> list[tuple[str, str, Decision]]:
        """(source, ref, decision) of every subject eligible for (category, channel) on
        ``send_date``: each stored state evaluated with exactly the bulk check's call
        (:func:`consent.eligibility.evaluate`). Sorted by source and ref."""
        _, _, tenant = await self._tenant_state(tenant_id)
        terms = tenant.terms
        out: list[tuple[str, str, Decision]] = []
        sql = ("SELECT source, customer_ref, state FROM projector.subjects WHERE tenant_id = $1 AND NOT erased"
               + (" AND source = $2" if source is not None else "") + " ORDER BY source, customer_ref")
        args: list[object] = [tenant_id] + ([source] if source is not None else [])
        async with self._pool.acquire() as conn, conn.transaction():
            cursor = conn.cursor(sql, *args, prefetch=5_000)
            n = 0
            async for src, ref, raw in cursor:
                d = evaluate(decode_state(raw), terms, category, channel, send_date)
                if d.eligible:
                    out.append((src, ref, d))
                n += 1
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        return out

    async def lapses(self, tenant_id: str, on: dt.date, days: int, *, category: str | None = None,
                     channel: str | None = None) -> list[LapseEntry]:
        """Who is eligible on ``on`` and loses that within ``days`` days (``on`` < lapse day
        <= ``on + days``), per cell, optionally for one category and/or channel. Found by
        walking each candidate's change days with the rule, so any reason for a change (a
        term ending, a dated legal rule) counts."""
        if not 1 <= days <= MAX_LAPSE_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_LAPSE_DAYS}")
        cache, tenant = await self._fresh(tenant_id, on)
        end = on + dt.timedelta(days=days)
        wanted = [k for k in CELL_KEYS if (category is None or k.split(":")[0] == category)
                  and (channel is None or k.split(":")[1] == channel)]
        wanted_mask = sum(1 << _BIT[k] for k in wanted)
        candidates = [key for key, e in cache.entries.items()
                      if e.next_change is not None and e.next_change <= end and e.mask & wanted_mask]
        terms = tenant.terms
        out: list[LapseEntry] = []
        for source, ref, state in await self._states(tenant_id, candidates):
            now = eligibility_matrix(state, terms, on)
            open_cells = {k for k in wanted if now[k].eligible}
            day: dt.date | None = on
            current = now
            while open_cells and day is not None:
                day = next_change(state, terms, day, current=current)
                if day is None or day > end:
                    break
                current = eligibility_matrix(state, terms, day)
                for k in sorted(open_cells):
                    if not current[k].eligible:
                        c, h = k.split(":")
                        out.append(LapseEntry(source=source, customer_ref=ref, category=c, channel=h, lapses_on=day,
                                         basis=now[k].basis, reason_after=current[k].reason,
                                         requires_disclosure=now[k].requires_disclosure,
                                         requires_postfilter_check=now[k].requires_postfilter_check,
                                         requires_objection_offer=now[k].requires_objection_offer))
                        open_cells.discard(k)
        out.sort(key=lambda x: (x.lapses_on, x.source, x.customer_ref, CATEGORIES.index(x.category),  # type: ignore[arg-type]
                                CHANNELS.index(x.channel)))  # type: ignore[arg-type]
        return out

    async def _states(self, tenant_id: str, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str, SubjectState]]:
        by_source: dict[str, list[str]] = {}
        for source, ref in keys:
            by_source.setdefault(source, []).append(ref)
        out: list[tuple[str, str, SubjectState]] = []
        for source, refs in by_source.items():
            for r in await self._pool.fetch(
                    "SELECT customer_ref, state FROM projector.subjects WHERE tenant_id = $1 AND source = $2"
                    " AND customer_ref = ANY(string_to_array($3, E'\\n'))", tenant_id, source, "\n".join(refs)):
                out.append((source, r[0], decode_state(r[1])))
        return out

    async def _fresh(self, tenant_id: str, on: dt.date) -> tuple[_TenantCache, TenantState]:
        # One round trip: the tenant's version and the fingerprint of its subject rows (an
        # index-only scan of (tenant_id, last_position) once autovacuum has visited the table).
        row = await self._pool.fetchrow(
            "SELECT t.version, t.terms_version, f.n, f.s FROM projector.tenants t, LATERAL (SELECT count(*) AS n,"
            " coalesce(sum(last_position), 0) AS s FROM projector.subjects WHERE tenant_id = t.tenant_id) f"
            " WHERE t.tenant_id = $1", tenant_id)
        tenant_version, terms_version, tenant = await self._tenant_state(tenant_id, row)
        assert row is not None
        cache = self._tenants.get(tenant_id)
        if cache is None or cache.on != on or cache.terms_version != terms_version:
            cache = _TenantCache(on, terms_version, tenant_version)
            self._tenants[tenant_id] = cache
        async with cache.lock:
            fingerprint = (int(row[2]), int(row[3]))
            if fingerprint != cache.fingerprint:
                if cache.fingerprint is not None:
                    await self._refresh_newer(cache, tenant_id, tenant.terms)
                if (len(cache.entries), cache.position_sum) != fingerprint:
                    await self._refresh(cache, tenant_id, tenant.terms)  # first view, or a row applied late
                cache.fingerprint = fingerprint
        return cache, tenant

    async def _refresh_newer(self, cache: _TenantCache, tenant_id: str, terms: TermMatrix) -> None:
        """Re-evaluate the rows whose position is above any seen: after a few new events,
        a handful of rows through the (tenant_id, last_position) index. A row the projector
        applied late (its position below one seen already) is not among them; the caller
        then sees the fingerprints differ and compares every row."""
        records = await self._pool.fetch(
            "SELECT source, customer_ref, last_position, state FROM projector.subjects WHERE tenant_id = $1"
            " AND last_position > $2", tenant_id, cache.max_position)
        days = [cache.on + dt.timedelta(days=d) for d in HORIZONS]
        for source, ref, position, raw in records:
            self._put(cache, (source, ref), position, decode_state(raw), terms, days)

    def _put(self, cache: _TenantCache, key: tuple[str, str], position: int, state: SubjectState,
             terms: TermMatrix, days: Sequence[dt.date]) -> None:
        self._drop(cache, key)
        source = key[0]
        if state.erased is not None:  # kept only to know its position: counted nowhere
            cache.entries[key] = _Entry(position, source, 0, None, True)
        else:
            mask, change = _evaluate(state, terms, cache.on, days)
            cache.entries[key] = _Entry(position, source, mask, change, False)
            cache.by_mask[(source, mask)] += 1
            cache.live[source] += 1
        cache.position_sum += position
        cache.max_position = max(cache.max_position, position)

    async def _refresh(self, cache: _TenantCache, tenant_id: str, terms: TermMatrix) -> None:
        rows = await self._pool.fetch(
            "SELECT source, customer_ref, last_position FROM projector.subjects WHERE tenant_id = $1", tenant_id)
        seen: set[tuple[str, str]] = set()
        changed: list[tuple[str, str]] = []
        for source, ref, position in rows:
            key = (source, ref)
            seen.add(key)
            e = cache.entries.get(key)
            if e is None or e.position != position:
                changed.append(key)
        for key in [k for k in cache.entries if k not in seen]:  # rows gone (a rebuild without them)
            self._drop(cache, key)
        days = [cache.on + dt.timedelta(days=d) for d in HORIZONS]
        done = 0
        for start in range(0, len(changed), _YIELD_EVERY):
            chunk = changed[start:start + _YIELD_EVERY]
            by_source: dict[str, list[str]] = {}
            for source, ref in chunk:
                by_source.setdefault(source, []).append(ref)
            for source, refs in by_source.items():
                records = await self._pool.fetch(
                    "SELECT customer_ref, last_position, state FROM projector.subjects WHERE tenant_id = $1"
                    " AND source = $2 AND customer_ref = ANY(string_to_array($3, E'\\n'))",
                    tenant_id, source, "\n".join(refs))
                for ref, position, raw in records:
                    self._put(cache, (source, ref), position, decode_state(raw), terms, days)
                    done += 1
            await asyncio.sleep(0)  # let other requests run while a large tenant is evaluated
        if done:
            log.info("reach_evaluated", tenant=tenant_id, subjects=done, on=cache.on.isoformat())

    @staticmethod
    def _drop(cache: _TenantCache, key: tuple[str, str]) -> None:
        old = cache.entries.pop(key, None)
        if old is None:
            return
        cache.position_sum -= old.position
        if old.erased:
            return
        cache.by_mask[(old.source, old.mask)] -= 1
        cache.live[old.source] -= 1

