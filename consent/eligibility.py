"""THE eligibility rule: may subject S get a message of category C on channel H on date D?

PRODUCT.md, "Eligibility". Evaluated in this order; the first rule that decides wins:

1. S erased -> no (``erased``); S objected to all direct marketing -> no (``objected``).
2. Preference (C, H) = opt_out -> no (``opted_out``).
3. Preference (C, H) = opt_in -> yes (``explicit_consent``, basis ``consent``).
4. Customer: C != prospect -> the law on D first (consent/law.py, PRODUCT.md "The law by
   date"): a statute in force that requires consent for (H, customer) -> no
   (``consent_required``, ``law`` names the rule; phone from 2026-07-01); else
   yes iff D < add_months(last invoice date, term[C][H])
   (``soft_opt_in``; basis ``soft_opt_in`` on digital channels, ``legitimate_interest`` on
   post/phone), else no (``term_expired``). C = prospect -> no (``not_a_prospect``).
5. Prospect: C != prospect -> no (``not_a_customer``). C = prospect: digital channels and
   phone need an explicit opt-in (no: ``consent_required``, naming the statute in force on
   D if there is one; the Bel-me-niet register was abolished on 2021-07-01, since then
   calling a non-customer needs prior consent by statute); post ->
   yes iff D < add_months(acquired_on, term[prospect][post]) (``prospect_term``, basis
   ``legitimate_interest``), else no (``term_expired``); a prospect-post answer carries
   ``requires_disclosure`` (GDPR art. 14 and 21(4): the first letter says why, with whom data
   is shared, and the right to object).

Bitemporal reading of "on D" (the knowledge time K is applied when folding the subject,
:func:`consent.subject.fold_subject`, and by choosing the matrix in force,
:meth:`consent.tenant.TenantHistory.state_at`):

* a subject is a customer on D iff it has an invoice dated <= D; its last invoice on D is
  the latest such (a future-dated invoice counts from its date);
* a prospect acquisition counts from its acquired_on;
* preferences and objections count from the (Dutch) day they were recorded: a later
  opt-out does not make an earlier send unlawful; an opt-out or objection given earlier
  (``given_on``, a paper form or DMS delivery) counts from the day given, while an opt-in
  or a withdrawal never counts before the day recorded (:mod:`consent.subject`);
* erasure always wins, whatever D.

What a sender must do with a "yes" comes from the law on D too: ``requires_objection_offer``
(soft opt-in and legitimate interest), ``requires_postfilter_check`` (prospect post, Code
Postfilter 2021). A "yes" that the law ends on a later switch date has that date as its
``until``, and every switch date is a candidate of :func:`next_change`.

A prospect-post subject without any acquisition in effect on D has no date to start a term
from, so nothing but consent could allow it: ``consent_required``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Final

import msgspec

from consent.law import LAW_CACHE, SWITCH_DATES, LawInForce, law_by_channel, switch_dates_after
from consent.subject import (
    AcquisitionFact,
    InvoiceFact,
    ObjectionFact,
    SubjectState,
    acquisition_in_effect,
    decisive_preference,
    invoice_in_effect,
    objection_in_effect,
)
from consent.terms import ALL_CELLS, TermMatrix, add_months, cell_key
from schemas.eligibility import Cell
from schemas.vocabulary import DIGITAL_CHANNELS, Basis, Reason

__all__ = ["Basis", "Decision", "Reason", "eligibility_matrix", "evaluate", "next_change"]


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One answer of the eligibility rule.

    ``basis``: the legal ground when eligible, else None. ``until``: the first date the
    current basis no longer covers (exclusive; None for explicit consent and for a "no").
    ``evidence``: event_ids the decision rests on (invoice or acquisition, the tenant event
    that set the term cell, the preference, objection or erasure event).
    ``requires_disclosure``: set on every rule-5 prospect-post answer (the first letter must
    carry the art. 14 / 21(4) information); False everywhere else.
    ``law``: the id of the statute (consent/law.py) that requires consent for this channel
    and audience on the date, on a ``consent_required`` answer it decided.
    ``requires_postfilter_check``: a prospect-post "yes" while the Code Postfilter applies.
    ``requires_objection_offer``: a "yes" on soft opt-in or legitimate interest while a rule
    asks every message to offer the right to object.
    (Field order = schemas.eligibility.Cell: the projector encodes these as cells.)
    """

    eligible: bool
    basis: Basis | None
    reason: Reason
    until: dt.date | None = None
    evidence: tuple[str, ...] = ()
    requires_disclosure: bool = False
    law: str | None = None
    requires_postfilter_check: bool = False
    requires_objection_offer: bool = False


