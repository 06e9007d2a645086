"""The law by send date (consent/law.py, PRODUCT.md "The law by date"): hand-computed answers
on both sides of every switch date, for a customer and a prospect, every channel, with and
without explicit consent, with an opt-out and with an objection; the rule table itself."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from consent.eligibility import Decision, eligibility_matrix, next_change
from consent.law import (
    OLDEST_DATED_RULE,
    RULES,
    RULES_VERSION,
    SWITCH_DATES,
    law_on,
    rules_in_force,
    rules_starting_after,
    rules_version_of,
)
from consent.terms import ALL_CELLS, terms_from_cells
from schemas.events import TermCell
from schemas.law import LegalRule
from schemas.vocabulary import CHANNELS
from tests.consent_builders import SubjectHistoryBuilder

# 120 months in every cell: no term lapses between 2019 and 2029, so only the law moves answers
TERMS = terms_from_cells([TermCell(category=c, channel=h, months=120) for c, h in ALL_CELLS], "ev-terms")
D = dt.date
ONE = dt.timedelta(days=1)

GEDRAGSCODE, POSTFILTER, PHONE_2021, PHONE_2026 = D(2020, 6, 1), D(2021, 4, 1), D(2021, 7, 1), D(2026, 7, 1)
DIGITAL_OPTIN, PHONE_OPTIN_2021, PHONE_OPTIN_2026 = (
    "nl-telecom-11.7-digital-optin", "nl-telecom-11.7-phone-optin-2021", "nl-telecom-11.7-phone-optin-2026")


def test_the_switch_dates_are_those_of_the_table() -> None:
    assert SWITCH_DATES == (GEDRAGSCODE, POSTFILTER, PHONE_2021, PHONE_2026)


def customer() -> SubjectHistoryBuilder:
    return SubjectHistoryBuilder(start="2019-01-01").invoice("2019-01-01", event_id="ev-invoice", at="2019-01-01")


def prospect() -> SubjectHistoryBuilder:
    return SubjectHistoryBuilder(start="2019-01-01").prospect("2019-01-01", event_id="ev-prospect", at="2019-01-01")


# (eligible, reason, law, until, requires_postfilter_check, requires_objection_offer), by hand:
Row = tuple[bool, str, str | None, D | None, bool, bool]
SOFT = D(2029, 1, 1)  # 2019-01-01 + 120 months


def customer_expected(on: D, channel: str) -> Row:
    """A newsletter to a customer invoiced 2019-01-01, nothing else."""
    if channel == "phone":
        if on >= PHONE_2026:
            return (False, "consent_required", PHONE_OPTIN_2026, None, False, False)
        return (True, "soft_opt_in", None, PHONE_2026, False, True)  # the law ends the basis on 2026-07-01
    return (True, "soft_opt_in", None, SOFT, False, True)  # e-mail/SMS/app: Tw 11.7(3); post: AVG 21


def prospect_expected(on: D, channel: str) -> Row:
    """A prospect-category message to a prospect acquired 2019-01-01, nothing else."""
    if channel in ("email", "sms", "app"):
        return (False, "consent_required", DIGITAL_OPTIN, None, False, False)
    if channel == "phone":  # before 2021-07-01 no statute: the product still asks consent (fail closed)
        return (False, "consent_required", PHONE_OPTIN_2021 if on >= PHONE_2021 else None, None, False, False)
    return (True, "prospect_term", None, SOFT, on >= POSTFILTER, True)


def row(decision: Decision) -> Row:
    return (decision.eligible, decision.reason, decision.law, decision.until, decision.requires_postfilter_check,
            decision.requires_objection_offer)


BOTH_SIDES = [day for switch in (GEDRAGSCODE, POSTFILTER, PHONE_2021, PHONE_2026) for day in (switch - ONE, switch)]


@pytest.mark.parametrize("on", BOTH_SIDES, ids=str)
@pytest.mark.parametrize("channel", CHANNELS)
def test_a_customer_without_a_choice_gets_what_the_law_of_the_send_date_allows(on: D, channel: str) -> None:
    matrix = eligibility_matrix(customer().state(), TERMS, on)
    assert row(matrix[f"newsletter:{channel}"]) == customer_expected(on, channel)
    assert not matrix["newsletter:post"].requires_disclosure  # only prospects' letters


@pytest.mark.parametrize("on", BOTH_SIDES, ids=str)
@pytest.mark.parametrize("channel", CHANNELS)
def test_a_prospect_without_a_choice_gets_what_the_law_of_the_send_date_allows(on: D, channel: str) -> None:
    decision = eligibility_matrix(prospect().state(), TERMS, on)[f"prospect:{channel}"]
    assert row(decision) == prospect_expected(on, channel)
    assert decision.requires_disclosure is (channel == "post")


@pytest.mark.parametrize("on", BOTH_SIDES, ids=str)
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("who", ["customer", "prospect"])
def test_explicit_consent_allows_every_channel_on_both_sides_of_every_switch(on: D, channel: str, who: str) -> None:
    category = "newsletter" if who == "customer" else "prospect"
    subject = (customer() if who == "customer" else prospect()).opt_in(category, channel, at="2019-01-02")
    decision = eligibility_matrix(subject.state(), TERMS, on)[f"{category}:{channel}"]
    assert row(decision) == (True, "explicit_consent", None, None, False, False)


@pytest.mark.parametrize("on", BOTH_SIDES, ids=str)
@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("who", ["customer", "prospect"])
def test_an_opt_out_and_an_objection_say_no_whatever_the_law(on: D, channel: str, who: str) -> None:
    category = "newsletter" if who == "customer" else "prospect"
    base = customer if who == "customer" else prospect
    out = eligibility_matrix(base().opt_out(category, channel, at="2019-01-02").state(), TERMS, on)
    assert row(out[f"{category}:{channel}"]) == (False, "opted_out", None, None, False, False)
    objected = eligibility_matrix(base().object(at="2019-01-02").state(), TERMS, on)
    assert row(objected[f"{category}:{channel}"]) == (False, "objected", None, None, False, False)


def test_a_customer_call_lapses_on_the_switch_date_even_with_years_of_term_left() -> None:
    state = customer().state()
    assert next_change(state, TERMS, D(2026, 6, 15)) == PHONE_2026
    assert next_change(state, TERMS, PHONE_2026) == SOFT  # then only the terms


def test_a_switch_date_that_changes_nothing_for_a_subject_is_not_a_change() -> None:
    # the prospect's calls needed consent before and after 2026-07-01: the rule named stays the same
    state = prospect().state()
    assert next_change(state, TERMS, D(2022, 1, 1)) == SOFT


def test_the_postfilter_switch_is_a_change_for_a_prospect_letter() -> None:
    assert next_change(prospect().state(), TERMS, D(2021, 1, 1)) == POSTFILTER


# --- the table -----------------------------------------------------------------------


def test_the_table_holds_the_rows_of_the_product_brief_with_kind_and_source() -> None:
    by_id = {r.id: r for r in RULES}
    assert by_id[PHONE_OPTIN_2021].first_send == PHONE_2021 and by_id[PHONE_OPTIN_2021].kind == "statute"
    assert "35 421" in by_id[PHONE_OPTIN_2021].source
    code = by_id["nl-gedragscode-telemarketing-2020"]
    assert (code.first_send, code.last_send, code.kind, code.max_months) == (GEDRAGSCODE, D(2026, 6, 30), "code", 36)
    phone = by_id[PHONE_OPTIN_2026]
    assert phone.first_send == PHONE_2026 and phone.kind == "statute" and "36 378" in phone.source
    assert set(phone.audiences) == {"customer", "non_customer"} and not phone.confirmed
    assert by_id["nl-code-postfilter-2021"].first_send == POSTFILTER and by_id["nl-code-postfilter-2021"].kind == "code"
    assert by_id["nl-telecom-11.7-soft-opt-in"].first_send is None  # long-standing
    assert all(r.summary_nl and r.summary_en and r.source for r in RULES)


def test_a_code_of_conduct_never_decides_an_answer() -> None:
    for r in RULES:
        if r.kind == "code":
            assert "consent_required" not in r.effects


def test_any_change_to_the_table_is_a_new_rules_version() -> None:
    assert RULES_VERSION == rules_version_of(RULES) and RULES_VERSION.startswith("nl-law-")
    moved = tuple(msgspec.structs.replace(r, first_send=D(2027, 1, 1)) if r.id == PHONE_OPTIN_2026 else r
                  for r in RULES)
    assert rules_version_of(moved) != RULES_VERSION
    reworded = tuple(msgspec.structs.replace(r, source=r.source + ".") if r.id == PHONE_OPTIN_2021 else r
                     for r in RULES)
    assert rules_version_of(reworded) != RULES_VERSION
    extra = (*RULES, LegalRule(id="x", channels=("post",), audiences=("customer",), first_send=D(2030, 1, 1),
                               effects=("objection_offer",), kind="code", source="s", summary_nl="n", summary_en="e"))
    assert rules_version_of(extra) != RULES_VERSION


def test_in_force_and_later_rules_split_the_table_by_date() -> None:
    ids = lambda rules: [r.id for r in rules]  # noqa: E731
    assert PHONE_OPTIN_2026 in ids(rules_starting_after(PHONE_2026 - ONE))
    assert PHONE_OPTIN_2026 not in ids(rules_in_force(PHONE_2026 - ONE))
    assert PHONE_OPTIN_2026 in ids(rules_in_force(PHONE_2026))
    assert rules_starting_after(PHONE_2026) == []
    assert "nl-gedragscode-telemarketing-2020" in ids(rules_in_force(D(2026, 6, 30)))
    assert "nl-gedragscode-telemarketing-2020" not in ids(rules_in_force(PHONE_2026))
    assert OLDEST_DATED_RULE == GEDRAGSCODE
    # before the oldest dated rule: only the long-standing ones
    assert {r.first_send for r in rules_in_force(D(1990, 1, 1))} == {None}


def test_the_lookup_agrees_with_scanning_the_table_on_every_day_from_2019_to_2031() -> None:
    day = D(2019, 1, 1)
    while day <= D(2031, 12, 31):
        for channel in CHANNELS:
            for audience in ("customer", "non_customer"):
                here = [r for r in rules_in_force(day) if channel in r.channels and audience in r.audiences]
                law = law_on(channel, audience, day)
                consent = [r for r in here if "consent_required" in r.effects]
                assert (law.consent_rule is not None) == bool(consent)
                assert law.objection_offer == any("objection_offer" in r.effects for r in here)
                assert law.postfilter_check == any("postfilter_check" in r.effects for r in here)
        day += dt.timedelta(days=7)
