"""Retention, the daily job: erase every subject whose retention ended (seed, "Hoe lang
bewaren we uw gegevens?"; defaults 7 years and 3 months, per tenant via
``RetentionPolicySet``).

The rule (when a subject is due) is pure and lives with the other rules in
``consent/retention.py`` (:func:`consent.retention.retention_due`); :func:`run_retention` is
the I/O around it: scan each tenant's subjects, erase the due ones, repair what a crash left.
The clock is a parameter, so tests and ``--today`` can move it. Days are Dutch calendar days,
like every other date in the ledger; a subject is erased on or after its due day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import msgspec
import structlog

from consent.retention import RetentionDue, retention_due
from consent.terms import ledger_day
from services.audit.erasure import erase_subject, retention_context
from services.audit.errors import AuditError
from services.audit.loading import load_tenant
from services.audit.scan import scan_subjects, tenant_ids
from services.ledger.commands import Ledger
from services.ledger.store import translate_errors
from services.portal.links import drop_erased_subject_links

log = structlog.get_logger(__name__)


class RetentionReport(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    today: dt.date
    dry_run: bool
    customer_years: int
    prospect_months: int
    subjects_scanned: int
    due: list[RetentionDue]
    erased: int
    keys_repaired: int
    portal_links_repaired: int = 0


async def run_retention(ledger: Ledger, master_key: bytes, *, now: dt.datetime, dry_run: bool,
                        tenants: Sequence[str] | None = None) -> list[RetentionReport]:
    """Erase every subject whose retention ended on or before ``now``'s Dutch day.

    With ``dry_run`` nothing is written: the reports list who would be erased. Also
    re-shreds keys of subjects erased earlier whose key deletion did not complete.
    """
    today = ledger_day(now)
    wanted = list(tenants) if tenants is not None else await tenant_ids(ledger.pool)
    reports: list[RetentionReport] = []
    for tenant_id in wanted:
        # Everything recorded counts (an injected clock may stand before the last event), and
        # the retention periods are the tenant's current ones.
        tenant = await load_tenant(ledger.store, tenant_id)
        current = tenant.history.current
        years, months = current.retention_customer_years, current.retention_prospect_months
        due: list[RetentionDue] = []
        scanned = 0
        with translate_errors():
            async with ledger.pool.acquire() as conn:
                async for state in scan_subjects(conn, tenant_id):
                    scanned += 1
                    item = retention_due(state, years, months)
                    if item is not None and item.due_on <= today:
                        due.append(item)
        erased = repaired = links_repaired = 0
        if not dry_run:
            ctx = retention_context()
            for item in due:
                try:
                    await erase_subject(ledger, master_key, ctx, tenant_id, item.source, item.customer_ref,
                                        reason="retention")
                    erased += 1
                except AuditError as exc:  # e.g. erased meanwhile by a request: report, go on
                    log.warning("retention_erase_skipped", tenant=tenant_id, error=exc.error)
            repaired = await _repair_keys(ledger, tenant_id)
            links_repaired = await _repair_portal_links(ledger, tenant_id)
        log.info("retention_done", tenant=tenant_id, today=today.isoformat(), dry_run=dry_run, scanned=scanned,
                 due=len(due), erased=erased, keys_repaired=repaired, portal_links_repaired=links_repaired)
        reports.append(RetentionReport(
            tenant_id=tenant_id, today=today, dry_run=dry_run, customer_years=years, prospect_months=months,
            subjects_scanned=scanned, due=due, erased=erased, keys_repaired=repaired,
            portal_links_repaired=links_repaired,
        ))
    return reports


async def _repair_keys(ledger: Ledger, tenant_id: str) -> int:
    """Delete keys that still exist for erased subjects (a crash between append and shred)."""
    return await ledger.keys.shred_erased(tenant_id)


async def _repair_portal_links(ledger: Ledger, tenant_id: str) -> int:
    """Delete portal links of erased subjects that erasure did not remove: a crash between
    append and shred, or a link issued by a request that checked the subject just before
    the erasure was appended. The portal's own function, asking the ledger who is erased."""
    return await drop_erased_subject_links(ledger.pool, ledger, tenant_id)
