"""Property tests: the folds and the eligibility rule agree with themselves on random histories."""

from __future__ import annotations

import datetime as dt

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.eligibility import eligibility_matrix, evaluate, next_change
from consent.law import rules_in_force
from consent.subject import SubjectState, apply_subject, fold_subject
from consent.terms import ALL_CELLS, TermMatrix, cell_key, terms_from_cells
from schemas.events import TermCell
from schemas.vocabulary import PREFERENCE_VALUES
from tests.consent_builders import SubjectHistoryBuilder

START = dt.datetime(2020, 1, 1, 8, tzinfo=dt.timezone.utc)
# 2019-2031: both sides of every switch date of the law (consent/law.py)
DATES = st.dates(min_value=dt.date(2019, 1, 1), max_value=dt.date(2031, 12, 31))
CELLS = st.sampled_from([cell_key(c, h) for c, h in ALL_CELLS])

OPERATIONS = st.one_of(
    st.tuples(st.just("invoice"), DATES),
    st.tuples(st.just("correct"), DATES),
    st.tuples(st.just("prospect"), DATES),
    st.tuples(
        st.just("preference"), st.dictionaries(CELLS, st.sampled_from(PREFERENCE_VALUES), min_size=1, max_size=4)
    ),
    st.tuples(st.just("object"), st.booleans()),
    st.tuples(st.just("activity"), DATES),
    st.tuples(st.just("erase"), st.just(None)),
)
# gaps between recordings: same minute-ish, same day, or days apart
GAPS = st.sampled_from(
    [
        dt.timedelta(minutes=1),
        dt.timedelta(hours=5),
        dt.timedelta(days=1),
        dt.timedelta(days=40),
        dt.timedelta(days=200),
    ]
)


@st.composite
def histories(draw: st.DrawFn) -> SubjectHistoryBuilder:
    source = draw(st.sampled_from(["dealer", "unknown"]))
    builder = SubjectHistoryBuilder("acme", source, "C1")
    steps = draw(st.lists(st.tuples(OPERATIONS, GAPS), min_size=1, max_size=25))
    at = START
    invoices = 0
    for (kind, arg), gap in steps:
        at += gap
        if kind == "erase" and draw(st.integers(0, 4)) != 0:
            continue  # keep erasure rare so the other rules get exercised
        if kind == "invoice":
            invoices += 1
            builder.invoice(arg, invoice_id=f"F{invoices}", at=at)
        elif kind == "correct" and invoices:
            builder.correct_invoice(f"F{draw(st.integers(1, invoices))}", arg, at=at)
        elif kind == "prospect":
            builder.prospect(arg, at=at)
        elif kind == "preference":
            builder.preferences(arg, at=at)
        elif kind == "object":
            (builder.object if arg else builder.withdraw_objection)(at=at)
        elif kind == "activity":
            builder.activity(arg, at=at)
        elif kind == "erase":
            builder.erase(at=at)
    if not builder.events:
        builder.invoice(dt.date(2021, 1, 1), invoice_id="F0", at=START)
    return builder


@st.composite
def matrices(draw: st.DrawFn) -> TermMatrix:
    months = draw(st.lists(st.integers(0, 60), min_size=25, max_size=25))
    cells = [TermCell(category=c, channel=h, months=m) for (c, h), m in zip(ALL_CELLS, months, strict=True)]
    return terms_from_cells(cells, "ev-terms")


RUNS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RUNS
@given(histories())
def test_folding_events_one_by_one_equals_fold_subject(history: SubjectHistoryBuilder) -> None:
    state: SubjectState | None = None
    for recorded in history.events:
        state = apply_subject(state, recorded)
    assert state == fold_subject(history.events)


@RUNS
@given(histories(), st.integers(0, 30))
def test_a_knowledge_cut_off_equals_folding_the_events_recorded_until_then(
    history: SubjectHistoryBuilder, n: int
) -> None:
    n = min(n, len(history.events) - 1)
    cut = history.events[n].recorded_at
    expected = fold_subject([e for e in history.events if e.recorded_at <= cut])
    assert fold_subject(history.events, known_at=cut) == expected


@RUNS
@given(histories())
def test_the_subject_state_round_trips_through_json(history: SubjectHistoryBuilder) -> None:
    state = history.state()
    assert msgspec.json.decode(msgspec.json.encode(state), type=SubjectState) == state


@RUNS
@given(histories(), matrices(), DATES)
def test_matrix_decisions_are_consistent_with_evaluate(
    history: SubjectHistoryBuilder, terms: TermMatrix, on: dt.date
) -> None:
    state = history.state()
    matrix = eligibility_matrix(state, terms, on)
    assert len(matrix) == 25
    for category, channel in ALL_CELLS:
        assert matrix[cell_key(category, channel)] == evaluate(state, terms, category, channel, on)


@RUNS
@given(histories(), matrices(), DATES)
def test_every_decision_is_well_formed(history: SubjectHistoryBuilder, terms: TermMatrix, on: dt.date) -> None:
    state = history.state()
    for key, decision in eligibility_matrix(state, terms, on).items():
        assert decision.eligible == (decision.basis is not None)
        if decision.eligible:
            assert decision.reason in {"explicit_consent", "soft_opt_in", "prospect_term"}
        if decision.until is not None:
            assert decision.eligible and decision.until > on
        if decision.requires_disclosure:
            assert key == "prospect:post"
        if state.erased is not None:
            assert decision.reason == "erased"
        assert decision.evidence or decision.reason in {"not_a_customer", "consent_required"}
        # what a sender must do with a "yes": only on a "yes", and only where the law says
        if decision.requires_objection_offer:
            assert decision.eligible and decision.basis in {"soft_opt_in", "legitimate_interest"}
        if decision.requires_postfilter_check:
            assert decision.eligible and key == "prospect:post" and on >= dt.date(2021, 4, 1)
        if decision.law is not None:
            assert decision.reason == "consent_required" and decision.law in {r.id for r in rules_in_force(on)}


@RUNS
@given(histories(), matrices(), DATES)
def test_the_law_on_the_send_date_allows_no_call_without_consent_from_2026_07_01(
    history: SubjectHistoryBuilder, terms: TermMatrix, on: dt.date
) -> None:
    state = history.state()
    for key, decision in eligibility_matrix(state, terms, on).items():
        if key.endswith(":phone") and decision.eligible and on >= dt.date(2026, 7, 1):
            assert decision.reason == "explicit_consent"
        if decision.eligible and decision.basis != "consent":
            assert decision.requires_objection_offer  # every rule in force asks for it


@RUNS
@given(histories(), matrices(), DATES, st.floats(0, 1))
def test_nothing_changes_before_the_next_change_and_something_changes_on_it(
    history: SubjectHistoryBuilder, terms: TermMatrix, on: dt.date, fraction: float
) -> None:
    state = history.state()
    now = eligibility_matrix(state, terms, on)
    change = next_change(state, terms, on)
    horizon = change if change is not None else on + dt.timedelta(days=365 * 12)
    assert horizon > on
    span = (horizon - on).days
    for offset in {1, span - 1, int(fraction * (span - 1))}:
        if 0 < offset < span:
            assert eligibility_matrix(state, terms, on + dt.timedelta(days=offset)) == now
    if change is not None:
        assert eligibility_matrix(state, terms, change) != now
