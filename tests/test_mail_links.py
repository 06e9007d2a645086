"""Links in mails, through the portal: double opt-in confirmation, one-click unsubscribe
(RFC 8058), "I lost my link"; a real local SMTP server receives the mails."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from consent.eligibility import evaluate
from consent.subject import fold_subject
from schemas.vocabulary import subject_stream
from schemas.api import Contact
from services.mail.localsmtp import LocalSmtp
from services.mail.tokens import MailTokens, unsubscribe_url
from services.portal.context import LINKS, MAIL
from services.settings import Settings
from tests.portal_support import OPERATOR, World, csrf_of, deliver, link_in

K = "garage-a/dealer/K9"


@pytest.fixture
async def world(world: World) -> World:
    """The shared portal world (tests/conftest.py), with customer K9 who has an e-mail address."""
    await world.ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K9", "F99",
                                      dt.date.today() - dt.timedelta(days=40),
                                      Contact(name="Els de Boer", email="els@example.nl"))
    world.links[K] = await world.client.app[LINKS].issue("garage-a", "dealer", "K9", rotate=False, issued_by="tests")
    return world


async def events_of(world: World, ref: str = "K9"):  # type: ignore[no-untyped-def]
    return await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", ref))


async def state_of(world: World, ref: str = "K9"):  # type: ignore[no-untyped-def]
    return fold_subject(await events_of(world, ref))


async def newsletter_email_now(world: World) -> str:
    _, tenant = await world.ledger.require_tenant("garage-a", fresh=True)
    state = await state_of(world)
    return evaluate(state, tenant.terms, "newsletter", "email", dt.date.today() + dt.timedelta(days=700)).reason


async def opt_in_on_the_portal(world: World) -> None:
    html = await (await world.client.get(world.url(K))).text()
    version = re.search(r'name="policy_version" value="(pv-[0-9a-f]+)"', html)
    assert version
    r = await world.client.post(world.url(K) + "/preferences", allow_redirects=False, data={
        "csrf_token": csrf_of(html), "policy_version": version.group(1), "pref.newsletter.email": "opt_in"})
    assert r.status == 303


async def test_a_portal_opt_in_for_email_is_pending_until_confirmed_from_the_mail(
        world: World, settings: Settings, smtp: LocalSmtp) -> None:
    await opt_in_on_the_portal(world)
    # 700 days on, the soft opt-in (18 months) has lapsed: only the opt-in could allow it, and it waits
    assert await newsletter_email_now(world) == "opt_in_pending"
    [mail] = await deliver(world, settings, smtp)
    assert mail["To"] == "els@example.nl" and "Bevestig" in mail["Subject"]
    path = link_in(mail, "/bevestig/garage-a/")
    version_before = len(await events_of(world))
    # GET shows the question and changes nothing (mail scanners follow links)
    page = await world.client.get(path)
    html = await page.text()
    assert page.status == 200 and "Nieuwsbrief per e-mail" in html and "Ja, dat klopt" in html
    assert len(await events_of(world)) == version_before
    version = re.search(r'name="policy_version" value="(pv-[0-9a-f]+)"', html)
    assert version
    r = await world.client.post(path, data={"csrf_token": csrf_of(html), "policy_version": version.group(1)})
    assert r.status == 200 and "bevestigd" in await r.text()
    confirmed = (await events_of(world))[-1]
    assert confirmed.event_type == "OptInConfirmed"
    assert confirmed.event.mail_id in mail["Message-ID"]  # type: ignore[union-attr]
    assert confirmed.event.policy_version == version.group(1)  # type: ignore[union-attr]
    assert await newsletter_email_now(world) == "explicit_consent"
    # the receipt of the confirmation names its evidence
    receipt = await world.client.get(world.url(K) + f"/receipt/{confirmed.event_id}")
    body = await receipt.json()
    assert body["doubleOptIn"]["status"] == "confirmed" and body["doubleOptIn"]["mailId"] in mail["Message-ID"]
    assert body["services"][0]["purposes"][0]["category"] == "newsletter" and body["collectionMethod"] == "email"
    # reused: the neutral page, nothing appended
    count = len(await events_of(world))
    for again in (await world.client.get(path), await world.client.post(
            path, data={"csrf_token": csrf_of(html), "policy_version": version.group(1)})):
        assert again.status == 404 and "niet (meer) geldig" in await again.text()
    assert len(await events_of(world)) == count


async def test_forged_expired_and_other_tenant_confirmation_tokens_change_nothing(
        world: World, settings: Settings, smtp: LocalSmtp) -> None:
    await opt_in_on_the_portal(world)
    [mail] = await deliver(world, settings, smtp)
    path = link_in(mail, "/bevestig/garage-a/")
    token = path.rsplit("/", 1)[1]
    pref_event = next(e for e in reversed(await events_of(world)) if e.event_type == "PreferencesChanged")
    tokens = MailTokens(bytes(32))  # not the master key
    expired = world.client.app[MAIL].tokens.confirm("garage-a", "dealer", "K9", pref_event.event_id, "m",
                                                   dt.date.today() - dt.timedelta(days=30))
    forged = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    for bad in (f"/bevestig/garage-b/{token}", f"/bevestig/garage-a/{forged}", f"/bevestig/garage-a/{expired}",
                "/bevestig/garage-a/" + tokens.confirm("garage-a", "dealer", "K9", pref_event.event_id, "m",
                                                       dt.date.today()),
                "/bevestig/garage-a/x"):
        r = await world.client.get(bad)
        assert r.status == 404, bad
    assert await newsletter_email_now(world) == "opt_in_pending"


async def test_staff_recording_a_signed_form_needs_no_confirmation(world: World) -> None:
    from schemas.events import Actor, PreferenceSetting
    from services.ledger.commands import Context

    staff = Context(actor=Actor(kind="staff", id="user:1"), method="in_person")
    await world.ledger.change_preferences(staff, "garage-a", "dealer", "K9",
                                          [PreferenceSetting(category="newsletter", channel="email", value="opt_in")])
    assert await newsletter_email_now(world) == "explicit_consent"


async def test_one_click_unsubscribe_get_changes_nothing_post_records_it_once(world: World) -> None:
    tokens = world.client.app[MAIL].tokens
    path = unsubscribe_url("", "garage-a", tokens.unsubscribe("garage-a", "dealer", "K9", "newsletter", "email"))
    before = len(await events_of(world))
    r = await world.client.get(path)
    assert r.status == 200 and "Nieuwsbrief per e-mail" in await r.text()
    assert len(await events_of(world)) == before
    r = await world.client.post(path, data={"something": "else"})
    assert r.status == 400 and len(await events_of(world)) == before
    # the link survives portal-link rotation
    await world.client.app[LINKS].issue("garage-a", "dealer", "K9", rotate=True, issued_by="tests")
    r = await world.client.post(path, data={"List-Unsubscribe": "One-Click"})  # what mailbox providers send
    assert r.status == 200 and "afgemeld" in await r.text()
    last = (await events_of(world))[-1]
    assert last.event_type == "PreferencesChanged" and last.event.method == "one_click"  # type: ignore[union-attr]
    assert last.event.changed_by.kind == "subject"  # type: ignore[union-attr]
    assert (await state_of(world)).preference("newsletter", "email") == "opt_out"
    r = await world.client.post(path, data={"List-Unsubscribe": "One-Click"})  # reused: nothing new
    assert r.status == 200 and len(await events_of(world)) == before + 1


async def test_unsubscribe_from_all_marketing_records_an_objection(world: World) -> None:
    tokens = world.client.app[MAIL].tokens
    path = unsubscribe_url("", "garage-a", tokens.unsubscribe("garage-a", "dealer", "K9"))
    r = await world.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert r.status == 200
    assert (await events_of(world))[-1].event_type == "ObjectionRecorded"
    assert (await state_of(world)).objected


async def test_forged_other_tenant_and_erased_unsubscribe_tokens_get_the_neutral_page(
        world: World, settings: Settings) -> None:
    tokens = world.client.app[MAIL].tokens
    token = tokens.unsubscribe("garage-a", "dealer", "K9", "newsletter", "email")
    foreign = MailTokens(bytes(32)).unsubscribe("garage-a", "dealer", "K9", "newsletter", "email")
    before = len(await events_of(world))
    for path in (f"/u/garage-b/{token}", f"/u/garage-a/{token[:-3]}xyz", f"/u/garage-a/{foreign}", "/u/garage-a/%20"):
        for r in (await world.client.get(path), await world.client.post(path, data={"List-Unsubscribe": "One-Click"})):
            assert r.status == 404, path
    assert len(await events_of(world)) == before
    from services.audit.erasure import erase_subject
    from services.ledger.subject_keys import parse_master_key

    await erase_subject(world.ledger, parse_master_key(settings.master_key or ""), OPERATOR, "garage-a", "dealer", "K9")
    r = await world.client.post(f"/u/garage-a/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status == 404


async def test_a_customer_who_lost_the_link_gets_a_new_one_by_mail_and_nobody_learns_who_is_known(
        world: World, settings: Settings, smtp: LocalSmtp) -> None:
    await world.client.app[MAIL].addresses.catch_up()
    page = await world.client.get("/link/garage-a")
    html = await page.text()
    assert page.status == 200 and "Autobedrijf A" in html
    answers = []
    for address in ("Els@Example.nl", "nobody@example.nl"):
        r = await world.client.post("/link/garage-a", data={"csrf_token": csrf_of(html), "email": address})
        assert r.status == 200
        answers.append(await r.text())
    assert answers[0] == answers[1]  # the same answer whether or not the address is known
    [mail] = await deliver(world, settings, smtp)
    assert mail["To"] == "els@example.nl"
    new_link = link_in(mail, "/p/")
    assert (await world.client.get(new_link)).status == 200
    assert (await world.client.get(world.url(K))).status == 404  # the old link was rotated


async def test_link_requests_are_limited_per_address_and_bad_addresses_are_refused(
        world: World, settings: Settings, smtp: LocalSmtp) -> None:
    await world.client.app[MAIL].addresses.catch_up()
    html = await (await world.client.get("/link/garage-a")).text()
    for _ in range(5):
        r = await world.client.post("/link/garage-a", data={"csrf_token": csrf_of(html), "email": "els@example.nl"})
        assert r.status == 200
    assert len(await deliver(world, settings, smtp)) == 3  # burst of 3, then one a minute
    for bad in ("els@example.nl\r\nBcc: x@evil.nl", "els@example.nl, x@evil.nl", "not an address"):
        r = await world.client.post("/link/garage-a", data={"csrf_token": csrf_of(html), "email": bad})
        assert r.status == 422 and "geldig e-mailadres" in await r.text()
    r = await world.client.post("/link/garage-a", data={"email": "els@example.nl"})
    assert r.status == 403  # no CSRF token
    assert (await world.client.get("/link/no-such-dealer")).status == 404


async def test_an_admin_sets_the_dealer_contact_details_and_bad_values_are_named(world: World) -> None:
    from tests.portal_support import login

    cookie = await login(world.client, "garage-a", world.users["garage-a:admin"])
    html = await (await world.client.get("/beheer/garage-a", headers=cookie)).text()
    form = {"csrf_token": csrf_of(html), "street": "Stationsweg 1", "postcode": "3811 AB", "city": "Amersfoort",
            "phone": "033 123 45 67", "email": "info@garage-a.nl", "website": ""}
    r = await world.client.post("/beheer/garage-a/contact", data=form | {"email": "info@garage-a.nl\r\nBcc: x@y.nl"},
                                headers=cookie, allow_redirects=False)
    assert r.status == 422 and 'id="contact-email-error"' in await r.text()
    r = await world.client.post("/beheer/garage-a/contact", data=form | {"city": ""}, headers=cookie,
                                allow_redirects=False)
    assert r.status == 422 and 'id="contact-city-error"' in await r.text()
    r = await world.client.post("/beheer/garage-a/contact", data=form, headers=cookie, allow_redirects=False)
    assert r.status == 303
    _, tenant = await world.ledger.require_tenant("garage-a", fresh=True)
    assert tenant.contact is not None and tenant.contact.city == "Amersfoort" and tenant.contact.website is None
    staff = await login(world.client, "garage-a", world.users["garage-a:staff"])
    r = await world.client.post("/beheer/garage-a/contact", data=form | {"csrf_token": csrf_of(
        await (await world.client.get("/beheer/garage-a", headers=staff)).text())}, headers=staff)
    assert r.status == 403  # staff read, admins change


async def test_the_prospect_disclosure_text_is_edited_like_a_chapter_and_versioned(world: World) -> None:
    from tests.portal_support import login

    _, before = await world.ledger.require_tenant("garage-a", fresh=True)
    assert before.disclosure.startswith("U ontvangt deze brief van {dealer}")
    cookie = await login(world.client, "garage-a", world.users["garage-a:admin"])
    html = await (await world.client.get("/beheer/garage-a/beleid/kennismaking", headers=cookie)).text()
    assert before.disclosure_version in html
    version = re.search(r'name="version" value="(\d+)"', html)
    assert version
    data = {"csrf_token": csrf_of(html), "version": version.group(1),
            "body": "Wij schrijven u omdat u onze stand bezocht. Bezwaar? Bel {dealer}."}
    r = await world.client.post("/beheer/garage-a/beleid/kennismaking", data=data, headers=cookie,
                                allow_redirects=False)
    assert r.status == 303
    _, after = await world.ledger.require_tenant("garage-a", fresh=True)
    assert after.disclosure == data["body"] and after.disclosure_version != before.disclosure_version
    r = await world.client.post("/beheer/garage-a/beleid/kennismaking", data=data | {"body": "Andere tekst."},
                                headers=cookie)
    assert r.status == 409  # the tenant moved on since that form was shown
    r = await world.client.post("/beheer/garage-a/beleid/kennismaking", headers=cookie,
                                data=data | {"body": " ", "version": str(after.version)})
    assert r.status == 422


async def test_staff_send_the_portal_link_by_email_from_the_customer_page(
        world: World, settings: Settings, smtp: LocalSmtp) -> None:
    from tests.portal_support import login

    cookie = await login(world.client, "garage-a", world.users["garage-a:staff"])
    html = await (await world.client.get("/beheer/garage-a/klanten/dealer/K9", headers=cookie)).text()
    assert "Stuur link per e-mail" in html
    r = await world.client.post("/beheer/garage-a/klanten/dealer/K9/link/email", data={"csrf_token": csrf_of(html)},
                                headers=cookie, allow_redirects=False)
    assert r.status == 303 and "msg=link_mailed" in r.headers["Location"]
    page = await world.client.get(r.headers["Location"], headers=cookie)
    assert "binnen enkele minuten een e-mail" in await page.text()
    [mail] = await deliver(world, settings, smtp)
    assert mail["To"] == "els@example.nl"
    assert (await world.client.get(link_in(mail, "/p/"))).status == 200
    assert (await world.client.get(world.url(K))).status == 404  # the link sent earlier was replaced
    # a customer without an address: a clear message, nothing queued
    r = await world.client.post("/beheer/garage-a/klanten/dealer/K1/link/email", data={"csrf_token": csrf_of(html)},
                                headers=cookie)
    assert r.status == 422 and "geen e-mailadres bekend" in await r.text()
    assert await world.client.app[MAIL].outbox.pending("garage-a") == 0


async def test_a_mailing_that_cannot_be_queued_leaves_the_old_links_working(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    service = world.client.app[MAIL]
    original = service.outbox.enqueue_many

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        await original(*args, **kwargs)  # the rows are written in the mailing's transaction...
        raise RuntimeError("the database went away")  # ...which then fails

    monkeypatch.setattr(service.outbox, "enqueue_many", broken)
    with pytest.raises(RuntimeError):
        await service.send_portal_links("garage-a", [("dealer", "K9")], requested_by="tests")
    assert (await world.client.get(world.url(K))).status == 200  # the old link was not revoked
    assert await service.outbox.pending("garage-a") == 0  # and no mail with a dead link waits
