"""The eligibility topic's message format: what the projector writes is exactly
schemas.eligibility.EligibilityMatrix, and the exported JSON Schema files are current."""

from __future__ import annotations

import datetime as dt
import json

import jsonschema_rs
import msgspec

from consent.eligibility import eligibility_matrix
from schemas import export
from schemas.eligibility import EligibilityMatrix, decode_matrix, encode_matrix
from schemas.events import encode_recorded
from services.projector.readmodel import erased_matrix_json, evaluate_subject, matrix_json
from tests.consent_builders import SubjectHistoryBuilder, TenantHistoryBuilder

ON = dt.date(2025, 3, 1)


def _subject() -> SubjectHistoryBuilder:
    return (SubjectHistoryBuilder("acme", "dealer", "C1")
            .invoice("2024-06-15").opt_out("newsletter", "email", at="2024-07-01").prospect("2024-01-10"))


def test_the_projectors_json_is_exactly_an_eligibility_matrix() -> None:
    state = _subject().state()
    terms = TenantHistoryBuilder("acme").terms
    raw = matrix_json(state, evaluate_subject(state, terms, ON), terms_version=1, tenant_position=3)
    matrix = decode_matrix(raw)
    assert json.loads(raw) == json.loads(encode_matrix(matrix))  # no field more, none less
    assert isinstance(matrix, EligibilityMatrix) and matrix.schema_version == 1
    decisions = eligibility_matrix(state, terms, ON)
    for key, d in decisions.items():
        cell = matrix.cell(*key.split(":"))
        assert msgspec.to_builtins(cell) == msgspec.to_builtins(d) | {"evidence": list(d.evidence)}
    assert matrix.position == state.last_position and matrix.valid_until == evaluate_subject(state, terms, ON).next_change


def test_an_erased_subjects_answer_says_erased_in_every_cell() -> None:
    state = _subject().erase(at="2025-01-01").state()
    matrix = decode_matrix(erased_matrix_json(state, ON, terms_version=1, tenant_position=0))
    assert matrix.erased and matrix.valid_until is None
    assert {c.reason for row in matrix.cells.values() for c in row.values()} == {"erased"}


def test_the_exported_schemas_are_current_and_validate_real_messages() -> None:
    assert export.stale() == [], "run `consent-ledger schemas export`"
    state = _subject().state()
    terms = TenantHistoryBuilder("acme").terms
    raw = matrix_json(state, evaluate_subject(state, terms, ON), terms_version=1, tenant_position=3)
    eligibility = jsonschema_rs.validator_for(export.schema_document("eligibility"))
    eligibility.validate(json.loads(raw))
    assert not eligibility.is_valid({**json.loads(raw), "cells": {"newsletter": {"fax": {}}}})
    events = jsonschema_rs.validator_for(export.schema_document("events"))
    for recorded in _subject().events:
        events.validate(json.loads(encode_recorded(recorded)))
