"""What other services call to mail a customer: :class:`MailService`.

* :meth:`MailService.send_portal_link` / :meth:`send_portal_links`: a new personal portal
  link (the old one is revoked: only the newest works) in a Dutch mail to the address the
  dealer holds (the latest invoice or prospect record with an e-mail address);
* :meth:`MailService.request_link`: the portal's "I lost my link" form;
* :meth:`MailService.send_opt_in_confirmation`: the double opt-in mail.

All of them only queue (services/mail/outbox.py); the worker (:meth:`MailService.run`) sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from consent.tenant import TenantState
from schemas.vocabulary import subject_stream
from schemas.events import InvoiceCorrected, InvoiceRecorded, ProspectRegistered, RecordedEvent
from services.ledger.commands import CommandRejected, Ledger
from services.ledger.errors import IntegrityError
from services.ledger.subject_keys import SubjectKeys, SubjectSealer
from services.mail.addresses import AddressIndex
from services.mail.compose import MailRefused, OutgoingMail, check_address, check_header, compose
from services.mail.outbox import Outbox, QueuedMail
from services.mail.smtp import SmtpSender
from services.mail.tokens import CONFIRM_VALID_DAYS, MailTokens, confirm_url
from services.portal.links import LinkStore, portal_url
from services.settings import Settings

log = structlog.get_logger(__name__)

CONTACT_EVENTS: Final = (InvoiceRecorded.__name__, InvoiceCorrected.__name__, ProspectRegistered.__name__)
_CONFIRMATION_MAILS: Final = uuid.UUID("5b0f6f4e-2d1c-4f7a-9a39-6c1b0d5e8a21")  # namespace of their mail ids
_contact: Final = msgspec.json.Decoder(dict)


def confirmation_mail_id(preference_event_id: str) -> uuid.UUID:
    """The one mail id of the confirmation mail of a preference change: queueing it twice
    (a client's retry with the same Idempotency-Key) finds it already queued."""
    return uuid.uuid5(_CONFIRMATION_MAILS, preference_event_id)


class NoAddress(CommandRejected):
    def __init__(self, subject: str) -> None:
        super().__init__(422, "no_email_address",
                         f"the ledger holds no e-mail address for {subject} (send one with an invoice or prospect)",
                         field="ref")


class MailSkipped(msgspec.Struct, frozen=True):
    source: str
    customer_ref: str
    error: str


def latest_address(events: Sequence[RecordedEvent], sealer: SubjectSealer | None) -> str | None:
    """The e-mail address of the subject's latest contact record that has one."""
    if sealer is None:
        return None
    for recorded in reversed(events):
        personal = getattr(recorded.event, "personal", None)
        if personal is None:
            continue
        plain = sealer.open_json(personal)
        address = _contact.decode(plain).get("email") if plain is not None else None
        if isinstance(address, str) and address:
            return address
    return None


class MailService:
    def __init__(self, pool: asyncpg.Pool, keys: SubjectKeys, ledger: Ledger, settings: Settings,
                 master_key: bytes) -> None:
        self.pool = pool
        self.keys = keys
        self.ledger = ledger
        self.settings = settings
        self.outbox = Outbox(pool, keys, ledger)
        self.addresses = AddressIndex(pool, keys, master_key)
        self.links = LinkStore(pool)
        self.tokens = MailTokens(master_key)

    # -- portal links ---------------------------------------------------------------------

    async def send_portal_link(self, tenant_id: str, source: str, ref: str, *, requested_by: str) -> str:
        """Queue a mail with a new portal link; the mail id. Raises CommandRejected: 404
        unknown subject, 410 erased, 422 no e-mail address."""
        queued, skipped = await self.send_portal_links(tenant_id, [(source, ref)], requested_by=requested_by)
        if skipped:
            error = skipped[0].error
            subject = f"{tenant_id}/{source}/{ref}"
            if error == "no_email_address":
                raise NoAddress(subject)
            if error == "subject_erased":
                raise CommandRejected(410, "subject_erased", f"{subject} was erased (GDPR art. 17)", field="ref")
            if error == "unknown_subject":
                raise CommandRejected(404, "unknown_subject", f"the ledger holds nothing for {subject}", field="ref")
            raise CommandRejected(422, error, f"{subject}: {error}", field="ref")
        return queued[0].mail_id

    async def send_portal_links(self, tenant_id: str, subjects: Sequence[tuple[str, str]], *, requested_by: str
                                ) -> tuple[list[QueuedMail], list[MailSkipped]]:
        """A mailing: for each subject a new link in a mail, queued in one go. Subjects that
        are unknown, erased or without an e-mail address are skipped (and named)."""
        _, tenant = await self.ledger.require_tenant(tenant_id, fresh=True)
        try:
            check_header("tenant.name", tenant.name)
        except MailRefused:
            raise CommandRejected(422, "invalid_tenant_name", "the dealer's name holds a line break or another"
                                  " control character and cannot be put in a mail header", field="name") from None
        streams = {subject_stream(tenant_id, s, r): (s, r) for s, r in subjects}
        heads = await self.ledger.subject_heads(list(streams))
        events = await self.ledger.store.read_streams([s for s, (v, e) in heads.items() if v and not e],
                                                      CONTACT_EVENTS)
        by_stream: dict[str, list[RecordedEvent]] = {}
        for recorded in events:
            by_stream.setdefault(recorded.stream_id, []).append(recorded)
        sealers = await self.keys.existing_sealers(list(by_stream))
        skipped: list[MailSkipped] = []
        wanted: list[tuple[str, str, str]] = []  # source, ref, address
        for stream, (source, ref) in streams.items():
            version, erased = heads.get(stream, (0, False))
            if erased or not version:
                skipped.append(MailSkipped(source, ref, "subject_erased" if erased else "unknown_subject"))
                continue
            address = latest_address(by_stream.get(stream, []), sealers.get(stream))
            if address is None:
                skipped.append(MailSkipped(source, ref, "no_email_address"))
                continue
            try:
                check_address("to", address)
            except MailRefused:
                skipped.append(MailSkipped(source, ref, "invalid_email_address"))
                continue
            wanted.append((source, ref, address))
        queued: list[QueuedMail] = []
        if wanted:
            # The new links and the mails that carry them in ONE transaction: a customer's old
            # link is never revoked without the mail with the new one queued.
            async with self.pool.acquire() as conn, conn.transaction():
                tokens = await self.links.rotate_many(tenant_id, [(s, r) for s, r, _ in wanted],
                                                      issued_by=requested_by, conn=conn)
                mails = [(source, ref, self._link_mail(tenant, address, portal_url(self.settings.portal_base_url,
                                                                                   token)))
                         for (source, ref, address), token in zip(wanted, tokens, strict=True)]
                queued = await self.outbox.enqueue_many(tenant_id, "portal_link", mails, created_by=requested_by,
                                                        conn=conn)
        log.info("portal_links_queued", tenant=tenant_id, queued=len(queued), skipped=len(skipped))
        return queued, skipped

    def _link_mail(self, tenant: TenantState, address: str, url: str) -> OutgoingMail:
        return compose("portal_link", tenant, address, url=url)

    async def request_link(self, tenant_id: str, address: str) -> int:
        """"I lost my link": mail a new link to every subject of the tenant that gave this
        address. Returns how many were queued; the portal shows the same answer either way.
        The address index is kept current by the worker (:meth:`run`), seconds behind the ledger."""
        found = await self.addresses.find(tenant_id, address)
        if not found:
            return 0
        queued, _ = await self.send_portal_links(tenant_id, found, requested_by="subject:link-request")
        return len(queued)

    # -- double opt-in ----------------------------------------------------------------------

    async def send_opt_in_confirmation(self, tenant_id: str, source: str, ref: str, preference_event_id: str,
                                       categories: Sequence[str], *, lang: str = "nl") -> str | None:
        """Queue the mail that asks the customer to confirm an e-mail opt-in; its mail id, or
        None when the ledger holds no usable address (the opt-in then stays pending: it
        never counts without a confirmation). Idempotent per preference event: a mail
        already queued for it (or sent) is not queued again, so the caller may call this
        again after a failure, e.g. for a replayed request whose first try appended the
        opt-in but failed to queue its mail."""
        from consent.terms import ledger_day
        from services.portal.messages import Messages

        _, tenant = await self.ledger.require_tenant(tenant_id)
        stream = subject_stream(tenant_id, source, ref)
        events = await self.ledger.store.read_streams([stream], CONTACT_EVENTS)
        # No contact record, no address: the key lookup (a second query) only when one exists.
        sealer = (await self.keys.existing_sealers([stream])).get(stream) if events else None
        address = latest_address(events, sealer)
        if address is None:
            log.warning("opt_in_unconfirmable", tenant=tenant_id, why="no e-mail address")
            return None
        try:
            check_address("to", address)
            check_header("tenant.name", tenant.name)
        except MailRefused as exc:
            log.warning("opt_in_unconfirmable", tenant=tenant_id, why=exc.field)
            return None
        mail_id = confirmation_mail_id(preference_event_id)
        today = ledger_day(dt.datetime.now(dt.timezone.utc))
        token = self.tokens.confirm(tenant_id, source, ref, preference_event_id, str(mail_id), today)
        t = Messages(lang)  # type: ignore[arg-type]
        mail = compose("opt_in_confirmation", tenant, address, lang,
                       url=confirm_url(self.settings.portal_base_url, tenant_id, token),
                       categories=[t.category(c) for c in categories], valid_days=CONFIRM_VALID_DAYS)
        try:
            return await self.outbox.enqueue(tenant_id, source, ref, "opt_in_confirmation", mail,
                                             created_by="subject:opt-in", mail_id=mail_id)
        except IntegrityError:
            # No existence check before the insert: that would be a query on every opt-in;
            # the primary key answers it only on the rare second try.
            if await self.outbox.status(str(mail_id)) is None:
                raise
            return str(mail_id)

    # -- the worker -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued mails and keep the address index current until ``stop`` is set."""
        if not self.settings.smtp_host:
            log.warning("mail_not_sent", why="LEDGER_SMTP_HOST is not set: mails stay queued")
            return
        sender = SmtpSender(self.settings)

        async def index() -> None:
            while not stop.is_set():
                try:
                    await self.addresses.catch_up()
                except Exception:  # noqa: BLE001 - the database is away: try again later
                    log.exception("address_index_error")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)

        await asyncio.gather(self.outbox.run(sender, stop), index())
