"""Compliance warnings on the term matrix (PRODUCT.md, compliance notes): shown, never applied."""

from __future__ import annotations

import msgspec

from consent.terms import DEFAULT_TERMS, TermMatrix, apply_term_edit
from consent.warnings import ComplianceWarning, Warning, compliance_warnings
from schemas.events import TermCell, TermMatrixEdited


def with_cells(base: TermMatrix, **cells: int) -> TermMatrix:
    edit = TermMatrixEdited(
        cells=[TermCell(category=k.split("__")[0], channel=k.split("__")[1], months=v) for k, v in cells.items()]  # type: ignore[arg-type]
    )
    return apply_term_edit(base, edit, "ev-edit")


def codes(terms: TermMatrix) -> list[tuple[str, str | None, str | None]]:
    return [(w.code, w.category, w.channel) for w in compliance_warnings(terms)]


def test_the_seed_matrix_gets_every_compliance_note() -> None:
    assert codes(DEFAULT_TERMS) == [
        ("phone_term_above_telemarketing_code", "aftersales_service", "phone"),
        ("phone_term_above_telemarketing_code", "newsletter", "phone"),
        ("phone_term_above_telemarketing_code", "sales_campaign", "phone"),
        ("phone_term_above_telemarketing_code", "aftersales_campaign", "phone"),
        ("customer_calls_opt_in_announced", None, "phone"),
        ("soft_opt_in_own_similar_products", "newsletter", None),
        ("soft_opt_in_own_similar_products", "sales_campaign", None),
        ("soft_opt_in_own_similar_products", "aftersales_campaign", None),
        ("prospect_phone_term_unused", "prospect", "phone"),
        ("prospect_digital_term_unused", "prospect", None),
    ]


def test_a_phone_term_of_36_months_is_within_the_telemarketing_code_and_37_is_not() -> None:
    terms = with_cells(
        DEFAULT_TERMS,
        aftersales_service__phone=36,
        newsletter__phone=37,
        sales_campaign__phone=0,
        aftersales_campaign__phone=12,
    )
    above = [w for w in compliance_warnings(terms) if w.code == "phone_term_above_telemarketing_code"]
    assert [(w.category, w.severity) for w in above] == [("newsletter", "warning")]
    assert "37 maanden" in above[0].message_nl
    assert "37 months" in above[0].message_en


def test_the_announced_end_of_calling_customers_without_opt_in_is_informational() -> None:
    note = next(w for w in compliance_warnings(DEFAULT_TERMS) if w.code == "customer_calls_opt_in_announced")
    assert note.severity == "info"
    assert "1 juli 2026" in note.message_nl
    assert "verify" in note.message_en
    no_calls = with_cells(
        DEFAULT_TERMS,
        aftersales_service__phone=0,
        newsletter__phone=0,
        sales_campaign__phone=0,
        aftersales_campaign__phone=0,
    )
    assert "customer_calls_opt_in_announced" not in [c for c, _, _ in codes(no_calls)]


def test_soft_opt_in_notes_name_the_law_the_right_to_object_and_the_channels_in_use() -> None:
    terms = with_cells(
        DEFAULT_TERMS,
        newsletter__sms=0,
        newsletter__app=0,
        sales_campaign__email=0,
        sales_campaign__sms=0,
        sales_campaign__app=0,
    )
    notes = [w for w in compliance_warnings(terms) if w.code == "soft_opt_in_own_similar_products"]
    assert [w.category for w in notes] == ["newsletter", "aftersales_campaign"]
    assert "e-mail 18 maanden" in notes[0].message_nl and "SMS" not in notes[0].message_nl.split(")")[0]
    assert "11.7 lid 3" in notes[0].message_nl
    assert "bezwaar" in notes[0].message_nl
    assert "right to object" in notes[0].message_en


def test_prospect_terms_that_are_never_used_are_pointed_out_but_zero_terms_are_not() -> None:
    zeroed = with_cells(DEFAULT_TERMS, prospect__email=0, prospect__sms=0, prospect__app=0, prospect__phone=0)
    assert not [c for c, cat, _ in codes(zeroed) if cat == "prospect"]
    one = with_cells(zeroed, prospect__app=2)
    note = next(w for w in compliance_warnings(one) if w.code == "prospect_digital_term_unused")
    assert "app 2 maanden" in note.message_nl
    assert note.severity == "info"


def test_warnings_do_not_change_the_matrix_and_serialise() -> None:
    before = msgspec.json.encode(DEFAULT_TERMS)
    warnings = compliance_warnings(DEFAULT_TERMS)
    assert msgspec.json.encode(DEFAULT_TERMS) == before
    assert Warning is ComplianceWarning
    decoded = msgspec.json.decode(msgspec.json.encode(warnings), type=list[ComplianceWarning])
    assert decoded == warnings
    assert all(w.message_nl and w.message_en for w in warnings)


def test_an_empty_matrix_has_no_warnings() -> None:
    assert compliance_warnings(TermMatrix()) == []
