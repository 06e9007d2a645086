"""The as-of view, policy history and receipts as pure functions over built histories."""

from __future__ import annotations

import datetime as dt

import pytest

from services.audit.asof import compare_with_now, explain_as_of
from services.audit.errors import AuditError
from services.audit.loading import TenantRecord
from services.audit.policy_history import policy_at, policy_by_version, versions
from services.audit.receipts import build_receipt, receipts_from
from consent.terms import ledger_day
from services.audit.times import end_of_dutch_day, parse_known_at, parse_on
from tests.consent_builders import SubjectHistoryBuilder, TenantHistoryBuilder, day, moment


def cell(view, key: str):
    category, channel = key.split(":")
    return next(c for c in view.cells if c.category == category and c.channel == channel)


def test_a_late_recorded_invoice_is_the_difference_between_then_and_now() -> None:
    tenant = TenantHistoryBuilder("acme")
    subject = SubjectHistoryBuilder("acme").invoice("2020-01-10", at="2020-01-10")
    subject.invoice("2023-06-01", at="2024-03-01")  # dated before D, recorded after K
    record = TenantRecord(tenant.events)
    known_at, on = moment("2024-01-15"), day("2024-01-15")

    then = explain_as_of(subject.events, record, known_at, on)
    assert then is not None and then.known_at == known_at and then.on == on
    assert cell(then, "newsletter:email").reason == "term_expired"  # 18 months after 2020-01-10

    comparison = compare_with_now(subject.events, record, known_at, moment("2024-06-01"), on)
    now_cell = cell(comparison.now, "newsletter:email")
    assert now_cell.eligible and now_cell.reason == "soft_opt_in" and now_cell.until == day("2024-12-01")
    changed = {(c.category, c.channel) for c in comparison.changed_cells}
    assert ("newsletter", "email") in changed
    assert [e.facts["invoice_id"] for e in comparison.recorded_after] == ["INV2"]
    assert comparison.then_known_at == known_at and comparison.on == on


def test_each_decision_names_its_events_with_actor_method_and_policy_version() -> None:
    tenant = TenantHistoryBuilder("acme").edit_term("newsletter", "post", 12, at="2021-01-01")
    subject = (
        SubjectHistoryBuilder("acme")
        .invoice("2021-02-01")
        .opt_in("newsletter", "sms", by="staff", method="phone", policy_version="pv-abc", at="2021-03-01")
    )
    view = explain_as_of(subject.events, TenantRecord(tenant.events), moment("2021-06-01"), day("2021-06-01"))
    assert view is not None

    sms = cell(view, "newsletter:sms")
    assert sms.reason == "explicit_consent" and sms.basis == "consent"
    [evidence] = sms.evidence
    assert evidence.event_type == "PreferencesChanged"
    assert evidence.actor.kind == "staff" and evidence.method == "phone" and evidence.policy_version == "pv-abc"
    assert evidence.recorded_at == moment("2021-03-01")
    assert evidence.facts == {"changes": [{"category": "newsletter", "channel": "sms", "value": "opt_in"}]}

    post = cell(view, "newsletter:post")
    assert post.reason == "soft_opt_in" and post.term_months == 12 and post.until == day("2022-02-01")
    assert [e.event_type for e in post.evidence] == ["InvoiceRecorded", "TermMatrixEdited"]
    assert post.evidence[1].facts == {"term_cells": [{"category": "newsletter", "channel": "post", "months": 12}]}


def test_the_matrix_in_force_at_k_is_used_not_a_later_edit() -> None:
    tenant = TenantHistoryBuilder("acme").edit_term("newsletter", "email", 6, at="2022-01-01")
    subject = SubjectHistoryBuilder("acme").invoice("2021-06-01")
    record = TenantRecord(tenant.events)
    before = explain_as_of(subject.events, record, moment("2021-12-01"), day("2021-12-15"))
    after = explain_as_of(subject.events, record, moment("2022-02-01"), day("2021-12-15"))
    assert before is not None and after is not None
    assert cell(before, "newsletter:email").eligible and cell(before, "newsletter:email").term_months == 18
    assert not cell(after, "newsletter:email").eligible and cell(after, "newsletter:email").term_months == 6


