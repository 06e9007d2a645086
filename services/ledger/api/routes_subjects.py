"""Subject commands (invoices, prospects, preferences, objection), bulk append, and
stream reads for admins and auditors."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import msgspec
from aiohttp import web

from schemas import api as s
from schemas.events import (
    Event,
    InvoiceRecorded,
    MarketingActivityRecorded,
    PreferencesChanged,
    ProspectRegistered,
    RecordedEvent,
)
from schemas.vocabulary import subject_stream, tenant_stream
from services.ledger.api.context import STORE, Call
from services.ledger.api.jsonapi import ApiError, ApiRoutes, json_response
from services.ledger.commands import CommandRejected, check_fact_date, check_given_on, needs_double_opt_in
from services.ledger.store import StreamWrite

routes = ApiRoutes(tag="subjects")
SUBJECT = "/v1/tenants/{tenant}/subjects/{source}/{ref}"
WRITERS = ("admin", "staff", "importer")
READERS = ("admin", "auditor")


def _subject(call: Call) -> tuple[str, str, str]:
    return call.param("tenant"), call.param("source"), call.param("ref")


@routes.post(SUBJECT + "/invoices", summary="Record an invoice (makes the subject a customer)",
             roles=("admin", "importer"), body=s.RecordInvoice, responses={201: s.AppendResponse})
async def record_invoice(call: Call) -> web.Response:
    """An invoice of the subject: it makes the subject a customer and restarts the soft opt-
    in terms (the term matrix counts from the last invoice date). `invoice_id` is the DMS's
    invoice number: the same number again with the same data appends nothing new when sent
    with the same Idempotency-Key; the nightly import recognises re-deliveries. Contact
    details are stored encrypted with the subject's own key."""
    b: s.RecordInvoice = call.body
    tenant, source, ref = _subject(call)
    return json_response(await call.ledger.record_invoice(
        call.ctx("import" if call.principal and call.principal.role == "importer" else "api"),
        tenant, source, ref, b.invoice_id, b.invoice_date, b.contact, b.expected_version), status=201)


@routes.post(SUBJECT + "/prospect", summary="Register a prospect (data acquired on a date)",
             roles=("admin", "importer", "staff"), body=s.RegisterProspect, responses={201: s.AppendResponse})
async def register_prospect(call: Call) -> web.Response:
    """Data of a non-customer was acquired on `acquired_on` (`how`: a bought list, a test-
    drive request, a fair). A prospect may only get prospect-category post within the
    prospect term, with the art. 14 disclosure; everything else needs consent."""
    b: s.RegisterProspect = call.body
    tenant, source, ref = _subject(call)
    return json_response(await call.ledger.register_prospect(
        call.ctx(), tenant, source, ref, b.acquired_on, b.how, b.contact, b.expected_version), status=201)


@routes.post(SUBJECT + "/preferences", summary="Change preferences per category and channel",
             roles=WRITERS, body=s.ChangePreferences, responses={201: s.AppendResponse})
async def change_preferences(call: Call) -> web.Response:
    """Sets the subject's own choice per category and channel: `opt_in` (explicit consent,
    until withdrawn), `opt_out`, or `default` (follow the term matrix). `method` says
    through what (phone, in_person, ...). `policy_version` names the policy text shown (a
    version the dealer published); without it the record names the version in force on the
    day given. `given_on` + `evidence_ref`: the customer gave it earlier, on paper or
    through the DMS; an opt-out then counts from that day, an opt-in only from today
    (docs/rules.md, Dated preferences). Every change gets a consent receipt."""
    b: s.ChangePreferences = call.body
    tenant, source, ref = _subject(call)
    ctx = call.ctx()
    result = await call.ledger.change_preferences(
        ctx, tenant, source, ref, b.changes, policy_version_shown=b.policy_version, note=b.note,
        expected=b.expected_version, given_on=b.given_on, evidence_ref=b.evidence_ref)
    if needs_double_opt_in(ctx, b.changes, b.evidence_ref):
        # Double opt-in: the e-mail opt-in counts once the customer confirms it from this mail.
        # A replayed request queues it too (once per opt-in: the mail's id is derived from
        # the event's): if the first try appended the opt-in and then failed to queue the
        # mail, the client's retry is what still sends it.
        from services.portal.routes_api import mail_service

        categories = [c.category for c in b.changes if c.channel == "email" and c.value == "opt_in"]
        await mail_service(call).send_opt_in_confirmation(tenant, source, ref, result.event_ids[0], categories)
    return json_response(result, status=201)


