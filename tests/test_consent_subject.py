"""The subject fold (PRODUCT.md, "Domain": subject = tenant + data source + customer_ref)."""

from __future__ import annotations

import msgspec
import pytest

from consent.errors import OutOfOrderEvent
from consent.subject import (
    SubjectState,
    acquisition_in_effect,
    apply_subject,
    current_preferences,
    fold_subject,
    invoice_in_effect,
    objection_in_effect,
    preference_in_effect,
)
from schemas.events import TermMatrixEdited
from tests.consent_builders import SubjectHistoryBuilder, day, moment, recorded


def test_the_first_event_names_the_subject_from_its_stream() -> None:
    state = SubjectHistoryBuilder("acme", "unknown", "K-42").invoice("2024-01-31").state()
    assert (state.tenant_id, state.source, state.customer_ref) == ("acme", "unknown", "K-42")
    assert state.key == "acme/unknown/K-42"
    assert state.version == 1


def test_an_invoice_makes_the_subject_a_customer_with_that_last_invoice_date() -> None:
    subject = SubjectHistoryBuilder().invoice("2024-01-31", invoice_id="F1")
    state = subject.state()
    assert state.is_customer
    assert state.last_invoice_on == day("2024-01-31")
    assert state.invoices["F1"].event_id == subject.last_event_id


def test_an_invoice_recorded_late_with_an_earlier_date_does_not_move_the_last_invoice_back() -> None:
    state = (
        SubjectHistoryBuilder()
        .invoice("2024-05-01", invoice_id="F2")
        .invoice("2024-01-10", invoice_id="F1", at="2024-06-01")
        .state()
    )
    assert state.last_invoice_on == day("2024-05-01")
    assert set(state.invoices) == {"F1", "F2"}


def test_a_corrected_invoice_replaces_that_invoices_date() -> None:
    subject = SubjectHistoryBuilder().invoice("2024-01-10", invoice_id="F1").invoice("2024-05-01", invoice_id="F2")
    subject.correct_invoice("F2", "2024-02-01", at="2024-06-01")
    state = subject.state()
    assert state.invoices["F2"].invoice_date == day("2024-02-01")
    assert state.invoices["F2"].event_id == subject.last_event_id
    assert state.last_invoice_on == day("2024-02-01")  # the max after the correction


def test_a_correction_of_an_unknown_invoice_records_it() -> None:
    state = SubjectHistoryBuilder().correct_invoice("F9", "2024-02-01").state()
    assert state.last_invoice_on == day("2024-02-01")


def test_a_prospect_becomes_a_customer_on_its_first_invoice() -> None:
    subject = SubjectHistoryBuilder().prospect("2024-01-05")
    assert not subject.state().is_customer
    subject.invoice("2024-02-01")
    state = subject.state()
    assert state.is_customer
    assert invoice_in_effect(state, day("2024-01-31")) is None  # still a prospect before the invoice date
    assert invoice_in_effect(state, day("2024-02-01")) is not None
    assert acquisition_in_effect(state, day("2024-01-31")) == state.acquisitions[0]
    assert state.acquisition == state.acquisitions[0]


def test_the_invoice_in_effect_is_the_latest_dated_on_or_before_the_day() -> None:
    state = (
        SubjectHistoryBuilder()
        .invoice("2024-01-10", invoice_id="F1")
        .invoice("2024-06-01", invoice_id="F2")
        .invoice("2024-06-01", invoice_id="F3")  # same date, recorded later
        .state()
    )
    assert invoice_in_effect(state, day("2024-01-09")) is None
    assert invoice_in_effect(state, day("2024-05-31")) == state.invoices["F1"]
    assert invoice_in_effect(state, day("2024-06-01")) == state.invoices["F2"]  # first recorded of the tie


def test_preferences_keep_a_short_history_of_changes_per_cell() -> None:
    subject = (
        SubjectHistoryBuilder()
        .opt_in("newsletter", "email", at="2024-01-01", policy_version="pv-aaaaaaaaaaaaaaaa")
        .opt_out("newsletter", "email", at="2024-03-01")
    )
    state = subject.state()
    history = state.preferences["newsletter:email"]
    assert [(p.value, p.effective_on) for p in history] == [
        ("opt_in", day("2024-01-01")),
        ("opt_out", day("2024-03-01")),
    ]
    assert history[0].policy_version == "pv-aaaaaaaaaaaaaaaa"
    assert state.preference("newsletter", "email") == "opt_out"
    assert state.preference("newsletter", "sms") == "default"
    assert current_preferences(state) == {"newsletter:email": "opt_out"}
    in_force = preference_in_effect(state, "newsletter", "email", day("2024-02-15"))
    assert in_force is not None and in_force.value == "opt_in"
    assert preference_in_effect(state, "newsletter", "email", day("2023-12-31")) is None


