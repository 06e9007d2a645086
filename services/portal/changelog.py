"""The dealer's change log: every policy, term, agreement, module, data-source and
retention change, every recorded export, and every account change, with who, when, how
and a readable diff, from the ledger.

The tenant stream is folded event by event (:func:`consent.tenant.apply_tenant`), so
each entry compares the state just before with the state just after: a chapter edit shows
the old and new title and a line diff of the body, a term edit each cell's old and new
months. Exports (``exports/{tenant}``) and account changes (``users/{tenant}``) are read
from their own streams.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from typing import Any, Final

import msgspec

from consent.tenant import TenantState, apply_tenant
from consent.terms import cell_key
from schemas.vocabulary import tenant_stream
from schemas.events import (
    DataExported,
    DataSourceAdded,
    ModuleActivationSet,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    ProcessorAgreementSet,
    RecordedEvent,
    RetentionPolicySet,
    StaffAccountChanged,
    TenantCreated,
    TermMatrixEdited,
)
from services.ledger.store import EventStore

_TAGS: Final = re.compile(r"<[^>]+>")
MAX_DIFF_LINES: Final = 60


def exports_stream(tenant_id: str) -> str:
    return f"exports/{tenant_id}"


def users_stream(tenant_id: str) -> str:
    return f"users/{tenant_id}"


async def record_account_change(ledger: Any, ctx: Any, tenant_id: str, user_id: str, change: str, role: str) -> None:
    from services.ledger.store import StreamWrite

    event = StaffAccountChanged(user_id=user_id, change=change, role=role)  # type: ignore[arg-type]
    await ledger.append_many(ctx, tenant_id, [StreamWrite(users_stream(tenant_id), [event])])


class Entry(msgspec.Struct, kw_only=True):
    position: int
    recorded_at: dt.datetime
    kind: str  # policy, terms, agreement, module, data_source, retention, tenant, export, account
    what: str
    details: list[str]
    diff: list[tuple[str, str]]  # (" ", "+" or "-", text line)
    actor_kind: str
    actor_id: str
    method: str


def _text(html: str) -> list[str]:
    """A chapter body as lines of text for a diff (tags dropped, one block per line)."""
    spaced = re.sub(r"(?i)</(p|li|h3|h4|blockquote)>|<br\s*/?>", "\n", html)
    return [line.strip() for line in _TAGS.sub("", spaced).splitlines() if line.strip()]


def _body_diff(old: str, new: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in difflib.ndiff(_text(old), _text(new)):
        if line[:1] in ("+", "-"):
            out.append((line[0], line[2:]))
    return out[:MAX_DIFF_LINES]


def _chapter(state: TenantState | None, chapter_id: str) -> Any:
    if state is None:
        return None
    for c in state.chapters:
        if c.chapter_id == chapter_id:
            return c
    return None


def describe(before: TenantState | None, after: TenantState, recorded: RecordedEvent, w: Any) -> Entry:
    """One tenant event as an entry; ``w`` gives the words (``w(key, **values)``, dates, cells)."""
    e = recorded.event
    details: list[str] = []
    diff: list[tuple[str, str]] = []
    kind = "policy"
    if isinstance(e, TenantCreated):
        kind, what = "tenant", w("cl_created", name=e.name)
        details = [w("cl_created_details", chapters=len(e.chapters), sources=", ".join(e.data_sources.values()))]
    elif isinstance(e, ProcessorAgreementSet):
        kind = "agreement"
        old = before.processor_agreement_signed if before else False
        what = w("cl_agreement")
        details = [f"{w('yes') if old else w('no')} → {w('yes') if e.signed else w('no')}"
                   + (f" ({w.date(e.signed_on)})" if e.signed_on else "")]
    elif isinstance(e, ModuleActivationSet):
        kind = "module"
        old = before.module_active if before else False
        what = w("cl_module")
        details = [f"{w('yes') if old else w('no')} → {w('yes') if e.active else w('no')}"]
    elif isinstance(e, PolicyChapterAdded):
        what = w("cl_chapter_added", title=e.chapter.title)
        diff = [("+", line) for line in _text(e.chapter.body)][:MAX_DIFF_LINES]
        details = [w("cl_active", value=w("yes") if e.chapter.active else w("no"))]
    elif isinstance(e, PolicyChapterEdited):
        old = _chapter(before, e.chapter_id)
        what = w("cl_chapter_edited", title=e.title)
        if old is not None and old.title != e.title:
            details.append(w("cl_title", old=old.title, new=e.title))
        if old is not None and old.active != e.active:
            details.append(w("cl_active", value=f"{w('yes') if old.active else w('no')} → "
                                                f"{w('yes') if e.active else w('no')}"))
        diff = _body_diff(old.body if old is not None else "", e.body)
        if old is not None and old.body == e.body and not details:
            details.append(w("cl_no_change"))
    elif isinstance(e, PolicyChapterActiveSet):
        old = _chapter(before, e.chapter_id)
        what = w("cl_chapter_active", title=old.title if old else e.chapter_id)
        details = [f"{w('yes') if old and old.active else w('no')} → {w('yes') if e.active else w('no')}"]
    elif isinstance(e, PolicyChapterMoved):
        old = _chapter(before, e.chapter_id)
        index = next((i for i, c in enumerate(before.chapters) if c.chapter_id == e.chapter_id), -1) if before else -1
        what = w("cl_chapter_moved", title=old.title if old else e.chapter_id)
        details = [w("cl_position", old=index + 1, new=e.to_index + 1)]
    elif isinstance(e, PolicyChapterDeleted):
        old = _chapter(before, e.chapter_id)
        what = w("cl_chapter_deleted", title=old.title if old else e.chapter_id)
        if old is not None:
            diff = [("-", line) for line in _text(old.body)][:MAX_DIFF_LINES]
    elif isinstance(e, TermMatrixEdited):
        kind, what = "terms", w("cl_terms")
        for cell in e.cells:
            key = cell_key(cell.category, cell.channel)
            old_months = before.terms.months.get(key, 0) if before else 0
            details.append(w("cl_term_cell", cell=w.cell(cell.category, cell.channel), old=old_months,
                             new=cell.months))
    elif isinstance(e, DataSourceAdded):
        kind, what = "data_source", w("cl_source_added", label=e.label, id=e.source_id)
    elif isinstance(e, RetentionPolicySet):
        kind, what = "retention", w("cl_retention")
        old_y = before.retention_customer_years if before else 7
        old_m = before.retention_prospect_months if before else 3
        details = [w("cl_retention_details", old_y=old_y, new_y=e.customer_years, old_m=old_m, new_m=e.prospect_months)]
    else:
        what = recorded.event_type
    return Entry(position=recorded.position, recorded_at=recorded.recorded_at, kind=kind, what=what,
                 details=details, diff=diff, actor_kind=recorded.metadata.actor.kind,
                 actor_id=recorded.metadata.actor.id, method=recorded.metadata.method)


def describe_export(recorded: RecordedEvent, w: Any) -> Entry:
    e = recorded.event
    assert isinstance(e, DataExported)
    parts = []
    if e.category or e.channel:
        parts.append(w.cell(e.category or "", e.channel or "") if e.category and e.channel else
                     (e.category or e.channel or ""))
    if e.days is not None:
        parts.append(w("cl_export_days", days=e.days))
    if e.send_date is not None:
        parts.append(w("cl_export_send_date", date=w.date(e.send_date)))
    if e.source:
        parts.append(e.source)
    parts.append(w("cl_export_rows", rows=e.rows))
    return Entry(position=recorded.position, recorded_at=recorded.recorded_at, kind="export",
                 what=w(f"cl_export_{e.export}"), details=["; ".join(parts)], diff=[],
                 actor_kind=recorded.metadata.actor.kind, actor_id=recorded.metadata.actor.id,
                 method=recorded.metadata.method)


async def change_log(store: EventStore, tenant_id: str, w: Any) -> list[Entry]:
    """Every entry of the tenant, newest first."""
    entries: list[Entry] = []
    state: TenantState | None = None
    for recorded in await store.read_stream(tenant_stream(tenant_id)):
        after = apply_tenant(state, recorded)
        entries.append(describe(state, after, recorded, w))
        state = after
    for recorded in await store.read_stream(exports_stream(tenant_id)):
        entries.append(describe_export(recorded, w))
    for recorded in await store.read_stream(users_stream(tenant_id)):
        e = recorded.event
        assert isinstance(e, StaffAccountChanged)
        entries.append(Entry(position=recorded.position, recorded_at=recorded.recorded_at, kind="account",
                             what=w(f"cl_account_{e.change}", user=w.user(e.user_id)),
                             details=[w("cl_account_role", role=w(f"role_{e.role}"))] if e.role else [], diff=[],
                             actor_kind=recorded.metadata.actor.kind, actor_id=recorded.metadata.actor.id,
                             method=recorded.metadata.method))
    entries.sort(key=lambda x: x.position, reverse=True)
    return entries
