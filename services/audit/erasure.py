"""Erasure (GDPR art. 17) by crypto-shredding; see docs/erasure.md.

The ledger is append-only and hash-chained, so erasure does not touch events. It:

1. appends :class:`~schemas.events.SubjectErased` with the stream's current version as the
   expected version (nothing can slip in between), after which the ledger refuses every
   further append to the stream (410, services/ledger/commands.py);
2. in one transaction, deletes the subject's key (every Sealed field of the subject becomes
   unreadable forever; ``SubjectKeys.shred``), its personal portal links (the portal is a
   read model too, and a link is a credential for someone who is gone;
   ``services.portal.links.drop_subject_links``) and its mail rows
   (``services.mail.addresses.forget_subject``) and, if an objection was in force, writes
   the suppression record (services/audit/suppression.py). Each of those is the owning
   service's function, run on erasure's connection inside its transaction;
3. leaves the read models to the projector, which handles SubjectErased like any event:
   it drops the subject's rows and publishes a tombstone on ``consent.eligibility.v1``.

Erasing an erased subject repeats step 2 (idempotent), which also repairs a crash
between steps 1 and 2.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec
import structlog

from consent.subject import SubjectState, fold_subject
from schemas.events import Actor, SubjectErased
from schemas.vocabulary import subject_stream
from services.audit import suppression
from services.audit.errors import AuditError
from services.audit.loading import check_subject_ids
from services.ledger.commands import Context, Ledger
from services.ledger.errors import WrongExpectedVersion
from services.ledger.store import StreamWrite, translate_errors
from services.mail.addresses import forget_subject as forget_mail_subject
from services.portal.links import drop_subject_links

log = structlog.get_logger(__name__)

Reason = Literal["request", "retention"]
_ATTEMPTS = 5


class ErasureResult(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    reason: str
    already_erased: bool
    event_id: str
    position: int
    erased_at: dt.datetime
    keys_shredded: int
    suppressed: bool
    objected_on: dt.date | None = None
    portal_links_removed: int = 0


def retention_context() -> Context:
    return Context(actor=Actor(kind="system", id="retention"), method="retention")


def _objected_on(state: SubjectState) -> dt.date | None:
    """The day the objection in force took effect, if the subject's last word was an objection."""
    return state.objections[-1].since if state.objected else None  # a back-dated objection: the day given


class _Shredded(msgspec.Struct, frozen=True):
    keys: int
    portal_links: int


async def _shred(ledger: Ledger, master_key: bytes, state: SubjectState, erased_at: dt.datetime,
                 objected_on: dt.date | None, reason: Reason) -> _Shredded:
    stream = subject_stream(state.tenant_id, state.source, state.customer_ref)
    # One transaction on one connection, each owning service's function taking part in it:
    # the key, the links, the mail rows and the suppression record go together or not at all.
    with translate_errors():
        async with ledger.pool.acquire() as conn, conn.transaction():
            # The ledger's key table (every key of the stream, should one have been made later).
            keys = await ledger.keys.shred(conn, stream)
            # The portal's links, live and revoked alike.
            links = await drop_subject_links(conn, state.tenant_id, state.source, state.customer_ref)
            # The mail service's rows: address MACs ("lost my link") and mails not sent yet.
            await forget_mail_subject(conn, state.tenant_id, state.source, state.customer_ref)
            if objected_on is not None:
                await suppression.suppress(conn, master_key, state.tenant_id, state.source, state.customer_ref,
                                           objected_on, erased_at, reason)
    return _Shredded(keys=keys, portal_links=links)


async def erase_subject(ledger: Ledger, master_key: bytes, ctx: Context, tenant_id: str, source: str,
                        customer_ref: str, *, reason: Reason = "request") -> ErasureResult:
    """Erase one subject (see the module docstring). 404 for an unknown tenant or subject."""
    check_subject_ids(tenant_id, source, customer_ref)
    await ledger.require_tenant(tenant_id)
    stream = subject_stream(tenant_id, source, customer_ref)
    for attempt in range(_ATTEMPTS):
        events = await ledger.store.read_stream(stream)
        state = fold_subject(events)
        if state is None:
            raise AuditError(404, "unknown_subject",
                             f"the ledger holds nothing about {tenant_id}/{source}/{customer_ref}", "ref")
        objected_on = _objected_on(state)
        if state.erased is not None:
            erased = next(e for e in events if e.event_id == state.erased)
            assert isinstance(erased.event, SubjectErased)
            shredded = await _shred(ledger, master_key, state, erased.recorded_at, objected_on, erased.event.reason)
            return ErasureResult(
                subject=state.key, reason=erased.event.reason, already_erased=True, event_id=erased.event_id,
                position=erased.position, erased_at=erased.recorded_at, keys_shredded=shredded.keys,
                suppressed=erased.event.suppressed, objected_on=objected_on,
                portal_links_removed=shredded.portal_links,
            )
        event = SubjectErased(reason=reason, suppressed=objected_on is not None)
        try:
            appended = await ledger.append_many(ctx, tenant_id, [StreamWrite(stream, [event], state.version)])
        except WrongExpectedVersion:
            if attempt == _ATTEMPTS - 1:
                raise
            continue  # something was recorded meanwhile: erase what is there now
        shredded = await _shred(ledger, master_key, state, appended.recorded_at, objected_on, reason)
        log.info("subject_erased", tenant=tenant_id, source=source, event_id=appended.event_ids[0], reason=reason,
                 suppressed=objected_on is not None, keys_shredded=shredded.keys,
                 portal_links_removed=shredded.portal_links)
        return ErasureResult(
            subject=state.key, reason=reason, already_erased=False, event_id=appended.event_ids[0],
            position=appended.last_position, erased_at=appended.recorded_at, keys_shredded=shredded.keys,
            suppressed=objected_on is not None, objected_on=objected_on, portal_links_removed=shredded.portal_links,
        )
    raise AssertionError("unreachable")