@routes.post(SUBJECT + "/objection", summary="Record an objection to all direct marketing (GDPR art. 21)",
             roles=WRITERS, body=s.RecordObjection, responses={201: s.AppendResponse})
async def record_objection(call: Call) -> web.Response:
    """The subject objects to all direct marketing (GDPR art. 21): every cell becomes
    `objected`, whatever the preferences and terms. `given_on` as for preferences: an
    objection given earlier counts from that day."""
    b: s.RecordObjection = call.body
    tenant, source, ref = _subject(call)
    return json_response(await call.ledger.record_objection(
        call.ctx(), tenant, source, ref, policy_version_shown=b.policy_version, note=b.note,
        expected=b.expected_version, given_on=b.given_on, evidence_ref=b.evidence_ref), status=201)


@routes.post(SUBJECT + "/objection/withdraw", summary="Withdraw the objection to direct marketing",
             roles=WRITERS, body=s.RecordObjection, responses={201: s.AppendResponse})
async def withdraw_objection(call: Call) -> web.Response:
    """The subject withdraws the objection: the own choices and the term matrix apply again,
    from the day recorded (never earlier)."""
    b: s.RecordObjection = call.body
    tenant, source, ref = _subject(call)
    return json_response(await call.ledger.record_objection(
        call.ctx(), tenant, source, ref, withdraw=True, policy_version_shown=b.policy_version, note=b.note,
        expected=b.expected_version, given_on=b.given_on, evidence_ref=b.evidence_ref), status=201)


@routes.post(SUBJECT + "/marketing-activities", summary="Record that a campaign reached the subject",
             roles=("admin", "sender", "importer"), body=s.RecordMarketingActivity, responses={201: s.AppendResponse})
async def record_marketing_activity(call: Call) -> web.Response:
    """A campaign reached the subject on `activity_on`. It restarts the retention clock of a
    prospect's data."""
    b: s.RecordMarketingActivity = call.body
    tenant, source, ref = _subject(call)
    event = MarketingActivityRecorded(activity_on=b.activity_on, category=b.category, channel=b.channel,
                                      campaign_id=b.campaign_id)
    return json_response(await call.ledger.record_marketing_activity(call.ctx(), tenant, source, ref, event),
                         status=201)


@routes.post("/v1/tenants/{tenant}/subjects:batch", summary="Append many subject events atomically (max 5,000)",
             roles=("admin", "importer"), body=s.BulkAppend, responses={201: s.AppendResponse})
async def bulk_append(call: Call) -> web.Response:
    """Up to 5,000 invoices, prospects and preference settings for many subjects in one
    atomic append: every item is checked before anything is written, and a bad item names
    its place (`$.items[12].invoice_date`)."""
    tenant = call.param("tenant")
    b: s.BulkAppend = call.body
    checked: set[str] = set()  # each data source once, not once per item
    for i, item in enumerate(b.items):  # everything is checked before anything is sealed
        if isinstance(item, s.BulkInvoice):
            check_fact_date(item.invoice_date, f"$.items[{i}].invoice_date")
        elif isinstance(item, s.BulkProspect):
            check_fact_date(item.acquired_on, f"$.items[{i}].acquired_on")
        else:
            try:
                check_given_on(item.given_on, item.evidence_ref)
            except CommandRejected as exc:
                raise ApiError(exc.status, exc.error, exc.message,
                               field=f"$.items[{i}].{(exc.field or '$.given_on').removeprefix('$.')}") from None
        if item.source in checked:
            continue
        try:
            await call.ledger.require_source(tenant, item.source)
        except Exception as exc:
            raise ApiError(422, "unknown_source", str(exc), field=f"$.items[{i}].source") from None
        checked.add(item.source)
    per_stream: dict[str, list[Event]] = defaultdict(list)
    ctx = call.ctx("import")
    policies: dict[dt.date | None, str] = {}  # the version in force per day given, looked up once
    for item in b.items:
        stream = subject_stream(tenant, item.source, item.customer_ref)
        event: Event
        if isinstance(item, s.BulkInvoice):
            event = InvoiceRecorded(invoice_id=item.invoice_id, invoice_date=item.invoice_date,
                                    personal=await call.ledger.seal_contact(tenant, stream, item.contact))
        elif isinstance(item, s.BulkProspect):
            event = ProspectRegistered(acquired_on=item.acquired_on, how=item.how,
                                       personal=await call.ledger.seal_contact(tenant, stream, item.contact))
        else:
            policy = policies.get(item.given_on)
            if policy is None:
                policy = policies[item.given_on] = (await call.ledger.consent_policy(tenant, None, item.given_on))[0]
            event = PreferencesChanged(changes=item.changes, changed_by=ctx.actor, method=item.method,
                                       policy_version=policy, policy_version_basis="in_force",
                                       given_on=item.given_on, evidence_ref=item.evidence_ref)
        per_stream[stream].append(event)
    result = await call.ledger.append_many(ctx, tenant, [StreamWrite(k, v) for k, v in per_stream.items()])
    return json_response(result, status=201)


