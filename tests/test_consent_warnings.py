"""Compliance warnings on the term matrix (PRODUCT.md, compliance notes): shown, never applied."""

from __future__ import annotations

import datetime as dt

import msgspec

from consent.terms import DEFAULT_TERMS, TermMatrix, apply_term_edit
from consent.warnings import compliance_warnings
from schemas.events import TermCell, TermMatrixEdited
from schemas.warnings import ComplianceWarning, Warning


def with_cells(base: TermMatrix, **cells: int) -> TermMatrix:
    edit = TermMatrixEdited(
        cells=[TermCell(category=k.split("__")[0], channel=k.split("__")[1], months=v) for k, v in cells.items()]  # type: ignore[arg-type]
    )
    return apply_term_edit(base, edit, "ev-edit")


TODAY = dt.date(2026, 12, 4)  # the law as it stands (calling customers needs opt-in since 2026-07-01)
BEFORE = dt.date(2026, 6, 30)  # the last day of the Gedragscode Telemarketing's 36 months


def codes(terms: TermMatrix, on: dt.date = TODAY) -> list[tuple[str, str | None, str | None]]:
    return [(w.code, w.category, w.channel) for w in compliance_warnings(terms, on)]


def test_the_seed_matrix_gets_every_compliance_note_of_the_law_in_force_today() -> None:
    assert codes(DEFAULT_TERMS) == [
        ("customer_phone_term_unused", None, "phone"),
        ("soft_opt_in_own_similar_products", "newsletter", None),
        ("soft_opt_in_own_similar_products", "sales_campaign", None),
        ("soft_opt_in_own_similar_products", "aftersales_campaign", None),
        ("prospect_phone_term_unused", "prospect", "phone"),
        ("prospect_digital_term_unused", "prospect", None),
    ]


def test_before_2026_07_01_the_seed_matrix_got_the_telemarketing_code_and_the_coming_opt_in() -> None:
    assert codes(DEFAULT_TERMS, BEFORE) == [
        ("phone_term_above_telemarketing_code", "aftersales_service", "phone"),
        ("phone_term_above_telemarketing_code", "newsletter", "phone"),
        ("phone_term_above_telemarketing_code", "sales_campaign", "phone"),
        ("phone_term_above_telemarketing_code", "aftersales_campaign", "phone"),
        ("customer_phone_opt_in_from", None, "phone"),
        ("soft_opt_in_own_similar_products", "newsletter", None),
        ("soft_opt_in_own_similar_products", "sales_campaign", None),
        ("soft_opt_in_own_similar_products", "aftersales_campaign", None),
        ("prospect_phone_term_unused", "prospect", "phone"),
        ("prospect_digital_term_unused", "prospect", None),
    ]


def test_no_warning_calls_a_rule_that_is_in_force_announced() -> None:
    for on in (BEFORE, TODAY):
        for w in compliance_warnings(DEFAULT_TERMS, on):
            assert "announce" not in w.code and "ngekondigd" not in w.message_nl and "nnounce" not in w.message_en


def test_since_2026_07_01_customer_phone_terms_are_not_used_and_the_note_names_the_statute() -> None:
    note = next(w for w in compliance_warnings(DEFAULT_TERMS, TODAY) if w.code == "customer_phone_term_unused")
    assert note.severity == "warning"
    assert "Sinds 1 juli 2026" in note.message_nl and "36 378" in note.message_nl
    assert "Since 1 July 2026" in note.message_en
    assert "Aftersales service 48" in note.message_nl
    no_calls = with_cells(DEFAULT_TERMS, aftersales_service__phone=0, newsletter__phone=0, sales_campaign__phone=0,
                          aftersales_campaign__phone=0)
    assert "customer_phone_term_unused" not in [c for c, _, _ in codes(no_calls)]


def test_a_phone_term_of_36_months_is_within_the_telemarketing_code_and_37_is_not() -> None:
    terms = with_cells(
        DEFAULT_TERMS,
        aftersales_service__phone=36,
        newsletter__phone=37,
        sales_campaign__phone=0,
        aftersales_campaign__phone=12,
    )
    above = [w for w in compliance_warnings(terms, BEFORE) if w.code == "phone_term_above_telemarketing_code"]
    assert [(w.category, w.severity) for w in above] == [("newsletter", "warning")]
    assert "37 maanden" in above[0].message_nl
    assert "37 months" in above[0].message_en


def test_before_the_switch_the_coming_end_of_calling_customers_without_opt_in_is_informational() -> None:
    note = next(w for w in compliance_warnings(DEFAULT_TERMS, BEFORE) if w.code == "customer_phone_opt_in_from")
    assert note.severity == "info"
    assert "Vanaf 1 juli 2026" in note.message_nl
    assert "From 1 July 2026" in note.message_en
    no_calls = with_cells(
        DEFAULT_TERMS,
        aftersales_service__phone=0,
        newsletter__phone=0,
        sales_campaign__phone=0,
        aftersales_campaign__phone=0,
    )
    assert "customer_phone_opt_in_from" not in [c for c, _, _ in codes(no_calls, BEFORE)]
    # before the Gedragscode Telemarketing 2020 there is no 36-month warning
    assert "phone_term_above_telemarketing_code" not in [c for c, _, _ in codes(DEFAULT_TERMS, dt.date(2020, 5, 31))]


def test_soft_opt_in_notes_name_the_law_the_right_to_object_and_the_channels_in_use() -> None:
    terms = with_cells(
        DEFAULT_TERMS,
        newsletter__sms=0,
        newsletter__app=0,
        sales_campaign__email=0,
        sales_campaign__sms=0,
        sales_campaign__app=0,
    )
    notes = [w for w in compliance_warnings(terms, TODAY) if w.code == "soft_opt_in_own_similar_products"]
    assert [w.category for w in notes] == ["newsletter", "aftersales_campaign"]
    assert "e-mail 18 maanden" in notes[0].message_nl and "SMS" not in notes[0].message_nl.split(")")[0]
    assert "11.7 lid 3" in notes[0].message_nl
    assert "bezwaar" in notes[0].message_nl
    assert "right to object" in notes[0].message_en


def test_prospect_terms_that_are_never_used_are_pointed_out_but_zero_terms_are_not() -> None:
    zeroed = with_cells(DEFAULT_TERMS, prospect__email=0, prospect__sms=0, prospect__app=0, prospect__phone=0)
    assert not [c for c, cat, _ in codes(zeroed) if cat == "prospect"]
    one = with_cells(zeroed, prospect__app=2)
    note = next(w for w in compliance_warnings(one, TODAY) if w.code == "prospect_digital_term_unused")
    assert "app 2 maanden" in note.message_nl
    assert note.severity == "info"


def test_warnings_do_not_change_the_matrix_and_serialise() -> None:
    before = msgspec.json.encode(DEFAULT_TERMS)
    warnings = compliance_warnings(DEFAULT_TERMS, TODAY)
    assert msgspec.json.encode(DEFAULT_TERMS) == before
    assert Warning is ComplianceWarning
    decoded = msgspec.json.decode(msgspec.json.encode(warnings), type=list[ComplianceWarning])
    assert decoded == warnings
    assert all(w.message_nl and w.message_en for w in warnings)


def test_an_empty_matrix_has_no_warnings() -> None:
    assert compliance_warnings(TermMatrix(), TODAY) == []
