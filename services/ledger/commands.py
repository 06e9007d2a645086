"""The ledger's commands: validate against current state, seal personal data, append.

One place used by the HTTP API, the portal and the DMS import alike, so a preference
saved in the portal and one sent by a DMS pass the same checks and become the same
events. Commands raise :class:`CommandRejected` for requests that are well-formed but
not acceptable now (unknown tenant, unknown data source, missing chapter, ...).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from consent.policy import next_chapter_id, policy_version
from consent.seed import DEFAULT_CHAPTERS, default_term_cells
from consent.tenant import TenantHistory, TenantState, apply_tenant
from consent.terms import AMSTERDAM, fact_date_problem, ledger_day
from schemas.api import Contact
from schemas.events import (
    Actor,
    Chapter,
    ControllerContact,
    ControllerContactSet,
    DataSourceAdded,
    DealerContactSet,
    Event,
    InvoiceRecorded,
    MarketingActivityRecorded,
    Metadata,
    Method,
    ModuleActivationSet,
    PolicyVersionBasis,
    ObjectionRecorded,
    ObjectionWithdrawn,
    OptInConfirmed,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    PreferencesChanged,
    PreferenceSetting,
    ProcessorAgreementSet,
    ProspectDisclosureSet,
    ProspectRegistered,
    RetentionPolicySet,
    Sealed,
    TenantCreated,
    TermCell,
    TermMatrixEdited,
)
from schemas.vocabulary import DEFAULT_DATA_SOURCES, subject_stream, tenant_stream
from services.errors import Refused
from services.ledger.errors import StreamClosed, WrongExpectedVersion
from services.ledger.store import AppendRequest, AppendResult, EventStore, StreamWrite, translate_errors
from services.ledger.subject_keys import SubjectKeys

log = structlog.get_logger(__name__)


class CommandRejected(Refused):
    """A well-formed command that cannot be applied (HTTP 404/409/410/422): status, error id,
    message and field, answered by the API's error middleware as they are."""


def _erased(stream_id: str) -> CommandRejected:
    return CommandRejected(
        410, "subject_erased",
        f"{stream_id} was erased (GDPR art. 17): its personal data is destroyed and nothing more"
        " can be recorded for it", field="ref",
    )


def _looks_like_address(text: str) -> bool:
    local, at, domain = text.partition("@")
    return bool(at and local and domain and "@" not in domain and not any(c.isspace() for c in text)
                and "." in domain and not any(c in '<>,;"()[]\\' for c in text))


def needs_double_opt_in(ctx: Context, changes: Sequence[PreferenceSetting], evidence_ref: str | None = None) -> bool:
    """An e-mail opt-in given through the portal or the API (method ``portal`` / ``api``: the
    customer's own click, relayed) counts only once the customer confirms it from a mail
    (double opt-in). Staff recording a signed form or a call (methods ``in_person``,
    ``phone``, ``email``), a record that names its evidence (``evidence_ref``: the signed
    form or the DMS delivery it was given on) and the DMS import (``import``) are not asked
    for one."""
    return (ctx.method in ("portal", "api") and evidence_ref is None
            and any(c.channel == "email" and c.value == "opt_in" for c in changes))


class Context:
    """Who is asking, and how: becomes the events' metadata."""

    __slots__ = ("actor", "method", "request_id", "idempotency_key", "fingerprint")

    def __init__(self, actor: Actor, method: Method = "api", request_id: str | None = None,
                 idempotency_key: str | None = None, fingerprint: bytes = b"") -> None:
        self.actor = actor
        self.method = method
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint

    def metadata(self) -> Metadata:
        return Metadata(actor=self.actor, method=self.method, request_id=self.request_id,
                        correlation_id=self.request_id)


def check_given_on(given_on: dt.date | None, evidence_ref: str | None) -> None:
    """A dated preference (``given_on``) is a claim about the past: it must not be in the
    future, and it must name the evidence it rests on (a paper form, a DMS file)."""
    if given_on is None:
        if evidence_ref is not None:
            raise CommandRejected(422, "validation_error", "evidence_ref goes with given_on: the day the"
                                  " customer gave it, as the evidence shows", "$.given_on")
        return
    problem = fact_date_problem(given_on, ledger_day(dt.datetime.now(dt.timezone.utc)))
    if problem is not None:
        raise CommandRejected(422, "validation_error", f"given_on {problem}", "$.given_on")
    if evidence_ref is None:
        raise CommandRejected(422, "validation_error", "a preference given on an earlier day must name its"
                              " evidence (a form id, a DMS file): evidence_ref is required with given_on",
                              "$.evidence_ref")


