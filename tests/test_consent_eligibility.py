"""THE eligibility rule, rule by rule and boundary by boundary (PRODUCT.md, "Eligibility")."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from consent.eligibility import Decision, eligibility_matrix, evaluate, next_change
from consent.subject import SubjectState
from consent.terms import ALL_CELLS, TermMatrix
from tests.consent_builders import SubjectHistoryBuilder, TenantHistoryBuilder, day, moment

TENANT = TenantHistoryBuilder("acme", created_at="2000-01-01", event_id="ev-tenant-created")
TERMS = TENANT.terms  # the seed matrix, every cell set by "ev-tenant-created"


def decide(
    subject: SubjectHistoryBuilder | SubjectState, category: str, channel: str, on: str, terms: TermMatrix = TERMS
) -> Decision:
    state = subject.state() if isinstance(subject, SubjectHistoryBuilder) else subject
    return evaluate(state, terms, category, channel, day(on))


def customer(invoice_date: str, **kwargs: str) -> SubjectHistoryBuilder:
    return SubjectHistoryBuilder().invoice(invoice_date, event_id="ev-invoice", **kwargs)


# --- rule 4: customers within the term ------------------------------------------------


@pytest.mark.parametrize(
    ("invoice_date", "category", "channel", "on", "eligible", "until"),
    [
        # 18 months on digital channels: last eligible day and first lapsed day
        ("2024-01-31", "newsletter", "email", "2025-07-30", True, "2025-07-31"),
        ("2024-01-31", "newsletter", "email", "2025-07-31", False, None),
        ("2024-01-31", "sales_campaign", "sms", "2025-07-30", True, "2025-07-31"),
        ("2024-01-31", "aftersales_campaign", "app", "2025-07-31", False, None),
        # 48 months on post/phone
        ("2024-01-31", "newsletter", "post", "2028-01-30", True, "2028-01-31"),
        ("2024-01-31", "newsletter", "post", "2028-01-31", False, None),
        # phone: the term (2028-01-31) is cut short by the law: from 2026-07-01 only with opt-in
        ("2024-01-31", "sales_campaign", "phone", "2026-06-30", True, "2026-07-01"),
        # aftersales service: 48 everywhere
        ("2024-01-31", "aftersales_service", "email", "2028-01-30", True, "2028-01-31"),
        ("2024-01-31", "aftersales_service", "email", "2028-01-31", False, None),
        # 31st of the month: 2023-08-31 + 18 months = 2025-02-28 (clamped)
        ("2023-08-31", "newsletter", "email", "2025-02-27", True, "2025-02-28"),
        ("2023-08-31", "newsletter", "email", "2025-02-28", False, None),
        # leap day: 2024-02-29 + 48 months = 2028-02-29, + 18 months = 2025-08-29
        ("2024-02-29", "aftersales_service", "sms", "2028-02-28", True, "2028-02-29"),
        ("2024-02-29", "aftersales_service", "sms", "2028-02-29", False, None),
        ("2024-02-29", "newsletter", "email", "2025-08-28", True, "2025-08-29"),
        # the invoice date itself is covered
        ("2024-01-31", "newsletter", "email", "2024-01-31", True, "2025-07-31"),
    ],
)
def test_a_customer_is_eligible_until_the_term_from_the_last_invoice_lapses(
    invoice_date: str, category: str, channel: str, on: str, eligible: bool, until: str | None
) -> None:
    decision = decide(customer(invoice_date), category, channel, on)
    assert decision.eligible is eligible
    assert decision.reason == ("soft_opt_in" if eligible else "term_expired")
    assert decision.until == (day(until) if until else None)
    assert decision.evidence == ("ev-invoice", "ev-tenant-created")
    assert decision.requires_disclosure is False


def test_a_leap_day_invoice_with_a_12_month_term_lapses_on_28_february() -> None:
    tenant = TenantHistoryBuilder("acme", created_at="2000-01-01").edit_term(
        "newsletter", "email", 12, event_id="ev-12"
    )
    subject = customer("2024-02-29")
    last_day = decide(subject, "newsletter", "email", "2025-02-27", tenant.terms)
    lapsed = decide(subject, "newsletter", "email", "2025-02-28", tenant.terms)
    assert (last_day.eligible, last_day.until) == (True, day("2025-02-28"))
    assert (lapsed.eligible, lapsed.reason) == (False, "term_expired")
    assert lapsed.evidence == ("ev-invoice", "ev-12")


@pytest.mark.parametrize(
    ("channel", "basis"),
    [
        ("email", "soft_opt_in"),
        ("sms", "soft_opt_in"),
        ("app", "soft_opt_in"),
        ("post", "legitimate_interest"),
        ("phone", "legitimate_interest"),
    ],
)
def test_the_legal_basis_of_a_customer_within_term_depends_on_the_channel(channel: str, basis: str) -> None:
    decision = decide(customer("2024-01-31"), "newsletter", channel, "2024-06-01")
    assert (decision.eligible, decision.basis, decision.reason) == (True, basis, "soft_opt_in")


def test_a_zero_month_term_never_covers_anything() -> None:
    tenant = TenantHistoryBuilder("acme", created_at="2000-01-01", terms={"newsletter:email": 0})
    decision = decide(customer("2024-01-31"), "newsletter", "email", "2024-01-31", tenant.terms)
    assert (decision.eligible, decision.reason) == (False, "term_expired")


def test_a_term_counts_from_the_last_invoice() -> None:
    subject = customer("2022-01-10").invoice("2024-01-31", event_id="ev-second")
    decision = decide(subject, "newsletter", "email", "2024-06-01")
    assert decision.until == day("2025-07-31")
    assert decision.evidence[0] == "ev-second"


def test_a_term_edit_between_two_evaluations_applies_from_when_it_was_recorded() -> None:
    tenant = TenantHistoryBuilder("acme", created_at="2024-01-01", event_id="ev-created")
    tenant.edit_term("newsletter", "email", 6, at="2024-06-01", event_id="ev-six-months")
    history = tenant.history()
    subject = customer("2024-01-15").state()

    in_may = evaluate(subject, history.state_at(moment("2024-05-01")).terms, "newsletter", "email", day("2024-05-01"))
    in_august = evaluate(
        subject, history.state_at(moment("2024-08-01")).terms, "newsletter", "email", day("2024-08-01")
    )
    assert (in_may.eligible, in_may.until, in_may.evidence) == (True, day("2025-07-15"), ("ev-invoice", "ev-created"))
    assert (in_august.eligible, in_august.reason) == (False, "term_expired")
    assert in_august.evidence == ("ev-invoice", "ev-six-months")


# --- rules 1 to 3: erasure, objection, preferences ------------------------------------


def test_an_opt_out_overrides_a_valid_term() -> None:
    subject = customer("2024-01-31").opt_out("newsletter", "email", at="2024-03-01", event_id="ev-out")
    decision = decide(subject, "newsletter", "email", "2024-03-01")
    assert decision == Decision(eligible=False, basis=None, reason="opted_out", evidence=("ev-out",))
    assert decide(subject, "newsletter", "sms", "2024-03-01").eligible  # other cells unaffected


def test_an_opt_in_overrides_an_expired_term_without_an_end_date() -> None:
    subject = customer("2020-01-31").opt_in("newsletter", "email", at="2024-03-01", event_id="ev-in")
    assert decide(subject, "newsletter", "email", "2024-02-29").reason == "term_expired"
    decision = decide(subject, "newsletter", "email", "2024-03-01")
    assert decision == Decision(
        eligible=True, basis="consent", reason="explicit_consent", until=None, evidence=("ev-in",)
    )
    assert decide(subject, "newsletter", "email", "2099-01-01").eligible  # valid until withdrawn


def test_an_opt_in_also_allows_a_prospect_on_a_digital_channel() -> None:
    subject = (
        SubjectHistoryBuilder().prospect("2024-01-10").opt_in("prospect", "email", at="2024-01-11", event_id="ev-in")
    )
    decision = decide(subject, "prospect", "email", "2024-02-01")
    assert (decision.eligible, decision.basis, decision.reason) == (True, "consent", "explicit_consent")


def test_an_objection_overrides_everything_even_an_opt_in() -> None:
    subject = (
        customer("2024-01-31")
        .opt_in("newsletter", "email", at="2024-02-01")
        .object(at="2024-03-01", event_id="ev-objection")
    )
    for category, channel in ALL_CELLS:
        decision = decide(subject, category, channel, "2024-03-01")
        assert decision == Decision(eligible=False, basis=None, reason="objected", evidence=("ev-objection",))


def test_a_withdrawn_objection_returns_to_the_other_rules() -> None:
    subject = customer("2024-01-31").object(at="2024-02-01").withdraw_objection(at="2024-03-01")
    assert decide(subject, "newsletter", "email", "2024-02-15").reason == "objected"
    assert decide(subject, "newsletter", "email", "2024-03-01").reason == "soft_opt_in"


def test_erasure_wins_over_everything_and_on_every_date() -> None:
    subject = (
        customer("2024-01-31")
        .opt_in("newsletter", "email")
        .object(at="2024-02-01")
        .erase(at="2024-03-01", event_id="ev-erased")
    )
    for on in ("2024-01-31", "2024-03-01", "2030-01-01"):
        decision = decide(subject, "newsletter", "email", on)
        assert decision == Decision(eligible=False, basis=None, reason="erased", evidence=("ev-erased",))


def test_resetting_a_preference_to_default_follows_the_term_again() -> None:
    subject = (
        customer("2024-01-31")
        .opt_out("newsletter", "email", at="2024-02-01")
        .reset("newsletter", "email", at="2024-03-01")
    )
    assert decide(subject, "newsletter", "email", "2024-02-15").reason == "opted_out"
    assert decide(subject, "newsletter", "email", "2024-03-01").reason == "soft_opt_in"


# --- bitemporal: what was in force on the date ----------------------------------------


def test_a_later_opt_out_does_not_make_an_earlier_send_unlawful() -> None:
    subject = customer("2024-01-31").opt_out("newsletter", "email", at="2024-03-01")
    assert decide(subject, "newsletter", "email", "2024-02-29").eligible
    assert not decide(subject, "newsletter", "email", "2024-03-01").eligible


def test_an_opt_in_followed_by_an_opt_out_still_covers_the_days_between() -> None:
    subject = (
        SubjectHistoryBuilder()
        .opt_in("prospect", "email", at="2024-01-01", event_id="ev-in")
        .opt_out("prospect", "email", at="2024-03-01")
    )
    decision = decide(subject, "prospect", "email", "2024-02-01")
    assert (decision.reason, decision.evidence) == ("explicit_consent", ("ev-in",))
    assert decide(subject, "prospect", "email", "2024-03-01").reason == "opted_out"


def test_an_opt_out_counts_from_its_dutch_calendar_day() -> None:
    # 23:30 UTC on 1 March = 00:30 on 2 March in Amsterdam
    subject = customer("2024-01-31").opt_out("newsletter", "email", at="2024-03-01T23:30:00+00:00")
    assert decide(subject, "newsletter", "email", "2024-03-01").eligible
    assert not decide(subject, "newsletter", "email", "2024-03-02").eligible


def test_an_invoice_recorded_late_with_an_earlier_date() -> None:
    subject = (
        SubjectHistoryBuilder()
        .invoice("2024-05-01", event_id="ev-may")
        .invoice("2023-01-10", at="2024-06-01", event_id="ev-late")
    )
    # the last invoice stays May 2024
    now = decide(subject, "newsletter", "email", "2024-06-02")
    assert (now.until, now.evidence[0]) == (day("2025-11-01"), "ev-may")
    # as known now, the subject was a customer in 2023 ...
    in_2023 = decide(subject, "newsletter", "email", "2023-06-01")
    assert (in_2023.eligible, in_2023.until, in_2023.evidence[0]) == (True, day("2024-07-10"), "ev-late")
    # ... but as known before the late invoice was recorded it was not
    known_then = evaluate(subject.state(known_at="2024-05-31"), TERMS, "newsletter", "email", day("2023-06-01"))
    assert known_then.reason == "not_a_customer"


def test_a_future_dated_invoice_counts_from_its_date() -> None:
    subject = SubjectHistoryBuilder().prospect("2024-01-10").invoice("2024-09-01", at="2024-02-01")
    assert decide(subject, "newsletter", "email", "2024-08-31").reason == "not_a_customer"
    assert decide(subject, "newsletter", "email", "2024-09-01").reason == "soft_opt_in"


def test_a_prospect_becomes_a_customer_on_its_first_invoice() -> None:
    subject = (
        SubjectHistoryBuilder()
        .prospect("2024-01-05", event_id="ev-prospect")
        .invoice("2024-02-01", event_id="ev-invoice")
    )
    before = eligibility_matrix(subject.state(), TERMS, day("2024-01-31"))
    after = eligibility_matrix(subject.state(), TERMS, day("2024-02-01"))
    assert before["prospect:post"].reason == "prospect_term"
    assert before["newsletter:email"].reason == "not_a_customer"
    assert after["prospect:post"] == Decision(
        eligible=False, basis=None, reason="not_a_prospect", evidence=("ev-invoice",)
    )
    assert after["newsletter:email"].reason == "soft_opt_in"
    assert after["newsletter:email"].until == day("2025-08-01")


def test_two_data_sources_of_one_customer_are_decided_apart() -> None:
    dealer = (
        SubjectHistoryBuilder("acme", "dealer", "C1")
        .invoice("2024-01-10")
        .opt_out("newsletter", "post", at="2024-02-01")
    )
    unknown = SubjectHistoryBuilder("acme", "unknown", "C1").invoice("2020-01-10")
    assert decide(dealer, "newsletter", "post", "2024-03-01").reason == "opted_out"
    assert decide(unknown, "newsletter", "post", "2024-03-01").reason == "term_expired"  # 2020-01-10 + 48 months
    assert decide(dealer, "newsletter", "email", "2024-03-01").reason == "soft_opt_in"
    assert decide(unknown, "newsletter", "email", "2024-03-01").reason == "term_expired"


# --- rule 5: prospects ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "channel", "on", "eligible", "basis", "reason", "until", "disclosure"),
    [
        ("prospect", "email", "2024-02-01", False, None, "consent_required", None, False),
        ("prospect", "sms", "2024-02-01", False, None, "consent_required", None, False),
        ("prospect", "app", "2024-02-01", False, None, "consent_required", None, False),
        # Bel-me-niet was abolished on 2021-07-01: calling a non-customer needs consent
        ("prospect", "phone", "2024-02-01", False, None, "consent_required", None, False),
        ("prospect", "post", "2024-01-10", True, "legitimate_interest", "prospect_term", "2024-04-10", True),
        ("prospect", "post", "2024-04-09", True, "legitimate_interest", "prospect_term", "2024-04-10", True),
        ("prospect", "post", "2024-04-10", False, None, "term_expired", None, True),
        ("newsletter", "email", "2024-02-01", False, None, "not_a_customer", None, False),
        ("newsletter", "post", "2024-02-01", False, None, "not_a_customer", None, False),
        ("aftersales_service", "phone", "2024-02-01", False, None, "not_a_customer", None, False),
    ],
)
def test_prospect_rules_per_category_and_channel(
    category: str,
    channel: str,
    on: str,
    eligible: bool,
    basis: str | None,
    reason: str,
    until: str | None,
    disclosure: bool,
) -> None:
    subject = SubjectHistoryBuilder().prospect("2024-01-10", event_id="ev-prospect")
    decision = decide(subject, category, channel, on)
    assert decision.eligible is eligible
    assert decision.basis == basis
    assert decision.reason == reason
    assert decision.until == (day(until) if until else None)
    assert decision.requires_disclosure is disclosure
    assert decision.evidence[0] == "ev-prospect"


def test_prospect_post_cites_the_acquisition_and_the_term_cell() -> None:
    decision = decide(
        SubjectHistoryBuilder().prospect("2024-01-10", event_id="ev-prospect"), "prospect", "post", "2024-02-01"
    )
    assert decision.evidence == ("ev-prospect", "ev-tenant-created")


def test_a_customer_is_not_a_prospect_on_any_channel() -> None:
    subject = customer("2024-01-31")
    for channel in ("email", "post", "phone", "sms", "app"):
        assert decide(subject, "prospect", channel, "2024-02-01") == Decision(
            eligible=False, basis=None, reason="not_a_prospect", evidence=("ev-invoice",)
        )


def test_a_prospect_without_an_acquisition_date_cannot_be_mailed_without_consent() -> None:
    subject = SubjectHistoryBuilder().opt_out("newsletter", "email")  # known only by a preference
    decision = decide(subject, "prospect", "post", "2024-02-01")
    assert (decision.eligible, decision.reason, decision.evidence) == (False, "consent_required", ())
    assert decision.requires_disclosure  # any letter to a prospect carries the art. 14 information
    future = SubjectHistoryBuilder().prospect("2024-03-01", at="2024-01-01")
    assert decide(future, "prospect", "post", "2024-02-01").reason == "consent_required"
    assert decide(future, "prospect", "post", "2024-03-01").reason == "prospect_term"


def test_a_newer_acquisition_restarts_the_prospect_term() -> None:
    subject = SubjectHistoryBuilder().prospect("2024-01-10").prospect("2024-05-01", event_id="ev-again")
    assert decide(subject, "prospect", "post", "2024-04-20").reason == "term_expired"
    decision = decide(subject, "prospect", "post", "2024-05-01")
    assert (decision.until, decision.evidence[0]) == (day("2024-08-01"), "ev-again")


def test_only_prospect_post_answers_require_disclosure() -> None:
    for builder in (customer("2024-01-31"), SubjectHistoryBuilder().prospect("2024-01-10")):
        matrix = eligibility_matrix(builder.state(), TERMS, day("2024-02-01"))
        flagged = {key for key, d in matrix.items() if d.requires_disclosure}
        assert flagged <= {"prospect:post"}


# --- the matrix and the next change ---------------------------------------------------


def test_the_matrix_has_all_25_cells_keyed_category_colon_channel() -> None:
    matrix = eligibility_matrix(customer("2024-01-31").state(), TERMS, day("2024-02-01"))
    assert list(matrix) == [f"{c}:{h}" for c, h in ALL_CELLS]
    assert len(matrix) == 25


def test_a_decision_serialises_to_json() -> None:
    decision = decide(customer("2024-01-31"), "newsletter", "email", "2024-02-01")
    data = msgspec.json.encode(decision)
    assert msgspec.json.decode(data) == {
        "eligible": True,
        "basis": "soft_opt_in",
        "reason": "soft_opt_in",
        "until": "2025-07-31",
        "evidence": ["ev-invoice", "ev-tenant-created"],
        "requires_disclosure": False,
        "law": None,
        "requires_postfilter_check": False,
        "requires_objection_offer": True,
    }
    assert msgspec.json.decode(data, type=Decision) == decision


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        ("2024-03-01", "2025-07-31"),  # the digital campaign terms lapse first
        ("2025-07-30", "2025-07-31"),
        ("2025-07-31", "2026-07-01"),  # then phone: the law requires opt-in from 2026-07-01
        ("2026-07-01", "2028-01-31"),  # then post and aftersales service
        ("2028-01-31", None),  # nothing left to lapse
    ],
)
def test_the_next_change_of_a_customer_is_the_next_term_lapse(on: str, expected: str | None) -> None:
    assert next_change(customer("2024-01-31").state(), TERMS, day(on)) == (day(expected) if expected else None)


def test_the_next_change_includes_future_dated_invoices_and_acquisitions() -> None:
    subject = SubjectHistoryBuilder().prospect("2024-01-10").invoice("2024-09-01", at="2024-02-01").state()
    assert next_change(subject, TERMS, day("2024-02-01")) == day("2024-04-10")  # prospect post lapses
    assert next_change(subject, TERMS, day("2024-04-10")) == day("2024-09-01")  # becomes a customer
    future_prospect = SubjectHistoryBuilder().prospect("2024-03-01", at="2024-01-01").state()
    assert next_change(future_prospect, TERMS, day("2024-01-01")) == day("2024-03-01")


def test_the_next_change_of_a_past_date_includes_later_preferences() -> None:
    subject = customer("2024-01-31").opt_out("newsletter", "email", at="2024-03-01").state()
    assert next_change(subject, TERMS, day("2024-02-01")) == day("2024-03-01")


def test_there_is_no_next_change_when_nothing_can_lapse() -> None:
    assert next_change(customer("2024-01-31").erase().state(), TERMS, day("2024-02-01")) is None
    assert next_change(customer("2024-01-31").object().state(), TERMS, day("2024-02-01")) is None
    opted_in = SubjectHistoryBuilder().opt_in("prospect", "email", at="2024-01-01").state()
    assert next_change(opted_in, TERMS, day("2024-02-01")) is None


def test_a_lapse_hidden_behind_opt_outs_is_not_a_change() -> None:
    subject = customer("2024-01-31")
    subject.preferences({f"{c}:{h}": "opt_out" for c, h in ALL_CELLS if h in ("email", "sms", "app")}, at="2024-02-01")
    assert next_change(subject.state(), TERMS, day("2024-03-01")) == day("2026-07-01")  # phone: the law
    assert next_change(subject.state(), TERMS, day("2026-07-01")) == day("2028-01-31")


def test_evaluating_the_same_question_twice_gives_the_same_answer() -> None:
    state = customer("2024-01-31").state()
    on = dt.date(2024, 6, 1)
    assert evaluate(state, TERMS, "newsletter", "email", on) == evaluate(state, TERMS, "newsletter", "email", on)