def test_an_erased_subject_answers_erased_for_every_cell_but_its_past_stays_explainable() -> None:
    tenant = TenantHistoryBuilder("acme")
    subject = SubjectHistoryBuilder("acme").invoice("2021-01-01").erase(at="2021-05-01")
    record = TenantRecord(tenant.events)
    after = explain_as_of(subject.events, record, moment("2021-06-01"), day("2021-03-01"))
    assert after is not None and after.erased and after.status == "erased"
    assert after.erased_at == moment("2021-05-01")
    assert {c.reason for c in after.cells} == {"erased"}
    assert after.cells[0].evidence[0].event_type == "SubjectErased"
    before = explain_as_of(subject.events, record, moment("2021-04-01"), day("2021-03-01"))
    assert before is not None and not before.erased and cell(before, "newsletter:email").eligible


def test_nothing_known_at_k_gives_no_view_and_a_tenant_not_yet_created_is_a_clear_error() -> None:
    tenant = TenantHistoryBuilder("acme", created_at="2020-01-01")
    subject = SubjectHistoryBuilder("acme").invoice("2021-01-01")
    record = TenantRecord(tenant.events)
    assert explain_as_of(subject.events, record, moment("2020-06-01"), day("2020-06-01")) is None
    with pytest.raises(AuditError) as err:
        policy_at(record, moment("2019-01-01"))
    assert err.value.status == 422 and err.value.field == "known_at"


def test_the_policy_text_at_k_and_by_version_id_has_every_chapter_in_order() -> None:
    tenant = TenantHistoryBuilder("acme")
    first = tenant.state().policy_version
    chapter = tenant.state().chapters[0]
    tenant.edit_chapter(chapter.chapter_id, title="Nieuwe titel", at="2022-01-01")
    record = TenantRecord(tenant.events)

    old = policy_at(record, moment("2021-01-01"))
    new = policy_at(record, moment("2022-02-01"))
    assert old.version_id == first and new.version_id != first
    assert old.chapters[0].title == chapter.title and new.chapters[0].title == "Nieuwe titel"
    assert [c.order for c in new.chapters] == list(range(1, len(new.chapters) + 1))
    assert sum(not c.active for c in old.chapters) == 2 and old.active_chapter_count == len(old.chapters) - 2
    assert policy_by_version(record, first).chapters == old.chapters
    assert [v.version_id for v in versions(record).versions] == [first, new.version_id]
    with pytest.raises(AuditError) as err:
        policy_by_version(record, "pv-nope")
    assert err.value.status == 404


def test_a_receipt_names_controller_purposes_basis_method_policy_and_how_to_withdraw() -> None:
    tenant = TenantHistoryBuilder("acme", name="Autobedrijf Acme")
    version = tenant.state().policy_version
    subject = (
        SubjectHistoryBuilder("acme", "dealer", "C7")
        .invoice("2021-01-01")
        .preferences({"newsletter:email": "opt_in", "sales_campaign:sms": "opt_out"}, policy_version=version)
        .object()
    )
    record = TenantRecord(tenant.events)
    receipts = receipts_from(subject.events, record)
    assert len(receipts) == 2
    prefs, objection = receipts
    assert prefs.pii_controllers[0].pii_controller == "Autobedrijf Acme" and prefs.pii_principal_id == "acme/dealer/C7"
    assert prefs.policy_version == version and prefs.collection_method == "portal"
    assert [(p.category, p.channel, p.preference, p.consent_type) for p in prefs.services[0].purposes] == [
        ("newsletter", "email", "opt_in", "explicit"), ("sales_campaign", "sms", "opt_out", "withdrawn")]
    assert "art. 6(1)(a)" in prefs.services[0].purposes[0].basis
    assert "privacy portal" in prefs.how_to_withdraw and "7(3)" in prefs.how_to_withdraw
    assert prefs.receipt_id == "cr-" + subject.events[1].event_id
    assert objection.services[0].purposes[0].preference == "objection"
    # the same event always gives the same receipt
    again = build_receipt(subject.events[1], tenant.state(), portal_url="https://p.example/?key=abc")
    assert again.receipt_id == prefs.receipt_id and "https://p.example/?key=abc" in again.how_to_withdraw
    with pytest.raises(ValueError):
        build_receipt(subject.events[0], tenant.state())