def as_cell(d: Decision) -> Cell:
    """The decision in the one answer shape (topic cells, HTTP checks, audit view cells)."""
    return Cell(eligible=d.eligible, basis=d.basis, reason=d.reason, until=d.until, evidence=list(d.evidence),
                requires_disclosure=d.requires_disclosure, law=d.law,
                requires_postfilter_check=d.requires_postfilter_check,
                requires_objection_offer=d.requires_objection_offer)


_LAST_SWITCH: Final = SWITCH_DATES[-1] if SWITCH_DATES else dt.date.min
_CUSTOMER_LAW: Final = LAW_CACHE["customer"]
_NON_CUSTOMER_LAW: Final = LAW_CACHE["non_customer"]


class _Facts:
    """What every cell's decision on one date shares: computed once per subject and date."""

    __slots__ = ("acquisition", "ends", "erased", "invoice", "law", "objection")

    def __init__(self, subject: SubjectState, on: dt.date) -> None:
        self.erased: str | None = subject.erased
        self.objection: ObjectionFact | None = objection_in_effect(subject, on) if subject.objections else None
        self.invoice: InvoiceFact | None = invoice_in_effect(subject, on)
        self.acquisition: AcquisitionFact | None = (
            acquisition_in_effect(subject, on) if subject.acquisitions and self.invoice is None else None
        )
        # the law on `on` for this audience, per channel: one dict lookup per matrix (the
        # function call costs more than the lookup, and the bulk check pays it per subject)
        if self.invoice is not None:
            law = _CUSTOMER_LAW.get(on) or law_by_channel("customer", on)
        else:
            law = _NON_CUSTOMER_LAW.get(on) or law_by_channel("non_customer", on)
        self.law: Mapping[str, LawInForce] = law
        # term end per number of months; one start date per _Facts (the invoice, else the acquisition)
        self.ends: dict[int, dt.date] = {}

    def end(self, start: dt.date, months: int) -> dt.date:
        end = self.ends.get(months)
        if end is None:
            end = self.ends[months] = add_months(start, months)
        return end


_KEYED_CELLS: Final = tuple((c, h, cell_key(c, h)) for c, h in ALL_CELLS)  # keys made once, not per matrix


def _with_term(first: str, terms: TermMatrix, key: str) -> tuple[str, ...]:
    term_event = terms.set_by.get(key)
    return (first, term_event) if term_event is not None else (first,)


def _decide(
    subject: SubjectState, facts: _Facts, terms: TermMatrix, category: str, channel: str, on: dt.date, key: str
) -> Decision:
    # 1. erasure, objection
    if facts.erased is not None:
        return Decision(eligible=False, basis=None, reason="erased", evidence=(facts.erased,))
    if facts.objection is not None:
        return Decision(eligible=False, basis=None, reason="objected", evidence=(facts.objection.event_id,))

    # 2, 3. the subject's own choice for this cell, as in force on `on`
    history = subject.preferences.get(key)
    if history:
        pref = decisive_preference(history, on)
        if pref is not None:
            if pref.pending:
                # double opt-in not confirmed yet: it allows nothing; what was in force
                # before it decides, and a "no" then says the confirmation is pending
                earlier = tuple(p for p in history if p.recorded_at < pref.recorded_at)
                decision = _decide(msgspec.structs.replace(subject, preferences={**subject.preferences, key: earlier}),
                                   facts, terms, category, channel, on, key)
                if decision.eligible:
                    return decision
                return Decision(eligible=False, basis=None, reason="opt_in_pending",
                                evidence=(pref.event_id,) + decision.evidence)
            if pref.value == "opt_out":
                return Decision(eligible=False, basis=None, reason="opted_out", evidence=(pref.event_id,))
            if pref.value == "opt_in":
                consented: tuple[str, ...] = (pref.event_id,) if pref.confirmed_by is None else (
                    pref.event_id, pref.confirmed_by)
                return Decision(eligible=True, basis="consent", reason="explicit_consent", evidence=consented)
            # "default": follow the term matrix

    # 4. customer
    invoice = facts.invoice
    if invoice is not None:
        if category == "prospect":
            return Decision(eligible=False, basis=None, reason="not_a_prospect", evidence=(invoice.event_id,))
        law = facts.law[channel]
        if law.consent_rule is not None:  # the statute on `on`: no soft opt-in / legitimate interest
            return Decision(eligible=False, basis=None, reason="consent_required", evidence=(invoice.event_id,),
                            law=law.consent_rule)
        end = facts.end(invoice.invoice_date, terms.months.get(key, 0))
        evidence = _with_term(invoice.event_id, terms, key)
        if on < end:
            basis: Basis = "soft_opt_in" if channel in DIGITAL_CHANNELS else "legitimate_interest"
            if law.consent_from is not None and law.consent_from < end:
                end = law.consent_from  # the basis lapses when the law starts to require consent
            return Decision(eligible=True, basis=basis, reason="soft_opt_in", until=end, evidence=evidence,
                            requires_objection_offer=law.objection_offer)
        return Decision(eligible=False, basis=None, reason="term_expired", evidence=evidence)

    # 5. prospect
    acquisition = facts.acquisition
    acquired: tuple[str, ...] = (acquisition.event_id,) if acquisition is not None else ()
    if category != "prospect":
        return Decision(eligible=False, basis=None, reason="not_a_customer", evidence=acquired)
    law = facts.law[channel]
    if channel != "post":
        return Decision(eligible=False, basis=None, reason="consent_required", evidence=acquired,
                        law=law.consent_rule)
    if acquisition is None:
        return Decision(eligible=False, basis=None, reason="consent_required", requires_disclosure=True)
    end = facts.end(acquisition.acquired_on, terms.months.get(key, 0))
    evidence = _with_term(acquisition.event_id, terms, key)
    if on < end:
        return Decision(
            eligible=True,
            basis="legitimate_interest",
            reason="prospect_term",
            until=end,
            evidence=evidence,
            requires_disclosure=True,
            requires_postfilter_check=law.postfilter_check,
            requires_objection_offer=law.objection_offer,
        )
    return Decision(eligible=False, basis=None, reason="term_expired", evidence=evidence, requires_disclosure=True)