def _page(stream_id: str, events: list[RecordedEvent], version: int, limit: int) -> s.StreamPage:
    return s.StreamPage(
        stream_id=stream_id,
        version=version,
        events=[
            s.StreamEvent(
                position=e.position, event_id=e.event_id, stream_id=e.stream_id, version=e.version,
                event_type=e.event_type, schema_version=e.schema_version, recorded_at=e.recorded_at,
                occurred_on=e.occurred_on, data=msgspec.to_builtins(e.event), metadata=msgspec.to_builtins(e.metadata),
                hash=e.hash, partition=e.partition,
            )
            for e in events
        ],
        next_version=events[-1].version + 1 if len(events) == limit else None,
    )


MAX_VERSION = 2**31 - 1  # ledger.events.version is an integer column


def _paging(call: Call) -> tuple[int, int]:
    q = call.request.query
    values: dict[str, int] = {}
    for name, default in (("from_version", "1"), ("limit", "500")):
        text = q.get(name, default)
        if not text.isascii() or not text.isdigit():
            raise ApiError(422, "validation_error", f"{name} must be a positive integer, got {text[:20]!r}", field=name)
        values[name] = int(text)
    if not 1 <= values["from_version"] <= MAX_VERSION:
        raise ApiError(422, "validation_error", f"from_version must be between 1 and {MAX_VERSION}",
                       field="from_version")
    if not 1 <= values["limit"] <= 5000:
        raise ApiError(422, "validation_error", "limit must be between 1 and 5000", field="limit")
    return values["from_version"], values["limit"]


_PAGING = (("from_version", "integer", False, "first stream version to return (default 1)"),
           ("limit", "integer", False, "at most this many events (default 500, max 5000)"))


@routes.get(SUBJECT + "/events", summary="Read a subject's stream (admins, auditors)", roles=READERS,
            responses={200: s.StreamPage}, query=_PAGING)
async def read_subject_stream(call: Call) -> web.Response:
    """The subject's events in order, pages of `limit` from `from_version`, with their
    hashes. Personal data appears only sealed (encrypted)."""
    tenant, source, ref = _subject(call)
    from_version, limit = _paging(call)
    stream = subject_stream(tenant, source, ref)
    store = call.request.app[STORE]
    events = await store.read_stream(stream, from_version, limit)
    version = await store.stream_version(stream)
    if version == 0:
        raise ApiError(404, "unknown_subject", "no events for this subject", field="ref")
    return json_response(_page(stream, events, version, limit))


@routes.get("/v1/tenants/{tenant}/events", summary="Read the tenant's own stream (policy, terms, settings)",
            roles=READERS, responses={200: s.StreamPage}, query=_PAGING)
async def read_tenant_stream(call: Call) -> web.Response:
    """The tenant's own events (settings, policy edits, term edits) in order, in pages."""
    tenant = call.param("tenant")
    from_version, limit = _paging(call)
    stream = tenant_stream(tenant)
    store = call.request.app[STORE]
    events = await store.read_stream(stream, from_version, limit)
    return json_response(_page(stream, events, await store.stream_version(stream), limit))