NOW = dt.datetime(2025, 6, 15, 10, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text", ["2025-06-16T00:00:00Z", "2025-06-17", "2030-01-01T00:00:00+01:00"])
def test_a_knowledge_time_in_the_future_is_refused(text: str) -> None:
    with pytest.raises(AuditError) as err:
        parse_known_at(text, NOW)
    assert (err.value.status, err.value.error, err.value.field) == (422, "known_at_in_future", "known_at")


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "2025-06-01T10:00:00", "0001-01-01T00:00:00+01:00",
                                  "\u0662\u0660\u0662\u0665-01-01"])
def test_an_unreadable_or_ambiguous_knowledge_time_is_refused(text: str) -> None:
    with pytest.raises(AuditError) as err:
        parse_known_at(text, NOW)
    assert err.value.status == 422 and err.value.field == "known_at"


def test_a_date_as_knowledge_time_means_the_end_of_that_dutch_day() -> None:
    assert parse_known_at("2025-06-01", NOW) == dt.datetime(2025, 6, 1, 21, 59, 59, 999999, tzinfo=dt.timezone.utc)
    assert end_of_dutch_day(day("2025-01-10")) == dt.datetime(2025, 1, 10, 22, 59, 59, 999999, tzinfo=dt.timezone.utc)
    assert parse_known_at("2025-06-15", NOW) == NOW  # today: what is known now
    assert parse_known_at(None, NOW) == NOW


def test_the_end_of_a_dutch_day_before_1940_uses_the_amsterdam_time_of_that_day() -> None:
    # Amsterdam Mean Time (+00:19:32) until 1937, then +00:20 (+01:20 in summer) until the occupation
    # on 1940-05-16.
    assert end_of_dutch_day(day("1930-05-03")) == dt.datetime(1930, 5, 3, 23, 40, 27, 999999, tzinfo=dt.timezone.utc)
    assert end_of_dutch_day(day("1939-01-15")) == dt.datetime(1939, 1, 15, 23, 39, 59, 999999, tzinfo=dt.timezone.utc)
    assert end_of_dutch_day(day("1939-06-01")) == dt.datetime(1939, 6, 1, 22, 39, 59, 999999, tzinfo=dt.timezone.utc)
    assert parse_known_at("1900-01-01", NOW) == dt.datetime(1900, 1, 1, 23, 40, 27, 999999, tzinfo=dt.timezone.utc)
    for text in ("1938-12-31", "1940-05-15", "1940-05-16", "1945-09-16", "0001-01-01"):
        k = parse_known_at(text, NOW)
        assert ledger_day(k) == day(text) and ledger_day(k + dt.timedelta(microseconds=1)) != day(text)


def test_the_date_defaults_to_the_day_of_k_and_garbage_is_refused() -> None:
    assert parse_on(None, dt.datetime(2025, 6, 1, 23, 30, tzinfo=dt.timezone.utc)) == day("2025-06-02")
    assert parse_on("2024-02-29", NOW) == day("2024-02-29")
    with pytest.raises(AuditError) as err:
        parse_on("31-12-2024", NOW)
    assert err.value.status == 422 and err.value.field == "on"


def test_the_cached_history_folds_to_exactly_what_fold_subject_gives_at_every_knowledge_time() -> None:
    from consent.subject import fold_subject
    from services.audit.cache import CHECKPOINT, SubjectHistory

    builder = SubjectHistoryBuilder("acme").invoice("2020-01-01", at="2020-01-01")
    for i in range(3 * CHECKPOINT + 5):
        when = dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc) + dt.timedelta(hours=7 * i)
        if i % 17 == 0:
            builder.object(at=when)
        elif i % 17 == 1 and i > 1:
            builder.withdraw_objection(at=when)
        else:
            builder.preferences({"newsletter:email": "opt_in" if i % 2 else "opt_out"}, at=when)
    history = SubjectHistory()
    history.extend(builder.events[:100])
    history.extend(builder.events[50:])  # overlapping re-delivery is ignored
    assert len(history.events) == len(builder.events)
    assert history.state_at(moment("2019-12-31")) is None
    for recorded in builder.events[::7] + builder.events[-1:]:
        for known_at in (recorded.recorded_at, recorded.recorded_at + dt.timedelta(minutes=1)):
            assert history.state_at(known_at) == fold_subject(builder.events, known_at=known_at)
    tenant = TenantRecord(TenantHistoryBuilder("acme").events)
    k = builder.events[150].recorded_at
    assert explain_as_of(history.events, tenant, k, day("2021-01-01"), state=history.state_at(k)) == explain_as_of(
        builder.events, tenant, k, day("2021-01-01"))