def evaluate(subject: SubjectState, terms: TermMatrix, category: str, channel: str, on: dt.date) -> Decision:
    """May ``subject`` receive a ``category`` message on ``channel`` on date ``on``?

    ``subject`` is the state as known at the knowledge time K (fold with ``known_at=K``)
    and ``terms`` the matrix in force (``TenantHistory.state_at(...).terms``).
    """
    return _decide(subject, _Facts(subject, on), terms, category, channel, on, cell_key(category, channel))


def eligibility_matrix(subject: SubjectState, terms: TermMatrix, on: dt.date) -> dict[str, Decision]:
    """The decision for all 25 cells, keyed ``"category:channel"`` (same as :func:`evaluate`)."""
    facts = _Facts(subject, on)
    return {key: _decide(subject, facts, terms, c, h, on, key) for c, h, key in _KEYED_CELLS}


def next_change(
    subject: SubjectState, terms: TermMatrix, on: dt.date, *, current: dict[str, Decision] | None = None
) -> dt.date | None:
    """The earliest date after ``on`` on which some cell's decision changes with no new
    event, or None if none ever will.

    ``current``: ``eligibility_matrix(subject, terms, on)`` if the caller already has it
    (the projector does), so it is not computed twice.

    Changes come from a term lapsing (a decision's ``until``) and from facts already in the
    ledger that take effect later (future-dated invoices and acquisitions; preferences or
    objections recorded after ``on`` when ``on`` is in the past). The projector re-publishes
    the subject's matrix on that date.
    """
    if subject.erased is not None:
        return None
    if current is None:
        current = eligibility_matrix(subject, terms, on)
    lapses = {d.until for d in current.values() if d.until is not None and d.until > on}
    facts: set[dt.date] = {f.invoice_date for f in subject.invoices.values() if f.invoice_date > on}
    facts.update(f.acquired_on for f in subject.acquisitions if f.acquired_on > on)
    facts.update(f.effective_on for f in subject.objections if f.effective_on > on)
    if on < _LAST_SWITCH:  # the law changes on a switch date (consent/law.py); none after the last
        facts.update(switch_dates_after(on))
    facts.update(f.given_on for f in subject.objections if f.given_on is not None and f.given_on > on)
    for history in subject.preferences.values():
        facts.update(f.effective_on for f in history if f.effective_on > on)
        facts.update(f.given_on for f in history if f.given_on is not None and f.given_on > on)
    first_lapse = min(lapses, default=None)
    if first_lapse is not None and (not facts or first_lapse < min(facts)):
        # No fact takes effect before it, so on that day the same facts decide, and the cell
        # whose term ends then is no longer covered (D < until fails): a change, for sure.
        # (The common case; it saves evaluating the matrix a second time.)
        return first_lapse
    # Between two candidates nothing changes; at a candidate where nothing changes either,
    # the `until`s are unchanged too, so the remaining candidates still cover every change.
    for day in sorted(lapses | facts):
        if eligibility_matrix(subject, terms, day) != current:
            return day
    return None
