"""The dealer's own questions on AVG Beheer: reach (dashboard), who lapses soon (with a
recorded CSV export), find a customer, change log.

Figures come from the projector's read model through :mod:`services.projector.reach`
(the same evaluation as the API's ``/reach``), never from replaying events. Pages are
server-rendered HTML; the chart is inline SVG built here, so it works without JavaScript
(and under the portal's CSP, which allows no script and no inline style: the SVG uses
presentation attributes only).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
from aiohttp import web

from schemas.dealer import LapseEntry
from schemas.vocabulary import CATEGORIES, CHANNELS
from services.ledger.subject_keys import parse_master_key
from services.mail.tokens import AnswerLinks
from services.portal.context import MESSAGES, POOL
from services.portal.dealer_words import DealerWords
from services.portal.routes_staff import Staff, staff_page, staff_render
from services.projector.clock import SystemClock
from services.projector.reach import HORIZONS, MAX_LAPSE_DAYS, ReachCache, TenantNotProjected

REACH: Final = web.AppKey("portal_reach", dict)
"""Holds the app's ReachCache under "cache", made on first use (the pool exists only once the
app has started, and an app's state may not change after that)."""

BAR_COLOURS: Final = ("#1f5f8b", "#4f8fbf", "#a3c4dc")  # today, +30, +90: dark to light, AA against white text
LAPSE_PAGE_ROWS: Final = 500
_AMSTERDAM: Final = ZoneInfo("Europe/Amsterdam")


def add_routes(app: web.Application) -> None:
    app[REACH] = {}
    r = app.router
    b = "/beheer/{tenant}"
    r.add_get(b + "/bereik", reach_page)
    r.add_get(b + "/bereik/verloop", lapse_page)
    app[DIRECTORY] = {}
    r.add_get(b + "/klanten/zoeken", search_page)
    r.add_post(b + "/bereik/verloop.csv", lapse_csv)
    r.add_get(b + "/wijzigingen", change_log_page)
    r.add_get(b + "/mailing", mailing_page)
    r.add_post(b + "/mailing.csv", mailing_csv)


def reach_cache(request: web.Request) -> ReachCache:
    holder = request.app[REACH]
    cache = holder.get("cache")
    if cache is None:
        cache = holder["cache"] = ReachCache(request.app[POOL])
    return cache


def today() -> dt.date:
    return SystemClock().today()


def render_dealer(request: web.Request, staff: Staff, template: str, *, nav: str = "reach", status: int = 200,
                  **context: Any) -> web.Response:
    return staff_render(request, staff, template, nav=nav, status=status, d=DealerWords(request[MESSAGES]),
                        **context)


class Bar(msgspec.Struct, frozen=True):
    x: int
    y: int
    width: int
    height: int
    colour: str
    label: str


class Chart(msgspec.Struct, frozen=True):
    width: int
    height: int
    label_width: int
    bars: list[Bar]
    labels: list[tuple[int, str, bool]]  # (y, text, is a category heading)
    ticks: list[tuple[int, str]]  # (x, text)
    legend: list[tuple[int, str, str]]  # (x, colour, text)


