"""The tenant fold and its history (PRODUCT.md, "Domain": an edit applies from the moment
it was recorded, and an as-of query uses the matrix that was in force at that moment)."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from consent.errors import OutOfOrderEvent
from consent.policy import policy_version
from consent.seed import DEFAULT_CHAPTERS
from consent.tenant import TenantHistory, TenantState, apply_tenant, fold_tenant
from schemas.events import InvoiceRecorded, TermMatrixEdited
from tests.consent_builders import TenantHistoryBuilder, day, moment, recorded


def test_a_new_tenant_has_the_seed_policy_terms_and_data_sources() -> None:
    tenant = TenantHistoryBuilder("acme", "Autobedrijf Acme", created_at="2024-01-01")
    state = tenant.state()
    assert state.tenant_id == "acme"
    assert state.name == "Autobedrijf Acme"
    assert state.data_sources == {"dealer": "Dealer", "unknown": "Onbekende bron"}
    assert state.chapters == DEFAULT_CHAPTERS
    assert state.policy_version == policy_version(DEFAULT_CHAPTERS)
    assert state.terms.get("newsletter", "email") == 18
    assert state.terms.evidence("newsletter", "email") == tenant.event_ids[0]
    assert (state.processor_agreement_signed, state.module_active) == (False, False)
    assert (state.retention_customer_years, state.retention_prospect_months) == (7, 3)
    assert state.version == 1


def test_settings_events_update_the_tenant() -> None:
    tenant = (
        TenantHistoryBuilder("acme")
        .processor_agreement(True, "2018-07-20")
        .module(True)
        .retention(customer_years=5, prospect_months=2)
        .add_data_source("regio-west", "Regio West")
        .edit_term("newsletter", "email", 12)
    )
    state = tenant.state()
    assert state.processor_agreement_signed
    assert state.processor_agreement_signed_on == day("2018-07-20")
    assert state.module_active
    assert (state.retention_customer_years, state.retention_prospect_months) == (5, 2)
    assert state.data_sources["regio-west"] == "Regio West"
    assert state.terms.get("newsletter", "email") == 12
    assert state.terms.evidence("newsletter", "email") == tenant.last_event_id
    assert state.version == 6
    assert state.last_event_id == tenant.last_event_id


def test_unsigning_the_processor_agreement_clears_its_date() -> None:
    state = TenantHistoryBuilder().processor_agreement(True, "2018-07-20").processor_agreement(False).state()
    assert not state.processor_agreement_signed
    assert state.processor_agreement_signed_on is None


def test_policy_edits_update_chapters_and_the_version() -> None:
    tenant = TenantHistoryBuilder().set_chapter_active("c07", True)
    state = tenant.state()
    assert state.policy_version == policy_version(state.chapters)
    assert state.policy_version != policy_version(DEFAULT_CHAPTERS)


def test_a_term_edit_between_two_knowledge_times_is_seen_only_after_it_was_recorded() -> None:
    tenant = TenantHistoryBuilder(created_at="2024-01-01").edit_term(
        "newsletter", "email", 6, at="2024-06-01T10:00:00+00:00"
    )
    history = tenant.history()
    before = history.state_at(moment("2024-06-01T09:59:59+00:00"))
    at_the_moment = history.state_at(moment("2024-06-01T10:00:00+00:00"))
    assert before.terms.get("newsletter", "email") == 18
    assert at_the_moment.terms.get("newsletter", "email") == 6
    assert history.terms_at(moment("2030-01-01")).evidence("newsletter", "email") == tenant.last_event_id


def test_a_tenant_did_not_exist_before_it_was_created() -> None:
    history = TenantHistoryBuilder(created_at="2024-01-01").history()
    with pytest.raises(LookupError):
        history.state_at(moment("2023-12-31"))
    with pytest.raises(LookupError):
        _ = TenantHistory().current


def test_the_policy_a_customer_saw_is_found_by_its_version_id() -> None:
    tenant = TenantHistoryBuilder(created_at="2024-01-01")
    seed_version = tenant.state().policy_version
    tenant.edit_chapter("c01", body="<p>Nieuwe tekst.</p>", at="2024-02-01")
    new_version = tenant.state().policy_version
    tenant.edit_term("newsletter", "email", 12, at="2024-03-01")  # not a policy change
    tenant.edit_chapter("c01", body=DEFAULT_CHAPTERS[0].body, at="2024-04-01")  # back to the seed text
    history = tenant.history()

    seen = history.state_by_policy_version(new_version)
    assert seen is not None
    assert seen.chapters[0].body == "<p>Nieuwe tekst.</p>"
    first = history.state_by_policy_version(seed_version)
    assert first is not None and first.version == 1  # first published at creation
    assert history.state_by_policy_version("pv-0000000000000000") is None
    assert [v for v, _, _ in history.policy_versions()] == [seed_version, new_version]
    assert history.current.policy_version == seed_version


def test_history_keeps_one_state_per_event_and_ignores_redelivery() -> None:
    tenant = TenantHistoryBuilder().edit_term("prospect", "post", 2)
    history = tenant.history()
    assert len(history) == 2
    again = history.append(tenant.events[-1])
    assert len(history) == 2
    assert again is history.current


def test_the_fold_rejects_a_gap_a_missing_start_and_a_subject_event() -> None:
    tenant = TenantHistoryBuilder().edit_term("prospect", "post", 2).edit_term("prospect", "post", 1)
    first, _, third = tenant.events
    state = apply_tenant(None, first)
    with pytest.raises(OutOfOrderEvent):
        apply_tenant(state, third)
    with pytest.raises(ValueError, match="starts with TenantCreated"):
        apply_tenant(None, tenant.events[1])
    stray = recorded(
        InvoiceRecorded(invoice_id="I1", invoice_date=dt.date(2024, 1, 1)),
        stream_id="tenant/acme",
        version=2,
        recorded_at="2024-01-02",
    )
    with pytest.raises(ValueError, match="not a tenant event"):
        apply_tenant(state, stray)
    with pytest.raises(ValueError):
        fold_tenant([])


def test_a_term_edit_does_not_copy_the_policy() -> None:
    tenant = TenantHistoryBuilder().edit_term("prospect", "post", 2)
    history = tenant.history()
    before = history.state_at(tenant.events[0].recorded_at)
    assert history.current.chapters is before.chapters  # shared, not copied


def test_tenant_state_round_trips_through_json() -> None:
    state = TenantHistoryBuilder().processor_agreement(True, "2018-07-20").state()
    assert msgspec.json.decode(msgspec.json.encode(state), type=TenantState) == state


def test_apply_tenant_accepts_a_raw_term_edit_envelope() -> None:
    tenant = TenantHistoryBuilder(created_at="2024-01-01")
    edit = recorded(
        TermMatrixEdited(cells=[]),
        stream_id="tenant/acme",
        version=2,
        recorded_at="2024-01-02",
        event_id="ev-empty-edit",
    )
    state = apply_tenant(tenant.state(), edit)
    assert state.terms.months == tenant.state().terms.months
    assert state.last_event_id == "ev-empty-edit"
