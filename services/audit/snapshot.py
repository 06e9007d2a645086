"""Tenant snapshot: every subject's eligibility matrix as known at K, for date D, as CSV.

One row per subject (wide: three columns per category x channel cell), written while the
scan (services/audit/scan.py) folds one subject at a time: memory stays bounded whatever
the tenant's size. The terms are those in force at K (``TenantHistory.state_at(K)``).
"""

from __future__ import annotations

import csv
import datetime as dt
from typing import Final, TextIO

import asyncpg
import msgspec

from consent.eligibility import eligibility_matrix
from consent.subject import invoice_in_effect, objection_in_effect
from consent.terms import ALL_CELLS, cell_key
from services.audit.loading import TenantRecord
from services.audit.scan import scan_subjects

FIXED_COLUMNS: Final = ("subject", "source", "customer_ref", "status", "last_invoice_on", "objected",
                        "stream_version", "ledger_position")
CELL_KEYS: Final = tuple(cell_key(c, h) for c, h in ALL_CELLS)


def header() -> list[str]:
    columns = list(FIXED_COLUMNS)
    for key in CELL_KEYS:
        columns += [key, f"{key}:reason", f"{key}:until"]
    return columns


class SnapshotSummary(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    known_at: dt.datetime
    on: dt.date
    policy_version: str
    subjects: int
    eligible_cells: int
    seconds: float


async def write_snapshot(conn: asyncpg.Connection, tenant: TenantRecord, known_at: dt.datetime, on: dt.date,
                         out: TextIO) -> SnapshotSummary:
    """Write the CSV to ``out``; ``conn`` is held for the scan."""
    import time

    started = time.perf_counter()
    state_at_k = tenant.state_at(known_at)
    terms = state_at_k.terms
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header())
    subjects = eligible = 0
    rows: list[list[object]] = []
    async for state in scan_subjects(conn, state_at_k.tenant_id, known_at):
        matrix = eligibility_matrix(state, terms, on)
        invoice = invoice_in_effect(state, on)
        status = "erased" if state.erased else ("customer" if invoice is not None else "prospect")
        row: list[object] = [
            state.key, state.source, state.customer_ref, status,
            invoice.invoice_date.isoformat() if invoice is not None else "",
            "yes" if state.objections and objection_in_effect(state, on) is not None else "no",
            state.version, state.last_position,
        ]
        for key in CELL_KEYS:
            d = matrix[key]
            if d.eligible:
                eligible += 1
            row += ["yes" if d.eligible else "no", d.reason, d.until.isoformat() if d.until else ""]
        rows.append(row)
        subjects += 1
        if len(rows) >= 1000:
            writer.writerows(rows)
            rows.clear()
    writer.writerows(rows)
    return SnapshotSummary(tenant_id=state_at_k.tenant_id, known_at=known_at, on=on,
                           policy_version=state_at_k.policy_version, subjects=subjects, eligible_cells=eligible,
                           seconds=round(time.perf_counter() - started, 3))