def test_only_the_last_change_of_a_day_is_kept() -> None:
    state = (
        SubjectHistoryBuilder()
        .opt_in("newsletter", "email", at="2024-01-01T08:00:00+00:00")
        .opt_out("newsletter", "email", at="2024-03-01T08:00:00+00:00")
        .opt_in("newsletter", "email", at="2024-03-01T09:00:00+00:00")
        .state()
    )
    assert [p.value for p in state.preferences["newsletter:email"]] == ["opt_in", "opt_in"]


def test_a_change_takes_effect_on_its_dutch_calendar_day() -> None:
    # 23:30 UTC on 1 March is 00:30 on 2 March in Amsterdam
    state = SubjectHistoryBuilder().opt_out("newsletter", "email", at="2024-03-01T23:30:00+00:00").state()
    assert state.preferences["newsletter:email"][0].effective_on == day("2024-03-02")


def test_objections_are_recorded_and_withdrawn() -> None:
    subject = SubjectHistoryBuilder().object(at="2024-01-01")
    objection_id = subject.last_event_id
    assert subject.state().objected
    assert subject.state().objection is not None
    subject.withdraw_objection(at="2024-04-01")
    state = subject.state()
    assert not state.objected
    assert state.objection is None
    in_force = objection_in_effect(state, day("2024-02-01"))
    assert in_force is not None and in_force.event_id == objection_id
    assert objection_in_effect(state, day("2024-04-01")) is None


def test_erasure_and_marketing_activity_are_remembered() -> None:
    subject = (
        SubjectHistoryBuilder().prospect("2024-01-01").activity("2024-02-01").activity("2024-01-15", at="2024-03-01")
    )
    assert subject.state().last_activity_on == day("2024-02-01")
    subject.erase()
    assert subject.state().erased == subject.last_event_id


def test_a_knowledge_cut_off_ignores_events_recorded_after_it() -> None:
    subject = SubjectHistoryBuilder().invoice("2024-01-10").invoice("2023-06-01", at="2024-06-01")
    before = subject.state(known_at="2024-05-31")
    assert list(before.invoices) == ["INV1"]
    assert before.version == 1
    assert fold_subject(subject.events, known_at=moment("2023-01-01")) is None


def test_two_data_sources_of_one_customer_are_two_subjects() -> None:
    dealer = SubjectHistoryBuilder("acme", "dealer", "C1").invoice("2024-01-10").opt_out("newsletter", "email")
    unknown = SubjectHistoryBuilder("acme", "unknown", "C1").invoice("2020-01-10")
    dealer_state, unknown_state = dealer.state(), unknown.state()
    assert dealer_state.key != unknown_state.key
    assert unknown_state.preference("newsletter", "email") == "default"
    assert unknown_state.last_invoice_on == day("2020-01-10")
    # one stream's events cannot slip into the other's fold
    with pytest.raises(ValueError, match="applied to subject 'acme/unknown/C1'"):
        apply_subject(unknown_state, dealer.events[1])


def test_a_redelivered_event_is_ignored_and_a_gap_is_an_error() -> None:
    subject = SubjectHistoryBuilder().invoice("2024-01-10").invoice("2024-02-10").invoice("2024-03-10")
    first, second, third = subject.events
    state = apply_subject(apply_subject(None, first), second)
    assert apply_subject(state, second) is state
    assert apply_subject(state, first) is state
    with pytest.raises(OutOfOrderEvent):
        apply_subject(apply_subject(None, first), third)
    with pytest.raises(OutOfOrderEvent):
        apply_subject(None, second)


def test_the_fold_rejects_tenant_streams_and_tenant_events() -> None:
    stray = recorded(TermMatrixEdited(cells=[]), stream_id="tenant/acme", version=1, recorded_at="2024-01-01")
    with pytest.raises(ValueError, match="not a subject stream"):
        apply_subject(None, stray)
    in_subject_stream = recorded(
        TermMatrixEdited(cells=[]), stream_id="subject/acme/dealer/C1", version=1, recorded_at="2024-01-01"
    )
    with pytest.raises(ValueError, match="not a subject event"):
        apply_subject(None, in_subject_stream)


def test_subject_state_round_trips_through_json_with_string_keys() -> None:
    state = (
        SubjectHistoryBuilder()
        .prospect("2024-01-01")
        .invoice("2024-01-31")
        .opt_in("newsletter", "email")
        .object()
        .activity("2024-02-01")
        .state()
    )
    data = msgspec.json.encode(state)
    assert b'"newsletter:email"' in data
    assert msgspec.json.decode(data, type=SubjectState) == state
