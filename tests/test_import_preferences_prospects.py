"""DMS import of opt-in settings and prospects: nothing is appended for what the ledger
already says, and a nightly export does not undo a customer's own later choice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg

from schemas.events import Actor, PreferencesChanged, PreferenceSetting, ProspectRegistered
from services.importer.mapping import parse_mapping
from services.ledger.commands import Context, Ledger
from tests.import_support import event_types, open_sealed, run_import, subject_events, write

PREFS = "customer_ref;category;channel;value\n"
PORTAL = Context(Actor(kind="subject", id="subject"), method="portal")


async def test_opt_in_settings_of_one_customer_become_one_preferences_changed_event(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "optin.csv", PREFS + "K1;newsletter;email;opt_in\nK1;sales_campaign;sms;opt_out\n"
                                                "K2;newsletter;post;default\n")
    summary, rejected = await run_import(ledger, path)
    assert rejected == [] and summary.kind == "preferences"
    assert (summary.recorded, summary.unchanged, summary.events) == (2, 1, 1)  # K2's "default" is no change
    [event] = await subject_events(pool, "K1")
    assert isinstance(event, PreferencesChanged)
    assert (event.method, event.changed_by.kind) == ("import", "importer")
    assert event.changes == [PreferenceSetting(category="newsletter", channel="email", value="opt_in"),
                             PreferenceSetting(category="sales_campaign", channel="sms", value="opt_out")]


async def test_settings_equal_to_the_current_preference_append_nothing(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await ledger.change_preferences(PORTAL, "garage-a", "dealer", "K1",
                                    [PreferenceSetting(category="newsletter", channel="email", value="opt_out")])
    summary, _ = await run_import(ledger, write(tmp_path, "a.csv", PREFS + "K1;newsletter;email;opt_out\n"))
    assert (summary.unchanged, summary.events) == (1, 0)
    again, _ = await run_import(ledger, write(tmp_path, "b.csv", PREFS + "K1;newsletter;email;opt_out\n"))
    assert (again.unchanged, again.events) == (1, 0)
    assert await event_types(pool) == ["PreferencesChanged"]


async def test_a_nightly_export_that_still_says_opt_in_does_not_undo_a_later_portal_opt_out(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    monday = write(tmp_path, "mon.csv", PREFS + "K1;newsletter;email;opt_in\n")
    await run_import(ledger, monday)
    await ledger.change_preferences(PORTAL, "garage-a", "dealer", "K1",
                                    [PreferenceSetting(category="newsletter", channel="email", value="opt_out")])
    tuesday, _ = await run_import(ledger, write(tmp_path, "tue.csv", PREFS + "K1;newsletter;email;opt_in\n"))
    assert (tuesday.kept, tuesday.events) == (1, 0)
    # When the DMS itself changes its value, that is new information and it is applied.
    wednesday, _ = await run_import(ledger, write(tmp_path, "wed.csv", PREFS + "K1;newsletter;email;default\n"))
    assert (wednesday.recorded, wednesday.events) == (1, 1)
    values = [e.changes[0].value for e in await subject_events(pool, "K1")]
    assert values == ["opt_in", "opt_out", "default"]


async def test_a_dms_mapping_translates_dutch_words_and_unknown_words_are_rejected(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    mapping = parse_mapping("""
[preferences.columns]
customer_ref = "Klantnr"
category = "Doelgroep"
channel = "Kanaal"
value = "Toestemming"
[preferences.values]
"" = "ignore"
"?" = "ignore"
""")
    path = write(tmp_path, "p.csv", "Klantnr;Doelgroep;Kanaal;Toestemming\n"
                                    "K1;Nieuwsbrief;E-mail;J\n"          # seed words and J/N built in
                                    "K1;Sales acties;Telefoon;N\n"
                                    "K1;Aftersales acties;SMS;\n"        # mapped to ignore
                                    "K1;Winterbanden;E-mail;J\n"         # no such category
                                    "K1;Nieuwsbrief;Fax;J\n"             # no such channel
                                    "K1;Nieuwsbrief;Post;misschien\n", encoding="cp1252")
    summary, rejected = await run_import(ledger, path, mapping=mapping)
    assert [(r.line, r.field) for r in rejected] == [(5, "Doelgroep"), (6, "Kanaal"), (7, "Toestemming")]
    assert (summary.recorded, summary.ignored, summary.rejected) == (2, 1, 3)
    [event] = await subject_events(pool, "K1")
    assert {(c.category, c.channel, c.value) for c in event.changes} == {
        ("newsletter", "email", "opt_in"), ("sales_campaign", "phone", "opt_out")}


async def test_prospects_are_registered_once_and_again_only_when_their_data_changes(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    header = "customer_ref;acquired_on;how;name;email\n"
    first = write(tmp_path, "a.csv", header + "P1;01-06-2025;beurs Autorai;Els;els@example.nl\n")
    summary, rejected = await run_import(ledger, first)
    assert (summary.kind, summary.recorded, rejected) == ("prospects", 1, [])
    again, _ = await run_import(ledger, first)
    assert (again.unchanged, again.events) == (1, 0)
    moved, _ = await run_import(ledger, write(tmp_path, "b.csv", header + "P1;01-06-2025;beurs Autorai;Els;els@nieuw.nl\n"))
    assert moved.recorded == 1
    events = await subject_events(pool, "P1")
    assert [type(e) for e in events] == [ProspectRegistered, ProspectRegistered]
    assert events[0].acquired_on == dt.date(2025, 6, 1) and events[0].how == "beurs Autorai"
    assert await open_sealed(ledger, "P1", events[1].personal) == {"name": "Els", "email": "els@nieuw.nl"}


async def test_a_json_lines_file_is_read_with_the_same_mapping_and_checks(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = write(tmp_path, "f.jsonl",
                 '{"customer_ref": "K1", "invoice_id": "F1", "invoice_date": "2024-03-05", "email": "a@b.nl"}\n'
                 '\n'
                 '{"customer_ref": 12345, "invoice_id": "F2", "invoice_date": "05-03-2024"}\n'
                 'not json\n'
                 '{"customer_ref": "K3", "invoice_id": "F3", "invoice_date": {"day": 1}}\n')
    summary, rejected = await run_import(ledger, path)
    assert (summary.format, summary.kind, summary.recorded) == ("jsonl", "invoices", 2)
    assert [(r.line, r.field) for r in rejected] == [(4, "(line)"), (5, "invoice_date")]
    assert [type(e).__name__ for e in await subject_events(pool, "12345")] == ["InvoiceRecorded"]


async def test_a_given_on_column_dates_a_setting_from_a_signed_form(
    ledger: Ledger, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Issue 16: a DMS delivery may say when the customer gave a setting; that row becomes
    its own event with given_on, the file line as evidence, and the policy in force then."""
    from consent.eligibility import evaluate
    from consent.subject import fold_subject
    from tests.projector_support import folded_tenant
    from services.ledger.store import EventStore

    today = dt.date.today()
    given = today - dt.timedelta(days=20)
    await ledger.record_invoice(PORTAL, "garage-a", "dealer", "K1", "F1", today - dt.timedelta(days=90))
    body = ("customer_ref;category;channel;value;given_on\n"
            f"K1;newsletter;email;opt_out;{given:%d-%m-%Y}\n"
            "K1;sales_campaign;sms;opt_in;\n"
            f"K2;newsletter;email;opt_out;{today + dt.timedelta(days=3):%d-%m-%Y}\n")
    summary, rejected = await run_import(ledger, write(tmp_path, "voorkeuren (dec).csv", body))
    assert [(r.line, r.field) for r in rejected] == [(4, "given_on")] and "future" in rejected[0].problem
    events = [e for e in await subject_events(pool, "K1") if isinstance(e, PreferencesChanged)]
    undated, dated = events
    assert undated.given_on is None and [c.category for c in undated.changes] == ["sales_campaign"]
    assert dated.given_on == given and dated.evidence_ref == "voorkeuren _dec_.csv:2"
    assert dated.policy_version and dated.policy_version_basis == "in_force"
    store = EventStore(pool)
    state = fold_subject(await store.read_stream("subject/garage-a/dealer/K1"))
    terms = (await folded_tenant(store, "garage-a")).terms
    assert state is not None
    assert evaluate(state, terms, "newsletter", "email", given - dt.timedelta(days=1)).reason == "soft_opt_in"
    assert evaluate(state, terms, "newsletter", "email", given).reason == "opted_out"
