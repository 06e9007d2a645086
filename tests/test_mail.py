"""Outbound e-mail (services/mail/): portal links by mail through the API, sent by the outbox
worker to a real local SMTP server (aiosmtpd), recorded as sealed MailSent events; a failing
SMTP server delays mails and loses none; erasure drops unsent mail; header injection refused."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from conftest import Dealer
from schemas.api import Contact
from services.ledger.api.context import LEDGER, POOL
from services.ledger.subject_keys import parse_master_key
from services.mail.compose import MailRefused, OutgoingMail, to_bytes, to_message
from services.mail.localsmtp import LocalSmtp
from services.mail.outbox import retry_delay
from services.mail.service import MailService
from services.settings import Settings

SUBJ = "/v1/tenants/garage-a/subjects/dealer"
INVOICE_DAY = (dt.date.today() - dt.timedelta(days=20)).isoformat()


def mail_service(api: TestClient, settings: Settings, smtp: LocalSmtp) -> MailService:
    s = msgspec.structs.replace(settings, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="privacy@garage-a.nl")
    ledger = api.app[LEDGER]
    return MailService(api.app[POOL], ledger.keys, ledger, s, parse_master_key(settings.master_key or ""))


async def customer(api: TestClient, dealer: Dealer, ref: str, email: str | None) -> None:
    contact = {"name": "Jan Jansen"} | ({"email": email} if email else {})
    r = await api.post(f"{SUBJ}/{ref}/invoices", json={"invoice_id": f"F-{ref}", "invoice_date": INVOICE_DAY,
                                                       "contact": contact}, headers=dealer.auth("importer"))
    assert r.status == 201, await r.text()


async def send_all(service: MailService) -> None:
    from services.mail.smtp import SmtpSender

    await service.outbox.send_due(SmtpSender(service.settings))


async def test_staff_mail_a_portal_link_through_the_api_and_a_real_smtp_server_receives_it(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp) -> None:
    await customer(api, dealer, "K1", "jan@example.nl")
    r = await api.post(f"{SUBJ}/K1/portal-link/email", json={}, headers=dealer.auth("staff"))
    assert r.status == 202, await r.text()
    mail_id = (await r.json())["mail_id"]
    assert smtp.messages() == []  # queued, not sent on the request path
    service = mail_service(api, settings, smtp)
    await send_all(service)
    [message] = smtp.messages()
    assert message["To"] == "jan@example.nl"
    assert "Autobedrijf garage-a" in message["From"] and "privacy@garage-a.nl" in message["From"]
    assert message["Message-ID"] == f"<{mail_id}@garage-a.nl>"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    url = next(line.strip() for line in text.splitlines() if "/p/" in line)
    assert "Privacy Portaal" in text and url in html
    # the link in the mail is the customer's live link (it opens the portal's link store)
    assert await service.links.lookup(url.rsplit("/", 1)[1]) is not None
    r = await api.get(f"/v1/tenants/garage-a/mails/{mail_id}", headers=dealer.auth("auditor"))
    status = await r.json()
    assert status["status"] == "sent" and status["attempts"] == 1
    # recorded as an event, the recipient sealed
    r = await api.get(f"{SUBJ}/K1/events", headers=dealer.auth("auditor"))
    events = (await r.json())["events"]
    sent = [e for e in events if e["event_type"] == "MailSent"]
    assert len(sent) == 1 and sent[0]["data"]["mail_id"] == mail_id
    assert sent[0]["data"]["kind"] == "portal_link"
    assert "jan@example.nl" not in await r.text()


async def test_a_failing_smtp_server_delays_mails_and_loses_none(
        api: TestClient, dealer: Dealer, settings: Settings, tmp_path: Path) -> None:
    for i in range(5):
        await customer(api, dealer, f"K{i}", f"klant{i}@example.nl")
    down = LocalSmtp(tmp_path / "mail").start()
    port = down.port
    down.stop()  # nobody listens on the port now
    service = mail_service(api, settings, down)
    r = await api.post("/v1/tenants/garage-a/portal-links/email",
                       json={"subjects": [{"source": "dealer", "customer_ref": f"K{i}"} for i in range(5)]},
                       headers=dealer.auth("admin"))
    assert r.status == 202, await r.text()
    assert (await r.json())["queued"] == 5
    from services.mail.smtp import SmtpSender

    report = await service.outbox.send_due(SmtpSender(service.settings))
    assert report.claimed == 5 and report.retried == 5 and report.sent == 0
    assert await service.outbox.pending("garage-a") == 5
    # the server comes back; the mails come due after their back-off
    up = LocalSmtp(tmp_path / "mail", port=port).start()
    try:
        async with api.app[POOL].acquire() as conn:
            await conn.execute("UPDATE mail.outbox SET next_attempt_at = now()")  # skip the wait
        report = await service.outbox.send_due(SmtpSender(service.settings))
        assert report.sent == 5
        assert sorted(m["To"] for m in up.messages()) == [f"klant{i}@example.nl" for i in range(5)]
        assert await service.outbox.pending("garage-a") == 0
    finally:
        up.stop()


async def test_the_worker_sends_queued_mail_without_being_asked(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp) -> None:
    await customer(api, dealer, "K1", "jan@example.nl")
    service = mail_service(api, settings, smtp)
    stop = asyncio.Event()
    worker = asyncio.create_task(service.run(stop))
    try:
        await service.send_portal_link("garage-a", "dealer", "K1", requested_by="tests")
        for _ in range(100):
            if smtp.messages():
                break
            await asyncio.sleep(0.05)
        assert len(smtp.messages()) == 1
    finally:
        stop.set()
        await worker


async def test_retries_back_off_exponentially_up_to_fifteen_minutes() -> None:
    assert 4 <= retry_delay(1) <= 6
    assert 8 <= retry_delay(2) <= 12
    assert 720 <= retry_delay(30) <= 1080


async def test_a_subject_without_an_address_or_erased_gets_a_clear_error(
        api: TestClient, dealer: Dealer) -> None:
    await customer(api, dealer, "K1", None)
    r = await api.post(f"{SUBJ}/K1/portal-link/email", json={}, headers=dealer.auth("staff"))
    assert r.status == 422 and (await r.json())["error"] == "no_email_address"
    r = await api.post(f"{SUBJ}/NOPE/portal-link/email", json={}, headers=dealer.auth("staff"))
    assert r.status == 404
    r = await api.post(f"{SUBJ}/K1/portal-link/email", json={"x": 1}, headers=dealer.auth("staff"))
    assert r.status == 422
    r = await api.post(f"{SUBJ}/K1/portal-link/email", json={}, headers=dealer.auth("sender"))
    assert r.status == 403
    r = await api.post("/v1/tenants/garage-a/portal-links/email", json={"subjects": []}, headers=dealer.auth("admin"))
    assert r.status == 422


async def test_erasure_drops_unsent_mail_and_the_address_index(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp) -> None:
    await customer(api, dealer, "K1", "jan@example.nl")
    service = mail_service(api, settings, smtp)
    await service.addresses.catch_up()
    assert await service.addresses.find("garage-a", " JAN@example.nl ") == [("dealer", "K1")]
    await service.send_portal_link("garage-a", "dealer", "K1", requested_by="tests")
    r = await api.post(f"{SUBJ}/K1/erasure", json={"confirm_ref": "K1"}, headers=dealer.auth("admin"))
    assert r.status in (200, 201), await r.text()
    await send_all(service)
    assert smtp.messages() == []
    assert await service.outbox.pending("garage-a") == 0
    assert await service.addresses.find("garage-a", "jan@example.nl") == []


async def test_header_injection_in_names_and_addresses_is_refused() -> None:
    good = OutgoingMail(to="jan@example.nl", from_name="Garage", subject="Hoi", text="t", html="<p>h</p>")
    for bad, field in ((msgspec.structs.replace(good, from_name="Garage\r\nBcc: x@evil.nl"), "from_name"),
                       (msgspec.structs.replace(good, to="jan@example.nl\r\nBcc: x@evil.nl"), "to"),
                       (msgspec.structs.replace(good, to="jan@example.nl, x@evil.nl"), "to"),
                       (msgspec.structs.replace(good, subject="Hoi\nBcc: x@evil.nl"), "subject")):
        for build in (to_message, to_bytes):  # the object and the bytes the worker sends
            with pytest.raises(MailRefused) as caught:
                build(bad, "privacy@garage-a.nl", "<1@garage-a.nl>")
            assert caught.value.field == field
    assert b"Bcc" not in to_bytes(good, "privacy@garage-a.nl", "<1@garage-a.nl>")


async def test_the_bytes_sent_are_a_well_formed_mail_with_encoded_non_ascii_headers() -> None:
    from email import message_from_bytes, policy

    mail = OutgoingMail(to="jan@example.nl", from_name="Garage Müller & Zn.", subject="Uw link – één klik",
                        text="Hé, zie https://x/p/abc\n", html="<p>Hé</p>", headers={"X-Test": "1"})
    parsed = message_from_bytes(to_bytes(mail, "privacy@garage-a.nl", "<1@garage-a.nl>"), policy=policy.default)
    assert parsed["From"].addresses[0].display_name == "Garage Müller & Zn."
    assert parsed["Subject"] == "Uw link – één klik" and parsed["X-Test"] == "1"
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hé, zie https://x/p/abc\n"
    assert parsed.get_body(("html",)).get_content() == "<p>Hé</p>"


async def test_an_email_opt_in_through_the_api_is_pending_and_a_confirmation_mail_is_queued(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp) -> None:
    await customer(api, dealer, "K1", "jan@example.nl")
    r = await api.post(f"{SUBJ}/K1/preferences", headers=dealer.auth("admin"), json={
        "changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]})
    assert r.status == 201, await r.text()
    r = await api.get(f"{SUBJ}/K1/events", headers=dealer.auth("auditor"))
    [pref] = [e for e in (await r.json())["events"] if e["event_type"] == "PreferencesChanged"]
    assert pref["data"]["confirmation_required"] is True
    service = mail_service(api, settings, smtp)
    await send_all(service)
    [message] = smtp.messages()
    assert message["To"] == "jan@example.nl" and "Bevestig" in message["Subject"]
    assert "/bevestig/garage-a/" in message.get_body(("plain",)).get_content()
    # staff recording a phone call (a signed form) needs no confirmation: no mail
    r = await api.post(f"{SUBJ}/K1/preferences", headers=dealer.auth("staff"), json={
        "method": "phone", "changes": [{"category": "sales_campaign", "channel": "email", "value": "opt_in"}]})
    assert r.status == 201
    await send_all(service)
    assert len(smtp.messages()) == 1


async def test_an_opt_in_whose_confirmation_mail_failed_to_queue_gets_it_from_the_retry_exactly_once(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.ledger.errors import StoreUnavailable
    from services.mail.outbox import Outbox

    await customer(api, dealer, "K1", "jan@example.nl")
    enqueue_many = Outbox.enqueue_many
    failures = [StoreUnavailable("the database went away between the append and the queueing")]

    async def fails_once(self: Outbox, *args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return await enqueue_many(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Outbox, "enqueue_many", fails_once)
    headers = {**dealer.auth("admin"), "Idempotency-Key": "opt-in-K1"}
    body = {"changes": [{"category": "newsletter", "channel": "email", "value": "opt_in"}]}
    r = await api.post(f"{SUBJ}/K1/preferences", headers=headers, json=body)
    assert r.status == 503, await r.text()  # the opt-in was appended, its mail was not queued
    answers = []
    for _ in range(2):  # the client retries, and once more
        r = await api.post(f"{SUBJ}/K1/preferences", headers=headers, json=body)
        assert r.status == 201, await r.text()
        answers.append((await r.json())["event_ids"])
    assert answers[0] == answers[1]
    r = await api.get(f"{SUBJ}/K1/events", headers=dealer.auth("auditor"))
    prefs = [e for e in (await r.json())["events"] if e["event_type"] == "PreferencesChanged"]
    assert [p["event_id"] for p in prefs] == answers[0]  # one opt-in recorded, not three
    service = mail_service(api, settings, smtp)
    assert await service.outbox.pending("garage-a") == 1
    await send_all(service)
    [message] = smtp.messages()
    assert message["To"] == "jan@example.nl" and "Bevestig" in message["Subject"]
    r = await api.post(f"{SUBJ}/K1/preferences", headers=headers, json=body)  # a late retry, after the send
    assert r.status == 201
    await send_all(service)
    assert len(smtp.messages()) == 1


async def test_a_dealer_name_with_a_line_break_never_reaches_a_mail_header(
        api: TestClient, dealer: Dealer, settings: Settings, smtp: LocalSmtp) -> None:
    from schemas.events import Actor
    from services.ledger.commands import CommandRejected, Context

    ledger = api.app[LEDGER]
    operator = Context(actor=Actor(kind="operator", id="tests"))
    await ledger.create_tenant(operator, "garage-x", "Garage X\r\nBcc: victim@example.nl")
    await ledger.record_invoice(operator, "garage-x", "dealer", "K1", "F1", dt.date.today() - dt.timedelta(days=3),
                                Contact(email="jan@example.nl"))
    service = mail_service(api, settings, smtp)
    with pytest.raises(CommandRejected) as refused:
        await service.send_portal_link("garage-x", "dealer", "K1", requested_by="tests")
    assert refused.value.status == 422 and refused.value.field == "name"
    assert await service.outbox.pending("garage-x") == 0
