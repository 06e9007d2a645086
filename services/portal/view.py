"""What the privacy portal shows for one subject, computed from the ledger with the pure
rules in ``consent/`` (never from a projector's read model, never re-implemented here).

The subject's stream is read with :meth:`EventStore.read_stream`, folded with
:func:`consent.subject.fold_subject` and judged with :func:`consent.eligibility.eligibility_matrix`
against the tenant's current term matrix (:class:`consent.tenant.TenantState`), for today's
Dutch calendar day. This module only puts words to the decisions.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable
from typing import Final

import jinja2
import msgspec
from markupsafe import Markup, escape

from consent.eligibility import Decision, eligibility_matrix
from consent.policy import Policy, active_chapters
from consent.subject import (
    SubjectState,
    acquisition_in_effect,
    fold_subject,
    invoice_in_effect,
    objection_in_effect,
    pending_opt_ins,
    preference_in_effect,
)
from consent.tenant import DealerContact, TenantState
from consent.terms import cell_key, ledger_day
from schemas.events import PreferenceSetting, RecordedEvent
from schemas.vocabulary import CATEGORIES, CHANNELS, PREFERENCE_VALUES, subject_stream
from services.errors import LedgerError
from services.ledger.commands import Ledger
from services.portal.messages import Messages
from services.portal.security import sanitise_html

CUSTOMER_CATEGORIES: Final = tuple(c for c in CATEGORIES if c != "prospect")
PROSPECT_CATEGORIES: Final = ("prospect",) + CUSTOMER_CATEGORIES


class ChapterView(msgspec.Struct, frozen=True):
    chapter_id: str
    title: str
    body: Markup  # sanitised again at render time


class CellView(msgspec.Struct, frozen=True):
    category: str
    channel: str
    field: str  # form field name
    label: str  # "Nieuwsbrief per e-mail"
    value: str  # the subject's own choice: default | opt_in | opt_out
    eligible: bool
    badge: str  # "Ja" / "Nee"
    why: str
    state: str = ""  # short, for the portal's grid: "Nu: ja, tot 15 juli 2027"


class CategoryView(msgspec.Struct, frozen=True):
    category: str
    label: str
    cells: list[CellView]


class PortalView(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    tenant_name: str
    source: str
    source_label: str
    customer_ref: str
    policy: Policy  # the dealer's full chapter list; the page shows the active ones
    policy_version: str
    categories: list[CategoryView]
    is_customer: bool
    objected: bool
    objected_since: dt.date | None
    erased: bool
    subject_version: int
    contact: DealerContact | None = None


def field_name(category: str, channel: str) -> str:
    return f"pref.{category}.{channel}"


def today() -> dt.date:
    return ledger_day(dt.datetime.now(dt.timezone.utc))


@functools.lru_cache(maxsize=256)
def policy_fragment(env: jinja2.Environment, chapters: Policy) -> Markup:
    """The policy section's HTML: the active chapters in order, each body sanitised here
    (at render time, whatever was stored). Cached per chapter list: every customer of a
    dealer sees the same text until the dealer edits it."""
    views = [ChapterView(c.chapter_id, c.title, Markup(sanitise_html(c.body))) for c in active_chapters(chapters)]
    return Markup(env.get_template("_policy.html").render(chapters=views))


@functools.lru_cache(maxsize=8)
def _options(lang: str, words: str) -> dict[str, Markup]:
    """The three <option>s of a preference select, per current value, labelled with the
    message ids ``{words}_default`` etc. (pre-rendered: the same for every row of a page)."""
    t = Messages(lang)  # type: ignore[arg-type]
    labels = tuple((value, t(f"{words}_{value}")) for value in ("default", "opt_in", "opt_out"))
    return {
        current: Markup("").join(
            Markup('<option value="{}"{}>{}</option>').format(value, Markup(" selected") if value == current else "",
                                                               label)
            for value, label in labels)
        for current in PREFERENCE_VALUES
    }


def choice_options(lang: str) -> dict[str, Markup]:
    """The <option>s of a settings table row (staff pages)."""
    return _options(lang, "choice")


def explain(decision: Decision, subject: SubjectState, category: str, channel: str, on: dt.date, t: Messages) -> str:
    """The decision in the customer's words, with the dates it rests on."""
    reason = decision.reason
    if reason == "objected":
        fact = objection_in_effect(subject, on)
        return t("why_objected", since=t.date(fact.since if fact else None))
    if reason in ("opted_out", "explicit_consent"):
        pref = preference_in_effect(subject, category, channel, on)
        return t(f"why_{reason}", since=t.date(pref.since if pref else None))
    if reason == "soft_opt_in":
        invoice = invoice_in_effect(subject, on)
        return t("why_soft_opt_in", until=t.date(decision.until), start=t.date(invoice.invoice_date if invoice else None))
    if reason == "prospect_term":
        acquisition = acquisition_in_effect(subject, on)
        return t("why_prospect_term", until=t.date(decision.until),
                 start=t.date(acquisition.acquired_on if acquisition else None))
    if reason == "term_expired" and category == "prospect":
        return t("why_term_expired_prospect")
    return t(f"why_{reason}")


