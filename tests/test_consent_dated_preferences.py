"""Dated preferences (issue 16, item 3): a preference change or objection may carry the day
the customer gave it (``given_on``, a signed paper form or a DMS delivery), earlier than
the day it was recorded. Bitemporal: known from when it was recorded, in effect from when it
was given, except that consent is never back-dated: an opt-out or objection given earlier
makes earlier dates "no"; an opt-in, a return to default or a withdrawn objection never
makes a past date "yes" that was "no" when it passed (docs/rules.md, "Dated preferences").

Every table checks both sides of ``given_on`` (G) and of the recording day (R), and the
knowledge time K before and after the recording.
"""

from __future__ import annotations

import pytest

from consent.eligibility import evaluate, next_change
from consent.subject import objection_in_effect, preference_in_effect
from tests.consent_builders import SubjectHistoryBuilder, TenantHistoryBuilder, day

TERMS = TenantHistoryBuilder("acme", created_at="2000-01-01").terms
G = "2024-03-01"  # the day given (on the paper form)
R = "2024-06-20T10:00:00"  # recorded (a Thursday morning, Dutch day 2024-06-20)
BEFORE_RECORDING = "2024-06-19T12:00:00"
AFTER_RECORDING = "2024-06-21T12:00:00"


def fresh_customer() -> SubjectHistoryBuilder:
    """Invoice 2024-01-10: newsletter by e-mail on soft opt-in until 2025-07-10."""
    return SubjectHistoryBuilder().invoice("2024-01-10", at="2024-01-10")


def lapsed_customer() -> SubjectHistoryBuilder:
    """Invoice 2020-01-10: the 18-month newsletter term lapsed on 2021-07-10."""
    return SubjectHistoryBuilder().invoice("2020-01-10", at="2020-01-10")


def reason(subject: SubjectHistoryBuilder, on: str, known_at: str) -> str:
    return evaluate(subject.state(known_at), TERMS, "newsletter", "email", day(on)).reason


CASES = {
    "opt-out given earlier": lambda: fresh_customer().opt_out("newsletter", "email", at=R, given_on=G),
    "opt-in given earlier": lambda: lapsed_customer().opt_in("newsletter", "email", at=R, given_on=G),
    "objection given earlier": lambda: fresh_customer().object(at=R, given_on=G),
    "objection withdrawn earlier": lambda: fresh_customer().object(at="2024-01-15").withdraw_objection(
        at=R, given_on=G),
    "back to default after an opt-in": lambda: lapsed_customer().opt_in("newsletter", "email", at="2024-01-15")
    .reset("newsletter", "email", at=R, given_on=G),
    "back to default after an opt-out": lambda: fresh_customer().opt_out("newsletter", "email", at="2024-01-15")
    .reset("newsletter", "email", at=R, given_on=G),
}


@pytest.mark.parametrize(
    ("case", "on", "known_at", "expected"),
    [
        # An opt-out counts from the day given, once the ledger knows it.
        ("opt-out given earlier", "2024-02-29", AFTER_RECORDING, "soft_opt_in"),  # before G
        ("opt-out given earlier", "2024-03-01", AFTER_RECORDING, "opted_out"),  # on G
        ("opt-out given earlier", "2024-06-19", AFTER_RECORDING, "opted_out"),  # between G and R
        ("opt-out given earlier", "2024-06-20", AFTER_RECORDING, "opted_out"),  # on R
        ("opt-out given earlier", "2024-06-19", BEFORE_RECORDING, "soft_opt_in"),  # as known before R
        ("opt-out given earlier", "2024-09-01", BEFORE_RECORDING, "soft_opt_in"),
        # An opt-in never counts before the day recorded: no back-dated consent.
        ("opt-in given earlier", "2024-02-29", AFTER_RECORDING, "term_expired"),
        ("opt-in given earlier", "2024-03-01", AFTER_RECORDING, "term_expired"),  # on G: still no
        ("opt-in given earlier", "2024-06-19", AFTER_RECORDING, "term_expired"),  # between G and R
        ("opt-in given earlier", "2024-06-20", AFTER_RECORDING, "explicit_consent"),  # from R
        ("opt-in given earlier", "2024-06-20", BEFORE_RECORDING, "term_expired"),
        # An objection, like an opt-out, counts from the day given.
        ("objection given earlier", "2024-02-29", AFTER_RECORDING, "soft_opt_in"),
        ("objection given earlier", "2024-03-01", AFTER_RECORDING, "objected"),
        ("objection given earlier", "2024-06-20", AFTER_RECORDING, "objected"),
        ("objection given earlier", "2024-03-01", BEFORE_RECORDING, "soft_opt_in"),
        # A withdrawal, like an opt-in, only from the day recorded.
        ("objection withdrawn earlier", "2024-02-29", AFTER_RECORDING, "objected"),
        ("objection withdrawn earlier", "2024-03-01", AFTER_RECORDING, "objected"),
        ("objection withdrawn earlier", "2024-06-19", AFTER_RECORDING, "objected"),
        ("objection withdrawn earlier", "2024-06-20", AFTER_RECORDING, "soft_opt_in"),
        ("objection withdrawn earlier", "2024-06-20", BEFORE_RECORDING, "objected"),
        # Withdrawing consent (back to default) is a restriction: it counts from the day given.
        ("back to default after an opt-in", "2024-02-29", AFTER_RECORDING, "explicit_consent"),
        ("back to default after an opt-in", "2024-03-01", AFTER_RECORDING, "term_expired"),
        ("back to default after an opt-in", "2024-06-20", AFTER_RECORDING, "term_expired"),
        ("back to default after an opt-in", "2024-03-01", BEFORE_RECORDING, "explicit_consent"),
        # Lifting an opt-out (back to default) is permissive: only from the day recorded.
        ("back to default after an opt-out", "2024-03-01", AFTER_RECORDING, "opted_out"),
        ("back to default after an opt-out", "2024-06-19", AFTER_RECORDING, "opted_out"),
        ("back to default after an opt-out", "2024-06-20", AFTER_RECORDING, "soft_opt_in"),
        ("back to default after an opt-out", "2024-06-20", BEFORE_RECORDING, "opted_out"),
    ],
)
def test_a_dated_change_counts_from_the_day_given_only_where_it_restricts(
    case: str, on: str, known_at: str, expected: str
) -> None:
    assert reason(CASES[case](), on, known_at) == expected


