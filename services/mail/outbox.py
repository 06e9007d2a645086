"""The mail outbox: mails are queued in PostgreSQL (``mail.outbox``) in the request that asks
for them and sent afterwards by a worker, so a slow or unreachable SMTP server never slows a
page or an API call, and never loses a mail: a mail leaves the queue only when the SMTP
server accepted it (or refused it for good, 5xx).

* **Sealed.** The message (recipient, subject line, bodies, which may hold a portal link) is
  sealed with the subject's own key (services/ledger/subject_keys.py). Erasure shreds the key:
  the worker can no longer open a pending mail and drops it.
* **At least once.** A worker claims due mails by moving their ``next_attempt_at`` past the
  time a send can take (``FOR UPDATE SKIP LOCKED``: several workers never claim the same
  mail). A worker that dies after the SMTP server accepted a mail and before marking it
  sent sends it again once the claim runs out; nothing is ever lost.
* **Retries.** A connection failure, a timeout or a 4xx answer puts the mail back with
  exponential back-off (5 s doubling, at most 15 minutes, 20 % jitter), for as long as it
  takes. A 5xx refusal marks it ``failed`` (logged with the SMTP answer).
* **Record.** Every sent mail becomes a ``MailSent`` event on the subject's stream: the
  mail id, its kind, the SMTP Message-ID, and the recipient and subject line sealed.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Final

import asyncpg
import msgspec
import structlog

from schemas.vocabulary import subject_stream
from schemas.events import Actor, MailSent, Sealed
from services.ledger.commands import CommandRejected, Context, Ledger
from services.ledger.store import StreamWrite, translate_errors
from services.ledger.subject_keys import SubjectKeys
from services.mail.compose import MailRefused, OutgoingMail, to_bytes
from services.mail.smtp import SmtpSender, permanent

log = structlog.get_logger(__name__)

MAIL_ACTOR: Final = Actor(kind="system", id="mail")
CLAIM_SECONDS: Final = 300  # a claimed mail comes due again after this (a worker died mid-send)
FIRST_RETRY_SECONDS: Final = 5.0
MAX_RETRY_SECONDS: Final = 900.0

_sealed_encoder: Final = msgspec.json.Encoder()
_sealed_decoder: Final = msgspec.json.Decoder(Sealed)
_mail_decoder: Final = msgspec.json.Decoder(OutgoingMail)


def retry_delay(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: 5 s doubling, capped at 15 minutes, +-20 %."""
    base = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.2)


class QueuedMail(msgspec.Struct, frozen=True):
    mail_id: str
    source: str
    customer_ref: str


class SendReport(msgspec.Struct, kw_only=True):
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0