def short_state(decision: Decision, t: Messages) -> str:
    """The cell's state now, in a few words (the grid has no room for the reasons)."""
    return _state_text(t.lang, decision.eligible, decision.until, decision.reason == "opt_in_pending")


@functools.lru_cache(maxsize=4096)
def _state_text(lang: str, eligible: bool, until: dt.date | None, pending: bool) -> str:
    t = Messages(lang)  # type: ignore[arg-type]
    if pending:
        return t("state_pending")
    if eligible:
        if until is None:
            return t("state_yes")
        short = f"{until.day}-{until.month}-{until.year}" if lang == "nl" else f"{until.day}/{until.month}/{until.year}"
        return t("state_yes_until", until=short)
    return t("state_no")


@functools.lru_cache(maxsize=256)
def policy_toc(chapters: Policy) -> Markup:
    """The active chapters' titles as links to them (the portal's summary), per chapter list."""
    return Markup("").join(Markup('<li><a href="#chapter-{}">{}</a></li>').format(c.chapter_id, c.title)
                           for c in active_chapters(chapters))


def build_view(tenant: TenantState, events: list[RecordedEvent], source: str, ref: str, t: Messages,
               on: dt.date | None = None, *, reasons: bool = True) -> PortalView | None:
    """The page's content, or None if the subject has no events. ``reasons``: put each
    decision's full reason in words (``why``; the staff pages show it, the customer's grid
    shows only the short state)."""
    subject = fold_subject(events)
    if subject is None:
        return None
    on = on or today()
    decisions = eligibility_matrix(subject, tenant.terms, on)
    categories = CUSTOMER_CATEGORIES if subject.is_customer else PROSPECT_CATEGORIES
    groups: list[CategoryView] = []
    yes, no = t("yes"), t("no")
    pending = pending_opt_ins(subject) if subject.preferences else {}
    for category in categories:
        cells = []
        for channel in CHANNELS:
            decision = decisions[cell_key(category, channel)]
            cells.append(CellView(
                category=category, channel=channel, field=field_name(category, channel), label=t.cell(category, channel),
                value=subject.preference(category, channel), eligible=decision.eligible,
                badge=yes if decision.eligible else no,
                why=explain(decision, subject, category, channel, on, t) if reasons else "",
                state=t("state_pending") if cell_key(category, channel) in pending else short_state(decision, t),
            ))
        groups.append(CategoryView(category, t.category(category), cells))
    objection = objection_in_effect(subject, on)
    return PortalView(
        tenant_id=tenant.tenant_id, tenant_name=tenant.name, source=source,
        source_label=tenant.data_sources.get(source, source), customer_ref=ref,
        policy=tenant.chapters, policy_version=tenant.policy_version, categories=groups,
        is_customer=subject.is_customer, objected=objection is not None,
        objected_since=objection.since if objection else None, erased=subject.erased is not None,
        subject_version=subject.version, contact=tenant.contact,
    )


def settings_table(view: PortalView, t: Messages, *, editable: bool, idprefix: str = "") -> Markup:
    """The settings tables (one fieldset per category) as HTML.

    Written in Python rather than as a template loop because it is the hot path of the portal
    page (20 rows): every value is escaped with :func:`markupsafe.escape`; the option lists
    are pre-rendered by :func:`choice_options`.
    """
    esc = escape
    options = choice_options(t.lang)
    col_choice = esc(t("col_choice"))
    head = (f'<thead><tr><th scope="col">{esc(t("col_channel"))}</th><th scope="col">{esc(t("col_now"))}</th>'
            + (f'<th scope="col">{col_choice}</th>' if editable else "") + "</tr></thead>")
    out: list[str] = []
    for group in view.categories:
        out.append(f'<fieldset class="category"><legend>{esc(group.label)}</legend><table class="settings">{head}<tbody>')
        for cell in group.cells:
            out.append(_settings_row(cell.label, cell.eligible, cell.badge, cell.why, cell.field, cell.value,
                                     editable, idprefix, col_choice, options[cell.value]))
        out.append("</tbody></table></fieldset>")
    return Markup("\n".join(out))


@functools.lru_cache(maxsize=8192)
def _settings_row(label: str, eligible: bool, badge: str, why: str, field: str, value: str, editable: bool,
                  idprefix: str, col_choice: str, options: str) -> str:
    """One row of :func:`settings_table`, escaped. Memoised on everything it shows: most rows
    of most pages are alike (same cell, same reason, same dates), and escaping 20 rows was a
    tenth of a page's CPU."""
    esc = escape
    label_html = esc(label)
    state = "yes" if eligible else "no"
    row = (f'<tr><th scope="row">{label_html}</th><td class="state {state}"><span class="badge">{esc(badge)}'
           f'</span> <span class="why">{esc(why)}</span></td>')
    if editable:
        field_id = esc(idprefix + field)
        row += (f'<td><label class="visually-hidden" for="{field_id}">{label_html}: {col_choice}</label>'
                f'<select id="{field_id}" name="{esc(field)}">{options}</select></td>')
    return row + "</tr>"


