"""Retention, the rule: when a subject's data must be gone (seed, "Hoe lang bewaren we uw
gegevens?"; defaults 7 years and 3 months, per tenant via ``RetentionPolicySet``).

For a subject that is not erased yet:

* customer (any invoice): due on ``add_months(last invoice date, 12 * customer_years)``;
* otherwise (prospect): due on ``add_months(base, prospect_months)`` where base is the
  latest of its acquisition dates and its last marketing activity; a subject with neither
  (e.g. only a preference saved in the portal) counts from the day of its last event.

It is erased on or after its due day ("at most N years": the data is kept while
``today < due``, the same half-open reading as the opt-in terms). Days are Dutch calendar
days, like every other date in the ledger. The daily job that applies the rule (scan, erase,
repair) is ``services/audit/retention.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from consent.subject import SubjectState
from consent.terms import add_months, ledger_day

__all__ = ["RetentionDue", "retention_due"]


class RetentionDue(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    source: str
    customer_ref: str
    kind: Literal["customer", "prospect"]
    basis: Literal["last_invoice", "acquisition", "marketing_activity", "last_event"]
    basis_date: dt.date
    due_on: dt.date


def _months_after(day: dt.date, months: int) -> dt.date:
    """``add_months``, but a due day past the calendar's end (an invoice dated in year 9999,
    written before the API and the import refused future dates) is ``date.max``: never due,
    instead of an error that would stop the whole tenant's daily run."""
    try:
        return add_months(day, months)
    except ValueError:
        return dt.date.max


def retention_due(state: SubjectState, customer_years: int, prospect_months: int) -> RetentionDue | None:
    """When the subject's data must be gone (None if it is already erased)."""
    if state.erased is not None:
        return None
    common = {"subject": state.key, "source": state.source, "customer_ref": state.customer_ref}
    if state.invoices and state.last_invoice_on is not None:
        return RetentionDue(**common, kind="customer", basis="last_invoice", basis_date=state.last_invoice_on,
                            due_on=_months_after(state.last_invoice_on, 12 * customer_years))
    candidates: list[tuple[dt.date, Literal["acquisition", "marketing_activity", "last_event"]]] = [
        (a.acquired_on, "acquisition") for a in state.acquisitions
    ]
    if state.last_activity_on is not None:
        candidates.append((state.last_activity_on, "marketing_activity"))
    if not candidates and state.last_recorded_at is not None:
        candidates.append((ledger_day(state.last_recorded_at), "last_event"))
    if not candidates:
        return None
    basis_date, basis = max(candidates, key=lambda c: c[0])
    return RetentionDue(**common, kind="prospect", basis=basis, basis_date=basis_date,
                        due_on=_months_after(basis_date, prospect_months))
