"""The portal in a real browser (headless chromium) for what mails lead to: the portal at phone
and desktop width (screenshots), unsubscribing from a mail link, the double opt-in
confirmation, and asking for a new link. WCAG contrast and labels are checked on each page.
Screenshots go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.async_api import Browser, Page, expect

from consent.subject import fold_subject
from schemas.vocabulary import subject_stream
from schemas.api import Contact
from schemas.events import DealerContactSet
from services.mail.localsmtp import LocalSmtp
from services.mail.tokens import unsubscribe_url
from services.portal.context import LINKS, MAIL
from services.settings import Settings
from tests.portal_support import OPERATOR, World, deliver, link_in
from tests.browser_support import ARTIFACTS, browser, shot, url  # noqa: F401 (browser: the fixture)
from tests.test_portal_browser import _contrast_ok

pytestmark = pytest.mark.browser

K = "garage-a/dealer/K9"




@pytest.fixture
async def world(world: World) -> World:
    """The shared portal world (tests/conftest.py), with the dealer's contact details and
    customer K9 who has an e-mail address."""
    await world.ledger.set_dealer_contact(OPERATOR, "garage-a", DealerContactSet(
        street="Stationsweg 12", postcode="3811 AB", city="Amersfoort", phone="033 123 45 67",
        email="info@garage-a.example"))
    await world.ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K9", "F99",
                                      dt.date.today() - dt.timedelta(days=40),
                                      Contact(name="Els de Boer", email="els@example.nl"))
    world.links[K] = await world.client.app[LINKS].issue("garage-a", "dealer", "K9", rotate=False, issued_by="tests")
    return world


async def new_page(browser: Browser, width: int, height: int = 900) -> Page:
    context = await browser.new_context(locale="en-GB", viewport={"width": width, "height": height})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    return page


async def unlabelled(page: Page) -> list[str]:
    return await page.evaluate(
        "[...document.querySelectorAll('select, input:not([type=hidden]), textarea')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name)")


@pytest.mark.parametrize("width", [375, 1280])
async def test_the_portal_at_phone_and_desktop_width_is_short_dutch_and_names_the_dealer(
        world: World, browser: Browser, width: int) -> None:
    page = await new_page(browser, width)
    try:
        await page.goto(url(world, world.url(K)))
        # the dealer's language, although this browser asks for English
        await expect(page.get_by_role("heading", level=1)).to_have_text("Uw privacy-instellingen")
        dealer = page.locator("address.dealer")
        for text in ("Autobedrijf A", "Stationsweg 12", "3811 AB Amersfoort", "033 123 45 67", "info@garage-a.example"):
            await expect(dealer).to_contain_text(text)
        # at the top: the dealer comes before the settings, the summary before the full policy
        boxes = {name: await page.locator(sel).bounding_box() for name, sel in (
            ("dealer", "address.dealer"), ("summary", "#summary-h"), ("settings", "#settings-h"),
            ("policy", "#policy-h"))}
        assert boxes["dealer"]["y"] < boxes["summary"]["y"] < boxes["settings"]["y"] < boxes["policy"]["y"]  # type: ignore[index]
        # nothing sticks out sideways on a phone, and every select can be used
        wide = await page.evaluate(f"[...document.querySelectorAll('body *')].filter(e => "
                                   f"e.getBoundingClientRect().right > {width} - 0.5 || e.scrollWidth > e.clientWidth + 0).map(e => e.tagName + '.' + "
                                   "e.className + ' ' + e.getBoundingClientRect().right + ' ' + e.scrollWidth + '/' + e.clientWidth)")
        assert await page.evaluate("document.documentElement.scrollWidth") <= width, '\n'.join(wide)
        assert await unlabelled(page) == []
        # the settings are compact: all 20 choices fit in about two screens on a phone, one on a desktop
        grid = await page.locator("table.grid").bounding_box()
        assert grid is not None and grid["height"] < (1900 if width < 600 else 600), grid
        assert await page.locator("table.grid select").count() == 20
        await expect(page.get_by_label("Nieuwsbrief per e-mail: Uw keuze")).to_be_visible()
        body = await page.locator("main").inner_text()
        assert "pv-" not in body and "Dealer" not in body and "K9" not in body
        await _contrast_ok(page, f"portal at {width} px")
        await shot(page, f"portal-{width}")
        await page.locator("section:has(#settings-h)").screenshot(path=str(ARTIFACTS / f"portal-{width}-settings.png"))
        # a phone user picks "Nee" and saves
        await page.get_by_label("Nieuwsbrief per e-mail: Uw keuze").select_option("opt_out")
        await page.get_by_role("button", name="Instellingen opslaan").click()
        await expect(page.get_by_role("status")).to_contain_text("Uw wijziging is opgeslagen.")
        await expect(page.locator("#pref\\.newsletter\\.email-state")).to_have_text("Nu: nee")
    finally:
        await page.context.close()


async def test_a_customer_unsubscribes_from_a_mail_link_with_one_click(world: World, browser: Browser) -> None:
    tokens = world.client.app[MAIL].tokens
    path = unsubscribe_url("", "garage-a", tokens.unsubscribe("garage-a", "dealer", "K9", "sales_campaign", "email"))
    page = await new_page(browser, 375)
    try:
        await page.goto(url(world, path))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Afmelden")
        await expect(page.locator("main")).to_contain_text("Verkoopacties per e-mail")
        await _contrast_ok(page, "unsubscribe page", texts=4)
        events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K9"))
        assert len(events) == 1  # opening the link changed nothing
        await shot(page, "unsubscribe")
        await page.get_by_role("button", name="Ja, meld mij af").click()
        await expect(page.get_by_role("status")).to_contain_text("U bent afgemeld voor Verkoopacties per e-mail")
        events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K9"))
        assert events[-1].event.method == "one_click"  # type: ignore[union-attr]
        assert fold_subject(events).preference("sales_campaign", "email") == "opt_out"  # type: ignore[union-attr]
    finally:
        await page.context.close()


async def test_a_customer_confirms_an_email_opt_in_from_the_mail(
        world: World, browser: Browser, settings: Settings, smtp: LocalSmtp) -> None:
    page = await new_page(browser, 1280)
    try:
        await page.goto(url(world, world.url(K)))
        await page.get_by_label("Nieuwsbrief per e-mail: Uw keuze").select_option("opt_in")
        await page.get_by_role("button", name="Instellingen opslaan").click()
        await expect(page.locator("#pref\\.newsletter\\.email-state")).to_have_text("Bevestig via de e-mail")
        [mail] = await deliver(world, settings, smtp)
        await page.goto(url(world, link_in(mail, "/bevestig/garage-a/")))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Aanmelding bevestigen")
        await expect(page.locator("main")).to_contain_text("Nieuwsbrief per e-mail")
        await _contrast_ok(page, "confirmation page", texts=4)
        await shot(page, "confirm-opt-in")
        await page.get_by_role("button", name="Ja, dat klopt").click()
        await expect(page.get_by_role("status")).to_contain_text("Uw aanmelding is bevestigd")
        events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K9"))
        assert events[-1].event_type == "OptInConfirmed"
        await page.goto(url(world, world.url(K)))
        await expect(page.locator("#pref\\.newsletter\\.email-state")).to_have_text("Nu: ja")
    finally:
        await page.context.close()


async def test_a_customer_who_lost_the_link_asks_for_a_new_one(
        world: World, browser: Browser, settings: Settings, smtp: LocalSmtp) -> None:
    await world.client.app[MAIL].addresses.catch_up()
    page = await new_page(browser, 375)
    try:
        await page.goto(url(world, "/link/garage-a"))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Nieuwe link aanvragen")
        assert await unlabelled(page) == []
        await _contrast_ok(page, "link request page", texts=4)
        await page.get_by_label("Uw e-mailadres").fill("els@example.nl")
        await page.get_by_role("button", name="Stuur mij een nieuwe link").click()
        await expect(page.get_by_role("status")).to_contain_text("Als dit e-mailadres bij Autobedrijf A bekend is")
        await shot(page, "link-request")
        [mail] = await deliver(world, settings, smtp)
        await page.goto(url(world, link_in(mail, "/p/")))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Uw privacy-instellingen")
    finally:
        await page.context.close()