def grid_options(lang: str) -> dict[str, Markup]:
    """The <option>s of a customer's settings grid (short labels)."""
    return _options(lang, "pchoice")


def settings_grid(view: PortalView, t: Messages, *, editable: bool, idprefix: str = "") -> Markup:
    """The portal's settings: ONE compact table, a row per kind of message and a column per
    channel; each cell the customer's choice (Ja / Nee / Automatisch) and, below it, the state
    now in a few words. On a phone the CSS turns each row into a short block with one line per
    channel. Each select's label names the cell ("Nieuwsbrief per e-mail: Uw keuze"), visible
    on a phone, for screen readers only on a wide screen (there the column heading shows it)."""
    esc = escape
    options = grid_options(t.lang)
    col_choice = str(esc(t("col_choice")))
    head = [f'<th scope="col">{esc(t("col_category"))}</th>']
    head += [f'<th scope="col">{esc(t.channel(channel))}</th>' for channel in CHANNELS]
    out = [f'<table class="grid"><thead><tr>{"".join(head)}</tr></thead><tbody>']
    for group in view.categories:
        out.append(f'<tr><th scope="row">{esc(group.label)}</th>')
        for cell in group.cells:
            out.append(_grid_cell(cell.label, t.channel(cell.channel), cell.eligible, cell.state, cell.field,
                                  editable, idprefix, col_choice, options[cell.value]))
        out.append("</tr>")
    out.append("</tbody></table>")
    return Markup("".join(out))


@functools.lru_cache(maxsize=8192)
def _grid_cell(label: str, channel: str, eligible: bool, state: str, field: str, editable: bool, idprefix: str,
               col_choice: str, options: str) -> str:
    esc = escape
    state_class = "yes" if eligible else "no"
    if editable:
        field_id = esc(idprefix + field)
        control = (f'<label for="{field_id}"><span class="channel-name">{esc(channel)}</span>'
                   f'<span class="visually-hidden">{esc(label)}: {col_choice}</span></label>'
                   f'<select id="{field_id}" name="{esc(field)}" aria-describedby="{field_id}-state">{options}</select>')
        return (f'<td>{control}<span class="state {state_class}" id="{field_id}-state">{esc(state)}</span></td>')
    return (f'<td><span class="channel-name">{esc(channel)}</span><span class="visually-hidden">{esc(label)}: </span>'
            f'<span class="state {state_class}">{esc(state)}</span></td>')


class TenantFreshness:
    """How often the portal asks the ledger for a tenant's newer events.

    :meth:`Ledger.tenant` keeps each tenant's folded state and, with ``fresh=True``, reads
    only the events after it: one small query. Customer pages do that at most once per
    ``max_age`` seconds per tenant (edits made through this process's Ledger are seen at
    once: it drops its cache on append; edits through the HTTP API within ``max_age``).
    Staff pages and every save always read fresh.
    """

    def __init__(self, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._checked: dict[str, float] = {}

    async def tenant(self, ledger: Ledger, tenant_id: str, *, fresh: bool = False) -> TenantState | None:
        now = self._clock()
        recent = now - self._checked.get(tenant_id, -1e18) < self.max_age
        found = await ledger.tenant(tenant_id, fresh=fresh or not recent)
        if found is None:
            return None
        if fresh or not recent:
            self._checked[tenant_id] = now
        return found[1]


async def load_view(ledger: Ledger, freshness: TenantFreshness, tenant_id: str, source: str, ref: str,
                    t: Messages, *, fresh: bool = False, events: list[RecordedEvent] | None = None,
                    ) -> tuple[PortalView, list[RecordedEvent]] | None:
    """Read the tenant (see :class:`TenantFreshness`) and the subject's stream (unless the
    caller read it already, with the link: :meth:`LinkStore.open`); the view."""
    tenant = await freshness.tenant(ledger, tenant_id, fresh=fresh)
    if tenant is None:
        return None
    if events is None:
        events = await ledger.store.read_stream(subject_stream(tenant_id, source, ref))
    view = build_view(tenant, events, source, ref, t, reasons=False)
    return None if view is None else (view, events)


class FormProblem(LedgerError, ValueError):
    """A posted preference form that no page of ours could have sent (a 400 page)."""

    status = 400
    error = "validation_error"


def preference_changes(view: PortalView, form: dict[str, str]) -> list[PreferenceSetting]:
    """The cells whose posted value differs from the subject's current choice. Only the
    cells the page showed are considered; a value outside default/opt_in/opt_out is refused."""
    changes: list[PreferenceSetting] = []
    for group in view.categories:
        for cell in group.cells:
            posted = form.get(cell.field)
            if posted is None:
                continue
            if posted not in PREFERENCE_VALUES:
                raise FormProblem(cell.field)
            if posted != cell.value:
                changes.append(PreferenceSetting(category=cell.category, channel=cell.channel, value=posted))  # type: ignore[arg-type]
    return changes