class Outbox:
    """Queue mails for subjects and send them (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, keys: SubjectKeys, ledger: Ledger) -> None:
        self.pool = pool
        self.keys = keys
        self.ledger = ledger
        self.wake = asyncio.Event()  # set on enqueue: a worker in this process sends at once

    async def enqueue(self, tenant_id: str, source: str, ref: str, kind: str, mail: OutgoingMail, *,
                      created_by: str, mail_id: uuid.UUID | None = None) -> str:
        """Queue one mail; its mail id (``mail_id``: when the mail's own text names it)."""
        queued = await self.enqueue_many(tenant_id, kind, [(source, ref, mail)], created_by=created_by,
                                         mail_ids=[mail_id] if mail_id is not None else None)
        return queued[0].mail_id

    async def enqueue_many(self, tenant_id: str, kind: str, mails: Sequence[tuple[str, str, OutgoingMail]], *,
                           created_by: str, mail_ids: Sequence[uuid.UUID] | None = None,
                           conn: asyncpg.Connection | None = None) -> list[QueuedMail]:
        """Queue many mails in one transaction (a bulk mailing): each sealed with its
        subject's key (one key look-up for all), all inserted with one COPY."""
        streams = [subject_stream(tenant_id, source, ref) for source, ref, _ in mails]
        await self.ledger.refuse_erased(sorted(set(streams)))  # never make a key for an erased subject
        sealers = await self.keys.keys_for(tenant_id, sorted(set(streams)))
        rows, queued = [], []
        for i, ((source, ref, mail), stream) in enumerate(zip(mails, streams, strict=True)):
            mail_id = mail_ids[i] if mail_ids is not None else uuid.uuid4()
            sealed = sealers[stream].seal_json(_sealed_encoder.encode(mail))
            rows.append((mail_id, tenant_id, source, ref, kind, _sealed_encoder.encode(sealed).decode(), created_by))
            queued.append(QueuedMail(str(mail_id), source, ref))
        columns = ["mail_id", "tenant_id", "source", "customer_ref", "kind", "sealed", "created_by"]
        with translate_errors():
            if conn is not None:  # in the caller's transaction
                await conn.copy_records_to_table("outbox", schema_name="mail", records=rows, columns=columns)
            else:
                async with self.pool.acquire() as own:
                    await own.copy_records_to_table("outbox", schema_name="mail", records=rows, columns=columns)
        self.wake.set()
        return queued

    async def pending(self, tenant_id: str | None = None) -> int:
        with translate_errors():
            return int(await self.pool.fetchval(
                "SELECT count(*) FROM mail.outbox WHERE status = 'pending' AND ($1::text IS NULL OR tenant_id = $1)",
                tenant_id))

    async def status(self, mail_id: str) -> asyncpg.Record | None:
        with translate_errors():
            return await self.pool.fetchrow(
                "SELECT mail_id, tenant_id, source, customer_ref, kind, status, attempts, next_attempt_at, last_error,"
                " sent_at, message_id FROM mail.outbox WHERE mail_id = $1", uuid.UUID(mail_id))

    async def _claim(self, limit: int) -> list[asyncpg.Record]:
        with translate_errors():
            return await self.pool.fetch(
                "UPDATE mail.outbox o SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1"
                " FROM (SELECT mail_id FROM mail.outbox WHERE status = 'pending' AND next_attempt_at <= now()"
                " ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due WHERE o.mail_id = due.mail_id"
                " RETURNING o.mail_id, o.tenant_id, o.source, o.customer_ref, o.kind, o.sealed, o.attempts",
                limit, float(CLAIM_SECONDS))

    async def send_due(self, sender: SmtpSender, *, limit: int = 500, connections: int = 4) -> SendReport:
        """Claim up to ``limit`` due mails and send them over ``connections`` SMTP connections."""
        report = SendReport()
        claimed = await self._claim(limit)
        report.claimed = len(claimed)
        if not claimed:
            return report
        streams = sorted({subject_stream(r["tenant_id"], r["source"], r["customer_ref"]) for r in claimed})
        sealers = await self.keys.existing_sealers(streams)
        opened: list[tuple[asyncpg.Record, OutgoingMail]] = []
        dropped: list[uuid.UUID] = []
        for r in claimed:
            sealer = sealers.get(subject_stream(r["tenant_id"], r["source"], r["customer_ref"]))
            plain = sealer.open_json(_sealed_decoder.decode(r["sealed"])) if sealer is not None else None
            if plain is None:
                dropped.append(r["mail_id"])  # the subject was erased: the mail cannot be read
            else:
                opened.append((r, _mail_decoder.decode(plain)))
        if dropped:
            await self._finish(dropped, "dropped", "subject erased")
            report.dropped = len(dropped)
        sent: list[tuple[asyncpg.Record, OutgoingMail, str]] = []
        retry: list[tuple[asyncpg.Record, str]] = []
        failed: list[tuple[asyncpg.Record, str]] = []
        # Several connections at once: the SMTP server's round trips (MAIL, RCPT, DATA) overlap
        # with the building of the next messages. Each connection's failure only affects its share.
        shares = [opened[i::connections] for i in range(min(connections, len(opened)))]
        await asyncio.gather(*(self._send_share(sender, share, sent, retry, failed) for share in shares))
        if sent:
            await self._mark_sent(sent)
            report.sent = len(sent)
        if retry:
            await self._retry(retry)
            report.retried = len(retry)
        if failed:
            for r, error in failed:
                log.error("mail_failed", mail_id=str(r["mail_id"]), tenant=r["tenant_id"], error=error)
                await self._finish([r["mail_id"]], "failed", error)
            report.failed = len(failed)
        return report

    async def _send_share(self, sender: SmtpSender, share: list[tuple[asyncpg.Record, OutgoingMail]],
                          sent: list[tuple[asyncpg.Record, OutgoingMail, str]], retry: list[tuple[asyncpg.Record, str]],
                          failed: list[tuple[asyncpg.Record, str]]) -> None:
        """Send ``share`` over one connection, sorting each mail into sent / retry / failed."""
        done: set[uuid.UUID] = set()
        domain = sender.from_address.partition("@")[2]
        try:
            async with sender.connection() as client:
                for r, mail in share:
                    message_id = f"<{r['mail_id']}@{domain}>"
                    done.add(r["mail_id"])
                    try:
                        message = to_bytes(mail, sender.from_address, message_id)
                    except MailRefused as exc:
                        failed.append((r, f"refused: {exc}"))
                        continue
                    try:
                        await client.sendmail(sender.from_address, [mail.to], message)
                    except Exception as exc:  # noqa: BLE001 - classified here, never lost
                        (failed if permanent(exc) else retry).append((r, f"{type(exc).__name__}: {exc}"[:500]))
                        if not client.is_connected:
                            raise
                        continue
                    sent.append((r, mail, message_id))
        except Exception as exc:  # noqa: BLE001 - the server is away: everything unsent waits
            waiting = [(r, f"{type(exc).__name__}: {exc}"[:500]) for r, _ in share if r["mail_id"] not in done]
            retry += waiting
            log.warning("smtp_unavailable", error=type(exc).__name__, detail=str(exc)[:200], waiting=len(waiting))

    async def _finish(self, mail_ids: list[uuid.UUID], status: str, error: str | None) -> None:
        with translate_errors():
            await self.pool.execute(
                "UPDATE mail.outbox SET status = $2, last_error = $3 WHERE mail_id = ANY($1::uuid[])",
                mail_ids, status, error)

    async def _retry(self, rows: list[tuple[asyncpg.Record, str]]) -> None:
        with translate_errors():
            await self.pool.executemany(
                "UPDATE mail.outbox SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3"
                " WHERE mail_id = $1 AND status = 'pending'",
                [(r["mail_id"], retry_delay(r["attempts"]), error) for r, error in rows])

    async def _mark_sent(self, sent: list[tuple[asyncpg.Record, OutgoingMail, str]]) -> None:
        """Mark sent first (the SMTP server has them: never send again), then record the
        MailSent events, per tenant in one append (an erased subject's stream is skipped)."""
        with translate_errors():
            await self.pool.executemany(
                "UPDATE mail.outbox SET status = 'sent', sent_at = now(), message_id = $2, last_error = NULL"
                " WHERE mail_id = $1", [(r["mail_id"], message_id) for r, _, message_id in sent])
        by_tenant: dict[str, list[tuple[str, MailSent]]] = defaultdict(list)
        streams = sorted({subject_stream(r["tenant_id"], r["source"], r["customer_ref"]) for r, _, _ in sent})
        sealers = await self.keys.existing_sealers(streams)
        for r, mail, message_id in sent:
            stream = subject_stream(r["tenant_id"], r["source"], r["customer_ref"])
            sealer = sealers.get(stream)
            if sealer is None:
                continue  # erased between the send and now
            recipient = sealer.seal_json(_sealed_encoder.encode({"to": mail.to, "subject": mail.subject}))
            by_tenant[r["tenant_id"]].append(
                (stream, MailSent(mail_id=str(r["mail_id"]), kind=r["kind"], recipient=recipient,
                                  message_id=message_id)))
        ctx = Context(actor=MAIL_ACTOR, method="system")
        for tenant_id, events in by_tenant.items():
            try:
                await self.ledger.append_many(ctx, tenant_id, [StreamWrite(s, [e]) for s, e in events])
            except CommandRejected as exc:
                if exc.status != 410:
                    raise
                for stream, event in events:  # one of them was erased meanwhile: the others still count
                    try:
                        await self.ledger.append_many(ctx, tenant_id, [StreamWrite(stream, [event])])
                    except CommandRejected as again:
                        if again.status != 410:
                            raise
            except Exception as exc:  # noqa: BLE001 - the mails went out; say the record is missing
                log.error("mail_sent_not_recorded", tenant=tenant_id, mails=len(events), error=str(exc)[:200])

    async def run(self, sender: SmtpSender, stop: asyncio.Event, *, poll_seconds: float = 1.0,
                  batch: int = 500) -> None:
        """Send due mails until ``stop`` is set: at once after an enqueue in this process,
        else every ``poll_seconds`` (mails queued by other processes, retries)."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = await self.send_due(sender, limit=batch)
            except Exception:  # noqa: BLE001 - the database is away: try again later
                log.exception("outbox_error")
                report = SendReport()
            if report.claimed:
                log.info("outbox_sent", sent=report.sent, retried=report.retried, failed=report.failed,
                         dropped=report.dropped, ms=round((time.monotonic() - started) * 1000, 1))
            if report.claimed >= batch:
                continue  # more are due
            self.wake.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            await asyncio.wait(waits, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