def reach_chart(cells: dict[str, dict[str, list[int]]], words: DealerWords, t: Any) -> Chart:
    """Horizontal bars: per category a heading, per channel three bars (today, +30, +90)."""
    label_width, plot_width, bar_h, gap = 190, 420, 7, 8
    top = 34
    peak = max([1] + [n for ch in cells.values() for counts in ch.values() for n in counts])
    step = _nice_step(peak)
    scale_max = step * -(-peak // step)
    bars: list[Bar] = []
    labels: list[tuple[int, str, bool]] = []
    y = top
    names = (words("reach_today"), words("reach_in_30"), words("reach_in_90"))
    for category in CATEGORIES:
        labels.append((y + 11, t.category_admin(category), True))
        y += 16
        for channel in CHANNELS:
            counts = cells[category][channel]
            labels.append((y + (bar_h * 3) // 2 + 4, t.channel(channel), False))
            for j, n in enumerate(counts):
                width = round(plot_width * n / scale_max)
                bars.append(Bar(label_width, y + j * bar_h, max(width, 0), bar_h - 1, BAR_COLOURS[j],
                                f"{t.category_admin(category)}, {t.channel(channel)}, {names[j]}: {n}"))
            y += 3 * bar_h + gap
        y += 6
    ticks = [(label_width + round(plot_width * v / scale_max), f"{v:,}".replace(",", "."))
             for v in range(0, scale_max + 1, step)]
    legend = [(label_width + i * 140, BAR_COLOURS[i], names[i]) for i in range(len(HORIZONS))]
    return Chart(width=label_width + plot_width + 40, height=y + 20, label_width=label_width, bars=bars,
                 labels=labels, ticks=ticks, legend=legend)


def _nice_step(peak: int) -> int:
    """A round tick step giving at most about 5 ticks."""
    raw = max(1, peak // 5)
    magnitude = 10 ** (len(str(raw)) - 1)
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


@staff_page()
async def reach_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    from services.projector.routes_reach import report_of

    t = request[MESSAGES]
    words = DealerWords(t)
    source = request.query.get("source", "")
    if source and source not in staff.tenant.data_sources:
        source = ""
    try:
        report = report_of(await reach_cache(request).counts(staff.tenant.tenant_id, today()))
    except TenantNotProjected:
        return render_dealer(request, staff, "reach.html", status=503, error=words("reach_not_ready"), report=None,
                             source=source, chart=None, cells=None, subjects=0)
    if source:
        found = [s for s in report.sources if s.source == source]
        cells = found[0].cells if found else {c: {h: [0, 0, 0] for h in CHANNELS} for c in CATEGORIES}
        subjects = found[0].subjects if found else 0
    else:
        cells, subjects = report.total, report.subjects
    return render_dealer(request, staff, "reach.html", report=report, source=source, cells=cells,
                         subjects=subjects, chart=reach_chart(cells, words, t), categories=CATEGORIES,
                         channels=CHANNELS)


class LapseQuery(msgspec.Struct, frozen=True):
    days: int
    category: str | None
    channel: str | None


def lapse_query(request: web.Request, words: DealerWords) -> LapseQuery | str:
    return lapse_query_from(dict(request.query), words)


async def find_lapses(request: web.Request, staff: Staff, query: LapseQuery, on: dt.date) -> list[LapseEntry]:
    return await reach_cache(request).lapses(staff.tenant.tenant_id, on, query.days, category=query.category,
                                             channel=query.channel)


@staff_page()
async def lapse_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    words = DealerWords(request[MESSAGES])
    query = lapse_query(request, words)
    context: dict[str, Any] = {"categories": CATEGORIES, "channels": CHANNELS, "max_days": MAX_LAPSE_DAYS,
                               "values": {k: request.query.get(k, "") for k in ("days", "category", "channel")},
                               "page_rows": LAPSE_PAGE_ROWS}
    if not context["values"]["days"]:
        context["values"]["days"] = "90"
    if isinstance(query, str):
        return render_dealer(request, staff, "lapses.html", status=422, error=query, lapses=None, **context)
    on = today()
    try:
        lapses = await find_lapses(request, staff, query, on)
    except TenantNotProjected:
        return render_dealer(request, staff, "lapses.html", status=503, error=words("reach_not_ready"),
                             lapses=None, **context)
    return render_dealer(request, staff, "lapses.html", lapses=lapses, on=on, query=query, **context)


# -- find a customer -------------------------------------------------------------------------

DIRECTORY: Final = web.AppKey("portal_directory", dict)


def directory(request: web.Request) -> Any:
    from services.ledger.api.routes_search import make_directory
    from services.portal.context import LEDGER, SETTINGS

    holder = request.app[DIRECTORY]
    found = holder.get("directory")
    if found is None:
        found = holder["directory"] = make_directory(request.app[POOL], request.app[LEDGER], request.app[SETTINGS])
    return found


def answer_links(request: web.Request) -> AnswerLinks:
    """The signed one-click unsubscribe links (made once per process, like the API's)."""
    from services.portal.context import SETTINGS

    holder = request.app[DIRECTORY]
    found = holder.get("links")
    if found is None:
        settings = request.app[SETTINGS]
        found = holder["links"] = AnswerLinks(parse_master_key(settings.master_key or ""), settings.portal_base_url)
    return found


@staff_page()
async def search_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    from services.ledger.api.routes_search import SearchProblem, search_text

    q = request.query.get("q", "")
    results = None
    error = None
    status = 200
    if q.strip():
        try:
            text = search_text({"q": q})
        except SearchProblem as exc:
            error, status = exc.message, 422
        else:
            results = await directory(request).search(staff.tenant.tenant_id, text)
    return render_dealer(request, staff, "search.html", nav="customers", status=status, error=error, q=q,
                         results=results)


# -- recorded exports with contact details ---------------------------------------------------

LAPSE_REQUIRES: Final = ("requires_disclosure", "requires_postfilter_check", "requires_objection_offer")
LAPSE_CONTACT: Final = ("name", "email", "phone", "street", "postcode", "city", "country")
LAPSE_COLUMNS: Final = ("customer_ref", "source", "category", "channel", "lapses_on", "basis", *LAPSE_REQUIRES,
                        *LAPSE_CONTACT)


async def record_export(request: web.Request, staff: Staff, event: Any) -> None:
    """Append the DataExported event (who: the user; when: now) before the file is sent."""
    from services.ledger.store import StreamWrite
    from services.portal.context import LEDGER
    from services.portal.changelog import exports_stream

    await request.app[LEDGER].append_many(staff.ctx(), staff.tenant.tenant_id,
                                          [StreamWrite(exports_stream(staff.tenant.tenant_id), [event])])


def csv_download(text: str, filename: str) -> web.Response:
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _cells(contact: Any, fields: tuple[str, ...]) -> list[str]:
    return [(getattr(contact, f, None) or "") if contact is not None else "" for f in fields]


@staff_page(admin=True)
async def lapse_csv(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    import csv
    import io

    from schemas.events import DataExported

    words = DealerWords(request[MESSAGES])
    query = lapse_query_from(form, words)
    if isinstance(query, str):
        return render_dealer(request, staff, "lapses.html", status=422, error=query, lapses=None,
                             categories=CATEGORIES, channels=CHANNELS, max_days=MAX_LAPSE_DAYS,
                             values={k: form.get(k, "") for k in ("days", "category", "channel")},
                             page_rows=LAPSE_PAGE_ROWS)
    on = today()
    lapses = await find_lapses(request, staff, query, on)
    contacts = await directory(request).contacts_of_tenant(staff.tenant.tenant_id,
                                                           {(x.source, x.customer_ref) for x in lapses})
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(LAPSE_COLUMNS)
    for x in lapses:
        contact = contacts.get((x.source, x.customer_ref))
        writer.writerow([x.customer_ref, x.source, x.category, x.channel, x.lapses_on.isoformat(), x.basis or "",
                         *("true" if getattr(x, f) else "false" for f in LAPSE_REQUIRES),
                         *_cells(contact, LAPSE_CONTACT)])
    await record_export(request, staff, DataExported(export="lapse_list", rows=len(lapses), category=query.category,
                                                     channel=query.channel, days=query.days))
    return csv_download(out.getvalue(), f"vervallend-{staff.tenant.tenant_id}-{on.isoformat()}.csv")


def lapse_query_from(values: dict[str, str], words: DealerWords) -> LapseQuery | str:
    raw = values.get("days", "90").strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LAPSE_DAYS):
        return words("bad_days")
    category = values.get("category") or None
    channel = values.get("channel") or None
    if (category is not None and category not in CATEGORIES) or (channel is not None and channel not in CHANNELS):
        return words("bad_choice")
    return LapseQuery(int(raw), category, channel)


# -- change log ------------------------------------------------------------------------------


@staff_page()
async def change_log_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    from services.portal.context import ACCOUNTS, LEDGER
    from services.portal.changelog import change_log

    t = request[MESSAGES]
    words = DealerWords(t)
    emails = {u.actor_id: u.email for u in await request.app[ACCOUNTS].list_users(staff.tenant.tenant_id)}
    words.users = emails
    entries = await change_log(request.app[LEDGER].store, staff.tenant.tenant_id, words)
    rows = []
    for e in entries:
        who = t(f"who_{e.actor_kind}")
        if e.actor_kind == "staff":
            who += " " + emails.get(e.actor_id, e.actor_id)
        elif e.actor_kind in ("api", "operator", "importer"):
            who += f" ({e.actor_id})"
        rows.append({"entry": e, "who": who, "how": t(f"how_{e.method}"),
                     "when": f"{e.recorded_at.astimezone(_AMSTERDAM):%Y-%m-%d %H:%M}"})
    return render_dealer(request, staff, "changes.html", nav="changes", rows=rows)


# -- mailing export (role "marketing") ---------------------------------------------------------


def _mailing_values(values: Any) -> dict[str, str]:
    return {k: (values.get(k) or "").strip() for k in ("category", "channel", "send_date", "source")}


def _mailing_problem(values: dict[str, str], staff: Staff, words: DealerWords) -> tuple[str, str] | None:
    if values["category"] not in CATEGORIES:
        return "category", words("bad_choice")
    if values["channel"] not in CHANNELS:
        return "channel", words("bad_choice")
    try:
        day = dt.date.fromisoformat(values["send_date"])
    except ValueError:
        return "send_date", words("bad_send_date")
    if not today() <= day <= today() + dt.timedelta(days=MAX_LAPSE_DAYS):
        return "send_date", words("bad_send_date")
    if values["source"] and values["source"] not in staff.tenant.data_sources:
        return "source", words("bad_choice")
    return None


def _mailing_context(values: dict[str, str]) -> dict[str, Any]:
    return {"categories": CATEGORIES, "channels": CHANNELS, "values": values,
            "min_date": today().isoformat(), "max_date": (today() + dt.timedelta(days=MAX_LAPSE_DAYS)).isoformat()}


@staff_page()
async def mailing_page(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    values = _mailing_values(request.query)
    values["send_date"] = values["send_date"] or today().isoformat()
    return render_dealer(request, staff, "mailing.html", nav="reach", **_mailing_context(values))


@staff_page()
async def mailing_csv(request: web.Request, staff: Staff, form: dict[str, str]) -> web.StreamResponse:
    from schemas.events import DataExported
    from services.portal.context import error_page
    from services.portal.mailing import mailing_list

    if staff.user.role != "marketing":  # a role of its own: not even admins export mailing lists
        return error_page(request, 403, "forbidden_title", "forbidden_body")
    words = DealerWords(request[MESSAGES])
    values = _mailing_values(form)
    problem = _mailing_problem(values, staff, words)
    if problem is not None:
        return render_dealer(request, staff, "mailing.html", nav="reach", status=422, error=problem[1],
                             invalid=problem[0], **_mailing_context(values))
    send_date = dt.date.fromisoformat(values["send_date"])
    found = await mailing_list(reach_cache(request), directory(request), answer_links(request), staff.tenant.tenant_id,
                               values["category"], values["channel"], send_date, source=values["source"] or None)
    text = found.csv()
    await record_export(request, staff, DataExported(
        export="mailing_list", rows=len(found.rows), category=values["category"],  # type: ignore[arg-type]
        channel=values["channel"], send_date=send_date, source=values["source"] or None))  # type: ignore[arg-type]
    return csv_download(text, f"mailing-{staff.tenant.tenant_id}-{values['category']}-{values['channel']}-"
                              f"{send_date.isoformat()}.csv")