@pytest.mark.parametrize("text", ["1899-12-31", "3000-01-01", "9999-12-31"])
def test_a_date_outside_what_a_consent_question_can_be_about_is_refused(text: str) -> None:
    with pytest.raises(AuditError) as err:
        parse_on(text, NOW)
    assert (err.value.status, err.value.field) == (422, "on") and "1900-01-01" in err.value.message
    assert parse_on("2999-12-31", NOW) == day("2999-12-31") and parse_on("1900-01-01", NOW) == day("1900-01-01")


def test_an_audit_of_either_side_of_2026_07_01_names_the_rule_its_source_and_the_events() -> None:
    """"Why did you say yes on 2026-06-30 and no on 2026-07-01?": the rule, its source, the events."""
    from consent.law import RULES_VERSION

    tenant = TenantHistoryBuilder("acme", created_at="2020-01-01")
    subject = SubjectHistoryBuilder("acme").invoice("2026-01-15", at="2026-01-15")
    record = TenantRecord(tenant.events)
    known_at = moment("2026-08-01")
    yes = explain_as_of(subject.events, record, known_at, day("2026-06-30"))
    no = explain_as_of(subject.events, record, known_at, day("2026-07-01"))
    assert yes is not None and no is not None
    assert yes.rules_version == no.rules_version == RULES_VERSION
    before, after = cell(yes, "aftersales_service:phone"), cell(no, "aftersales_service:phone")
    assert (before.eligible, before.reason, before.until, before.law) == (True, "soft_opt_in", day("2026-07-01"), None)
    assert before.requires_objection_offer
    assert (after.eligible, after.reason, after.law) == (False, "consent_required", "nl-telecom-11.7-phone-optin-2026")
    assert [e.event_type for e in after.evidence] == ["InvoiceRecorded"]  # a customer, so the customer rule
    in_force = {r.id: r for r in no.law_in_force}
    assert "36 378" in in_force["nl-telecom-11.7-phone-optin-2026"].source
    assert "nl-gedragscode-telemarketing-2020" in {r.id for r in yes.law_in_force}
    assert "nl-gedragscode-telemarketing-2020" not in in_force
    assert not yes.before_oldest_rule and not no.before_oldest_rule


def test_an_audit_of_a_date_before_the_oldest_rule_uses_the_oldest_rules_and_says_so() -> None:
    tenant = TenantHistoryBuilder("acme", created_at="1989-01-01")
    subject = SubjectHistoryBuilder("acme", start="1989-01-01").invoice("1989-06-01", at="1989-06-01")
    view = explain_as_of(subject.events, TenantRecord(tenant.events), moment("1990-03-01"), day("1990-03-01"))
    assert view is not None and view.before_oldest_rule
    assert {r.id for r in view.law_in_force} == {"nl-telecom-11.7-digital-optin", "nl-telecom-11.7-soft-opt-in",
                                                 "avg-21-objection"}
    phone = cell(view, "aftersales_service:phone")
    assert phone.eligible and phone.law is None  # no statute on calls yet


def test_a_receipt_names_the_rules_version_and_the_law_in_force_on_its_day() -> None:
    from consent.law import RULES_VERSION

    tenant = TenantHistoryBuilder("acme")
    subject = SubjectHistoryBuilder("acme").invoice("2026-01-01").opt_in("aftersales_service", "phone",
                                                                         at="2026-07-02")
    [receipt] = receipts_from(subject.events, TenantRecord(tenant.events))
    assert receipt.rules_version == RULES_VERSION
    assert "nl-telecom-11.7-phone-optin-2026" in receipt.law_in_force