def test_an_opt_out_given_before_an_opt_in_recorded_earlier_does_not_undo_that_opt_in() -> None:
    """The customer signed an opt-out on paper on 1 March, then opted in online on 1 April;
    the paper form reaches the ledger in June. The later wish (the opt-in) stands from
    April, the opt-out covers March."""
    subject = (lapsed_customer().opt_in("newsletter", "email", at="2024-04-01")
               .opt_out("newsletter", "email", at=R, given_on=G))
    assert reason(subject, "2024-03-15", AFTER_RECORDING) == "opted_out"
    assert reason(subject, "2024-04-01", AFTER_RECORDING) == "explicit_consent"
    assert reason(subject, "2024-09-01", AFTER_RECORDING) == "explicit_consent"
    assert subject.state().preference("newsletter", "email") == "opt_in"  # the latest wish, by the day given


def test_the_evidence_of_a_back_dated_opt_out_is_its_own_event_and_says_since_when() -> None:
    subject = fresh_customer().opt_out("newsletter", "email", at=R, given_on=G, event_id="ev-form")
    state = subject.state()
    decision = evaluate(state, TERMS, "newsletter", "email", day("2024-04-01"))
    assert decision.evidence == ("ev-form",)
    fact = preference_in_effect(state, "newsletter", "email", day("2024-04-01"))
    assert fact is not None and fact.since == day(G) and fact.effective_on == day("2024-06-20")


def test_a_back_dated_objection_says_it_counts_from_the_day_given() -> None:
    state = fresh_customer().object(at=R, given_on=G).state()
    fact = objection_in_effect(state, day("2024-04-01"))
    assert fact is not None and fact.since == day(G)


def test_a_given_on_that_is_the_recording_day_is_the_same_as_none() -> None:
    dated = fresh_customer().opt_out("newsletter", "email", at=R, given_on="2024-06-20").state()
    plain = fresh_customer().opt_out("newsletter", "email", at=R).state()
    assert dated.preferences == plain.preferences


def test_the_projector_learns_that_a_back_dated_opt_out_starts_on_its_given_day() -> None:
    """For a matrix of a past date (a rebuild evaluating history), the day given is a change."""
    state = fresh_customer().opt_out("newsletter", "email", at=R, given_on=G).state()
    assert next_change(state, TERMS, day("2024-02-01")) == day(G)


def test_events_recorded_before_given_on_existed_still_decode_with_the_defaults() -> None:
    from schemas.events import ObjectionRecorded, PreferencesChanged, decode_event

    old = ('{"type":"PreferencesChanged","changes":[{"category":"newsletter","channel":"email","value":"opt_out"}],'
           '"changed_by":{"kind":"subject","id":"subject"},"method":"portal","policy_version":"pv-1","note":null}')
    event = decode_event(old)
    assert isinstance(event, PreferencesChanged)
    assert (event.given_on, event.evidence_ref, event.policy_version_basis) == (None, None, "shown")
    objection = decode_event('{"type":"ObjectionRecorded","changed_by":{"kind":"staff","id":"u"},"method":"phone"}')
    assert isinstance(objection, ObjectionRecorded) and objection.given_on is None