def check_fact_date(day: dt.date, field: str) -> None:
    """422 naming ``field`` if ``day`` cannot be an invoice, acquisition or activity date."""
    problem = fact_date_problem(day, ledger_day(dt.datetime.now(dt.timezone.utc)))
    if problem is not None:
        raise CommandRejected(422, "validation_error", problem, field)


class Ledger:
    """The application service over the event store."""

    def __init__(self, pool: asyncpg.Pool, store: EventStore, keys: SubjectKeys) -> None:
        self.pool = pool
        self.store = store
        self.keys = keys
        # tenant_id -> (stream version, state); refreshed by reading only newer events.
        self._tenants: dict[str, tuple[int, TenantState]] = {}
        # tenant_id -> (stream version, id of the policy in force at that version): the id is
        # a sha256 over every visible chapter, 2.7% of an append's CPU when computed per request.
        self._policy_ids: dict[str, tuple[int, str]] = {}

    # -- tenants -------------------------------------------------------------------

    async def tenant(self, tenant_id: str, *, fresh: bool = False) -> tuple[int, TenantState] | None:
        """(version, state) of a tenant, or None if it does not exist."""
        cached = self._tenants.get(tenant_id)
        if cached is not None and not fresh:
            return cached
        version, state = cached if cached is not None else (0, None)
        for recorded in await self.store.read_stream(tenant_stream(tenant_id), from_version=version + 1):
            state = apply_tenant(state, recorded)
            version = recorded.version
        if state is None:
            return None
        self._tenants[tenant_id] = (version, state)
        return version, state

    async def require_tenant(self, tenant_id: str, *, fresh: bool = False) -> tuple[int, TenantState]:
        found = await self.tenant(tenant_id, fresh=fresh)
        if found is None:
            raise CommandRejected(404, "unknown_tenant", f"tenant {tenant_id!r} does not exist", field="tenant")
        return found

    async def create_tenant(self, ctx: Context, tenant_id: str, name: str) -> AppendResult:
        event = TenantCreated(
            tenant_id=tenant_id,
            name=name,
            data_sources=dict(DEFAULT_DATA_SOURCES),
            chapters=list(DEFAULT_CHAPTERS),
            terms=default_term_cells(),
        )
        return await self._append(ctx, tenant_id, tenant_stream(tenant_id), [event], expected=0)

    async def _tenant_command(
        self, ctx: Context, tenant_id: str, events: Sequence[Event], expected: int | None, version: int
    ) -> AppendResult:
        # Without a client-supplied version, guard against lost updates with the version
        # the command was validated against.
        return await self._append(
            ctx, tenant_id, tenant_stream(tenant_id), events, expected=version if expected is None else expected
        )

    async def set_processor_agreement(self, ctx: Context, tenant_id: str, signed: bool,
                                      signed_on: dt.date | None, expected: int | None = None) -> AppendResult:
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        if signed and signed_on is None:
            raise CommandRejected(422, "validation_error", "a signed agreement needs its signing date", "$.signed_on")
        if not signed and signed_on is not None:
            raise CommandRejected(422, "validation_error", "an unsigned agreement has no signing date", "$.signed_on")
        if signed_on is not None:  # the bounds of every fact date: not in the future, not before 1950
            check_fact_date(signed_on, "$.signed_on")
        return await self._tenant_command(ctx, tenant_id, [ProcessorAgreementSet(signed=signed, signed_on=signed_on)],
                                          expected, version)

    async def set_module(self, ctx: Context, tenant_id: str, active: bool, expected: int | None = None) -> AppendResult:
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        return await self._tenant_command(ctx, tenant_id, [ModuleActivationSet(active=active)], expected, version)

    async def add_chapter(self, ctx: Context, tenant_id: str, title: str, body: str, active: bool,
                          expected: int | None = None) -> tuple[str, AppendResult]:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        chapter_id = next_chapter_id(state.chapters)
        event = PolicyChapterAdded(chapter=Chapter(chapter_id=chapter_id, title=title, body=body, active=active))
        return chapter_id, await self._tenant_command(ctx, tenant_id, [event], expected, version)

    def _chapter_index(self, state: TenantState, chapter_id: str) -> int:
        for i, c in enumerate(state.chapters):
            if c.chapter_id == chapter_id:
                return i
        raise CommandRejected(404, "unknown_chapter", f"chapter {chapter_id!r} does not exist", field="chapter_id")

    async def edit_chapter(self, ctx: Context, tenant_id: str, chapter_id: str, title: str, body: str, active: bool,
                           expected: int | None = None) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        self._chapter_index(state, chapter_id)
        event = PolicyChapterEdited(chapter_id=chapter_id, title=title, body=body, active=active)
        return await self._tenant_command(ctx, tenant_id, [event], expected, version)

    async def set_chapter_active(self, ctx: Context, tenant_id: str, chapter_id: str, active: bool,
                                 expected: int | None = None) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        self._chapter_index(state, chapter_id)
        return await self._tenant_command(
            ctx, tenant_id, [PolicyChapterActiveSet(chapter_id=chapter_id, active=active)], expected, version
        )

    async def move_chapter(self, ctx: Context, tenant_id: str, chapter_id: str, *, direction: str | None = None,
                           to_index: int | None = None, expected: int | None = None) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        index = self._chapter_index(state, chapter_id)
        if (direction is None) == (to_index is None):
            raise CommandRejected(422, "validation_error", "give either direction or to_index", "$.direction")
        if direction is not None:
            to_index = max(0, min(len(state.chapters) - 1, index + (-1 if direction == "up" else 1)))
        assert to_index is not None
        if to_index >= len(state.chapters):
            raise CommandRejected(422, "validation_error",
                                  f"to_index must be below {len(state.chapters)}", "$.to_index")
        if to_index == index:
            raise CommandRejected(409, "no_change", "the chapter is already at that place", "$.to_index")
        event = PolicyChapterMoved(chapter_id=chapter_id, to_index=to_index)
        return await self._tenant_command(ctx, tenant_id, [event], expected, version)

    async def delete_chapter(self, ctx: Context, tenant_id: str, chapter_id: str,
                             expected: int | None = None) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        self._chapter_index(state, chapter_id)
        return await self._tenant_command(ctx, tenant_id, [PolicyChapterDeleted(chapter_id=chapter_id)],
                                          expected, version)

    async def edit_terms(self, ctx: Context, tenant_id: str, cells: Sequence[TermCell],
                         expected: int | None = None) -> AppendResult:
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        seen: set[tuple[str, str]] = set()
        for i, cell in enumerate(cells):
            if (cell.category, cell.channel) in seen:
                raise CommandRejected(422, "validation_error", "the same cell appears twice", f"$.cells[{i}]")
            seen.add((cell.category, cell.channel))
        return await self._tenant_command(ctx, tenant_id, [TermMatrixEdited(cells=list(cells))], expected, version)

    async def add_data_source(self, ctx: Context, tenant_id: str, source_id: str, label: str) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        if source_id in state.data_sources:
            raise CommandRejected(409, "source_exists", f"data source {source_id!r} already exists", "$.source_id")
        return await self._tenant_command(ctx, tenant_id, [DataSourceAdded(source_id=source_id, label=label)],
                                          None, version)

    async def set_controller_contact(self, ctx: Context, tenant_id: str, details: ControllerContact,
                                     expected: int | None = None) -> AppendResult:
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        return await self._tenant_command(ctx, tenant_id, [ControllerContactSet(details=details)], expected, version)
    async def set_dealer_contact(self, ctx: Context, tenant_id: str, contact: DealerContactSet,
                                 expected: int | None = None) -> AppendResult:
        """The dealer's address, phone and e-mail (portal header, e-mail footers). These go
        into mail headers and bodies, so a line break or other control character is refused."""
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        for field in ("street", "postcode", "city", "phone", "email", "website"):
            value = getattr(contact, field)
            if value is not None and not value.isprintable():
                raise CommandRejected(422, "validation_error", "no line breaks or control characters", f"$.{field}")
        if not _looks_like_address(contact.email):
            raise CommandRejected(422, "validation_error", "not an e-mail address (name@domain)", "$.email")
        return await self._tenant_command(ctx, tenant_id, [contact], expected, version)

    async def set_prospect_disclosure(self, ctx: Context, tenant_id: str, body: str,
                                      expected: int | None = None) -> AppendResult:
        version, state = await self.require_tenant(tenant_id, fresh=True)
        if not body.strip():
            raise CommandRejected(422, "validation_error", "the text is empty", "$.body")
        if body == state.disclosure:
            raise CommandRejected(409, "no_change", "the text is unchanged", "$.body")
        return await self._tenant_command(ctx, tenant_id, [ProspectDisclosureSet(body=body)], expected, version)

    async def set_retention(self, ctx: Context, tenant_id: str, customer_years: int, prospect_months: int) -> AppendResult:
        version, _ = await self.require_tenant(tenant_id, fresh=True)
        event = RetentionPolicySet(customer_years=customer_years, prospect_months=prospect_months)
        return await self._tenant_command(ctx, tenant_id, [event], None, version)

    # -- subjects ------------------------------------------------------------------

    async def require_source(self, tenant_id: str, source: str) -> TenantState:
        _, state = await self.require_tenant(tenant_id)
        if source not in state.data_sources:
            # Data sources are only ever added: refresh once before refusing.
            _, state = await self.require_tenant(tenant_id, fresh=True)
            if source not in state.data_sources:
                raise CommandRejected(
                    422, "unknown_source",
                    f"data source {source!r} does not exist (known: {', '.join(sorted(state.data_sources))})",
                    field="source",
                )
        return state

    async def seal_contact(self, tenant_id: str, stream_id: str, contact: Contact | None) -> Sealed | None:
        if contact is None or contact == Contact():
            return None
        await self.refuse_erased([stream_id])  # never make a new key for an erased subject
        return await self.keys.seal(tenant_id, stream_id, contact)

    async def seal_note(self, tenant_id: str, stream_id: str, note: str | None) -> Sealed | None:
        if not note:
            return None
        await self.refuse_erased([stream_id])
        return await self.keys.seal(tenant_id, stream_id, {"note": note})

    # -- erased subjects (GDPR art. 17, docs/erasure.md) --------------------------------

    async def subject_heads(self, stream_ids: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """(version, erased) per subject stream, one index probe each: SubjectErased is
        always a stream's last event, since nothing is appended after it."""
        heads = await self.store.stream_heads(stream_ids)
        return {s: (version, last_type == "SubjectErased") for s, (version, last_type) in heads.items()}

    async def refuse_erased(self, stream_ids: Sequence[str]) -> dict[str, int]:
        """Raise 410 if any subject stream was erased; else their current versions."""
        heads = await self.subject_heads(stream_ids)
        for stream_id, (_, erased) in heads.items():
            if erased:
                raise _erased(stream_id)
        return {stream_id: version for stream_id, (version, _) in heads.items()}

    async def record_invoice(self, ctx: Context, tenant_id: str, source: str, ref: str, invoice_id: str,
                             invoice_date: dt.date, contact: Contact | None = None,
                             expected: int | None = None) -> AppendResult:
        await self.require_source(tenant_id, source)
        check_fact_date(invoice_date, "$.invoice_date")
        stream = subject_stream(tenant_id, source, ref)
        event = InvoiceRecorded(invoice_id=invoice_id, invoice_date=invoice_date,
                                personal=await self.seal_contact(tenant_id, stream, contact))
        return await self._append(ctx, tenant_id, stream, [event], expected=expected)

    async def register_prospect(self, ctx: Context, tenant_id: str, source: str, ref: str, acquired_on: dt.date,
                                how: str, contact: Contact | None = None, expected: int | None = None) -> AppendResult:
        await self.require_source(tenant_id, source)
        check_fact_date(acquired_on, "$.acquired_on")
        stream = subject_stream(tenant_id, source, ref)
        event = ProspectRegistered(acquired_on=acquired_on, how=how,
                                   personal=await self.seal_contact(tenant_id, stream, contact))
        return await self._append(ctx, tenant_id, stream, [event], expected=expected)

    async def change_preferences(self, ctx: Context, tenant_id: str, source: str, ref: str,
                                 changes: Sequence[PreferenceSetting], *, policy_version_shown: str | None = None,
                                 note: str | None = None, expected: int | None = None,
                                 given_on: dt.date | None = None, evidence_ref: str | None = None) -> AppendResult:
        await self.require_source(tenant_id, source)
        check_given_on(given_on, evidence_ref)
        await self.require_published_policy(tenant_id, policy_version_shown)  # before anything is sealed
        seen: set[tuple[str, str]] = set()
        for i, change in enumerate(changes):
            if (change.category, change.channel) in seen:
                raise CommandRejected(422, "validation_error", "the same category and channel appear twice",
                                      f"$.changes[{i}]")
            seen.add((change.category, change.channel))
        stream = subject_stream(tenant_id, source, ref)
        sealed_note = await self.seal_note(tenant_id, stream, note)
        confirm = needs_double_opt_in(ctx, changes, evidence_ref)

        def record(policy: str, basis: PolicyVersionBasis) -> list[Event]:
            return [PreferencesChanged(
                changes=list(changes), changed_by=ctx.actor, method=ctx.method,
                policy_version=policy, policy_version_basis=basis, note=sealed_note,
                given_on=given_on, evidence_ref=evidence_ref, confirmation_required=confirm,
            )]

        return await self._append_naming_policy(ctx, tenant_id, stream, record, policy_version_shown, given_on,
                                                expected)

    async def confirm_opt_in(self, ctx: Context, tenant_id: str, source: str, ref: str, preference_event_id: str,
                             mail_id: str, *, policy_version_shown: str | None,
                             expected: int | None = None) -> AppendResult:
        """Record the customer's confirmation of a pending e-mail opt-in (double opt-in).
        The caller checked that the opt-in is still pending (consent.subject.pending_opt_ins)."""
        await self.require_source(tenant_id, source)
        await self.require_published_policy(tenant_id, policy_version_shown)
        event = OptInConfirmed(preference_event_id=preference_event_id, mail_id=mail_id,
                               policy_version=policy_version_shown, confirmed_by=ctx.actor, method=ctx.method)
        return await self._append(ctx, tenant_id, subject_stream(tenant_id, source, ref), [event], expected=expected)

    async def record_objection(self, ctx: Context, tenant_id: str, source: str, ref: str, *, withdraw: bool = False,
                               policy_version_shown: str | None = None, note: str | None = None,
                               expected: int | None = None, given_on: dt.date | None = None,
                               evidence_ref: str | None = None) -> AppendResult:
        await self.require_source(tenant_id, source)
        check_given_on(given_on, evidence_ref)
        await self.require_published_policy(tenant_id, policy_version_shown)  # before anything is sealed
        stream = subject_stream(tenant_id, source, ref)
        cls = ObjectionWithdrawn if withdraw else ObjectionRecorded
        sealed_note = await self.seal_note(tenant_id, stream, note)

        def record(policy: str, basis: PolicyVersionBasis) -> list[Event]:
            return [cls(changed_by=ctx.actor, method=ctx.method, policy_version=policy, policy_version_basis=basis,
                        note=sealed_note, given_on=given_on, evidence_ref=evidence_ref)]

        return await self._append_naming_policy(ctx, tenant_id, stream, record, policy_version_shown, given_on,
                                                expected)

    async def record_marketing_activity(self, ctx: Context, tenant_id: str, source: str, ref: str,
                                        activity: MarketingActivityRecorded) -> AppendResult:
        await self.require_source(tenant_id, source)
        check_fact_date(activity.activity_on, "$.activity_on")
        return await self._append(ctx, tenant_id, subject_stream(tenant_id, source, ref), [activity])

    async def require_published_policy(self, tenant_id: str, version_id: str | None) -> None:
        """A policy version named as shown must be one the tenant published: proof of consent
        (art. 7(1)) answers with the exact text behind it (services/audit/policy_history.py).
        None (nothing was shown, e.g. a DMS import) is allowed. The current version costs no
        query; an older one reads the tenant's stream."""
        if version_id is None:
            return
        for fresh in (False, True):
            _, state = await self.require_tenant(tenant_id, fresh=fresh)
            if state.policy_version == version_id:
                return
        history = TenantHistory(await self.store.read_stream(tenant_stream(tenant_id)))
        if history.state_by_policy_version(version_id) is None:
            raise CommandRejected(422, "unknown_policy_version",
                                  f"tenant {tenant_id!r} never published policy version {version_id!r}: name the"
                                  " version whose text was shown (GET /v1/tenants/{tenant}/audit/policy)",
                                  "$.policy_version")

    async def consent_policy(self, tenant_id: str, shown: str | None,
                             given_on: dt.date | None = None) -> tuple[str, PolicyVersionBasis]:
        """The policy version a consent record names, and on what basis: the version shown
        (it must be one the tenant published), else the version in force on the day the
        preference was given (``given_on``, else today). Every consent record names one
        (issue 16): a staff change on the customer's behalf, an API call or a DMS import
        showed the customer no text the ledger knows of, but the dealer's policy in force
        then still governed it; the receipt says "policy in force", not "policy shown"."""
        if shown is not None:
            await self.require_published_policy(tenant_id, shown)
            return shown, "shown"
        today = ledger_day(dt.datetime.now(dt.timezone.utc))
        if given_on is None or given_on >= today:
            return await self.current_policy_version(tenant_id), "in_force"
        history = TenantHistory(await self.store.read_stream(tenant_stream(tenant_id)))
        end_of_day = dt.datetime.combine(given_on + dt.timedelta(days=1), dt.time(), tzinfo=AMSTERDAM)
        try:
            return history.state_at(end_of_day - dt.timedelta(microseconds=1)).policy_version, "in_force"
        except LookupError:  # given before the tenant joined: the first policy it published
            return history.policy_versions()[0][0], "in_force"

    async def current_policy_version(self, tenant_id: str) -> str:
        return self._policy_id(tenant_id, *await self.require_tenant(tenant_id, fresh=True))

    def _policy_id(self, tenant_id: str, version: int, state: TenantState) -> str:
        known = self._policy_ids.get(tenant_id)
        if known is not None and known[0] == version:
            return known[1]
        pid = policy_version(state.chapters)
        self._policy_ids[tenant_id] = (version, pid)
        return pid

    async def _append_naming_policy(self, ctx: Context, tenant_id: str, stream_id: str,
                                    record: Callable[[str, PolicyVersionBasis], list[Event]], shown: str | None,
                                    given_on: dt.date | None, expected: int | None) -> AppendResult:
        """Append a consent record that names the policy version in force now, without a
        query of its own: the version comes from this process's copy of the tenant, and the
        append carries the tenant stream's version that copy was folded to as a
        precondition (an empty write with an expected version). The tenant's stream lives in
        the same log partition as the subject's, so the store checks it in the batch's own
        read and write; if another process changed the tenant meanwhile, the copy is brought
        up to date and the record named again. Reading the tenant stream on every request
        instead cost a round trip and ~40 µs of PostgreSQL CPU per append
        (docs/performance.md). A version shown, or a day given in the past, is looked up as
        before (``consent_policy``)."""
        today = ledger_day(dt.datetime.now(dt.timezone.utc))
        if shown is not None or (given_on is not None and given_on < today):
            policy, basis = await self.consent_policy(tenant_id, shown, given_on)
            return await self._append(ctx, tenant_id, stream_id, record(policy, basis), expected=expected)
        tenant = tenant_stream(tenant_id)
        for fresh in (False, True, True):
            version, state = await self.require_tenant(tenant_id, fresh=fresh)
            events = record(self._policy_id(tenant_id, version, state), "in_force")
            writes = [StreamWrite(stream_id, events, expected), StreamWrite(tenant, [], version)]
            try:
                result = await self._guarded_append(ctx, tenant_id, writes)
            except WrongExpectedVersion as exc:
                if exc.stream_id != tenant:
                    raise
                continue  # the tenant moved on since our copy: fold the new events, name again
            log.debug("appended", tenant=tenant_id, stream=stream_id, events=len(events),
                      position=result.last_position, replayed=result.replayed)
            return result
        raise CommandRejected(409, "tenant_changed", "the dealer's settings changed three times while this was"
                              " being recorded; send it again", field="tenant")

    # -- append --------------------------------------------------------------------

    async def _append(self, ctx: Context, tenant_id: str, stream_id: str, events: Sequence[Event],
                      expected: int | None = None) -> AppendResult:
        result = await self._guarded_append(ctx, tenant_id, [StreamWrite(stream_id, list(events), expected)])
        if stream_id.startswith("tenant/"):
            self._tenants.pop(tenant_id, None)
        log.debug("appended", tenant=tenant_id, stream=stream_id, events=len(events),
                 position=result.last_position, replayed=result.replayed)
        return result

    async def append_many(self, ctx: Context, tenant_id: str, writes: Sequence[StreamWrite]) -> AppendResult:
        """Several subject streams in one atomic append (bulk endpoint, DMS import)."""
        return await self._guarded_append(ctx, tenant_id, list(writes))

    async def _guarded_append(self, ctx: Context, tenant_id: str, writes: list[StreamWrite]) -> AppendResult:
        """Append, refusing erased subject streams (410) without a race: the store checks,
        under its append lock and in the append's own transaction, that no stream's last
        event is SubjectErased (no query of its own per request: docs/performance.md)."""
        request = AppendRequest(
            tenant_id=tenant_id, writes=writes, metadata=ctx.metadata(),
            idempotency_key=ctx.idempotency_key, fingerprint=ctx.fingerprint,
        )
        try:
            return await self.store.append(request)
        except StreamClosed as exc:
            raise _erased(exc.stream_id) from None
