"""The portal and the AVG Beheer pages in a real browser (Playwright driving Debian's
chromium, headless). The pages have no JavaScript of their own: everything here is what a
person does with mouse and keyboard. Screenshots go to test-artifacts/ (git-ignored).

``make test`` installs chromium (apt) before the suite runs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, Page, expect

from schemas.vocabulary import subject_stream
from services.ledger.api_keys import issue_key
from services.projector.clock import SystemClock
from services.projector.projection import Projection, apply_until_caught_up
from tests.browser_support import browser, shot, url  # noqa: F401 (browser: the fixture)
from tests.portal_support import OPERATOR, PASSWORD, World

pytestmark = pytest.mark.browser  # `make test PYTEST_ARGS='-m "not browser"'` skips this file


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(locale="nl-NL", viewport={"width": 1280, "height": 900})
    p = await context.new_page()
    p.set_default_timeout(10_000)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    await context.close()
    assert not errors, errors


async def log_in(page: Page, world: World, tenant: str, role: str) -> None:
    await page.goto(url(world, "/login"))
    await page.get_by_label("Bedrijf (code)").fill(tenant)
    await page.get_by_label("E-mailadres").fill(world.users[f"{tenant}:{role}"])
    await page.get_by_label("Wachtwoord").fill(PASSWORD)
    await page.get_by_role("button", name="Inloggen").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("AVG Beheer")


async def test_a_customer_opts_out_of_newsletter_email_and_the_campaign_check_says_opted_out(
        world: World, page: Page, api: TestClient, pool: asyncpg.Pool) -> None:
    response = await page.goto(url(world, world.url("garage-a/dealer/K1")))
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Uw privacy-instellingen")
    await shot(page, "portal")
    # keyboard: the first Tab stop is the skip link; every form control has a label
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Naar de inhoud"
    unlabelled = await page.evaluate(
        "[...document.querySelectorAll('select, input:not([type=hidden]), textarea')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name)")
    assert unlabelled == []

    choice = page.get_by_label("Nieuwsbrief per e-mail: Uw keuze")
    await choice.focus()
    await choice.select_option("opt_out")
    await page.get_by_role("button", name="Instellingen opslaan").click()
    await expect(page.get_by_role("status")).to_contain_text("Uw wijziging is opgeslagen.")
    await expect(page.locator("#pref\\.newsletter\\.email-state")).to_have_text("Nu: nee")
    await expect(page.get_by_label("Nieuwsbrief per e-mail: Uw keuze")).to_have_value("opt_out")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download uw bevestiging (JSON)").click()
    download = await download_info.value
    assert download.suggested_filename.startswith("bevestiging-")

    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert events[-1].event.changed_by.kind == "subject" and events[-1].event.method == "portal"

    # The campaign sender's check over HTTP (services/projector/routes.py), once the
    # eligibility projector has applied the ledger (here straight from the event store).
    await apply_until_caught_up(Projection(pool, clock=SystemClock()))
    sender = await issue_key(pool, "garage-a", "sender", "browser test")
    check = {"category": "newsletter", "channel": "email", "send_date": dt.date.today().isoformat(),
             "subjects": [{"source": "dealer", "customer_ref": "K1"}]}
    r = await api.post("/v1/tenants/garage-a/eligibility:check", json=check,
                       headers={"Authorization": f"Bearer {sender.key}"})
    assert r.status == 200, await r.text()
    answer = (await r.json())["results"][0]
    assert (answer["eligible"], answer["reason"]) == (False, "opted_out")
    assert events[-1].event_id in answer["evidence"]
    r = await api.post("/v1/tenants/garage-a/eligibility:check", json={**check, "channel": "post"},
                       headers={"Authorization": f"Bearer {sender.key}"})
    assert (await r.json())["results"][0]["eligible"] is True


async def test_an_admin_moves_a_chapter_up_and_deactivates_another_and_the_portal_follows(
        world: World, page: Page) -> None:
    await log_in(page, world, "garage-a", "admin")
    await shot(page, "avg-beheer")
    await page.get_by_role("link", name="AVG Beleid").first.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("AVG Beleid")
    await shot(page, "avg-beleid")
    await page.get_by_role("button", name="Up: Wanneer verzamelen wij persoonsgegevens?").click()
    await expect(page.get_by_role("status")).to_contain_text("Opgeslagen.")
    await page.get_by_role("link", name="Bewerken: Wat is het doel van de verwerking van uw gegevens?").click()
    active = page.get_by_label("Actief")
    await expect(active).to_be_checked()
    await active.uncheck()
    await page.get_by_role("button", name="Wijzigingen opslaan").click()
    await expect(page.get_by_role("status")).to_contain_text("Opgeslagen.")
    titles = await page.locator("table.chapters tbody tr td:last-child").all_inner_texts()
    assert titles[:2] == ["Wanneer verzamelen wij persoonsgegevens?",
                          "Wie is verantwoordelijk voor gegevensverwerkingshandelingen?"]
    await page.get_by_role("link", name="AVG opt-in beleid").first.click()
    await expect(page.get_by_role("heading", name="Aandachtspunten")).to_be_visible()
    await shot(page, "avg-opt-in")

    portal = await page.context.new_page()
    await portal.goto(url(world, world.url("garage-a/dealer/K1")))
    shown = await portal.locator("article.chapter h3").all_inner_texts()
    assert shown[:2] == ["Wanneer verzamelen wij persoonsgegevens?",
                         "Wie is verantwoordelijk voor gegevensverwerkingshandelingen?"]
    assert "Wat is het doel van de verwerking van uw gegevens?" not in shown
    assert "Welke gegevens over u kunnen worden verzameld?" in shown


async def test_a_chapter_body_with_a_script_tag_is_shown_inert(world: World, page: Page) -> None:
    await log_in(page, world, "garage-a", "admin")
    await page.goto(url(world, "/beheer/garage-a/beleid/c01/bewerken"))
    await page.get_by_label("Body").fill(
        '<p>Veilig</p><script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'
        '<a href="javascript:window.pwned=3">klik</a>')
    await page.get_by_role("button", name="Wijzigingen opslaan").click()
    await expect(page.get_by_role("status")).to_contain_text("Opgeslagen.")
    # and one that reached the ledger unsanitised (e.g. through the HTTP API)
    await world.ledger.edit_chapter(OPERATOR, "garage-a", "c02", "Via de API",
                                    '<p>Ook veilig</p><script>window.pwned = 4</script>'
                                    '<svg onload="window.pwned = 5"></svg>', True)
    csp_violations: list[str] = []
    page.on("console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(url(world, world.url("garage-a/dealer/K1")))
    await expect(page.get_by_text("Veilig", exact=True)).to_be_visible()
    await expect(page.get_by_text("Ook veilig", exact=True)).to_be_visible()
    await page.get_by_text("klik", exact=True).click()  # its javascript: href was removed
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.locator("article script, article img, article svg, article [onerror]").count() == 0
    assert csp_violations == []  # nothing was even attempted: the markup never reached the page


async def test_a_forged_cross_site_form_post_without_the_csrf_token_is_refused(
        world: World, page: Page) -> None:
    target = url(world, world.url("garage-a/dealer/K1") + "/objection")

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form id="f" method="post" action="{target}"><input name="policy_version" value="x"></form>'
            '<script>document.getElementById("f").submit()</script>'))

    evil = web.Application()
    evil.router.add_get("/", evil_page)
    server = TestServer(evil, host="127.0.0.1")
    await server.start_server()
    try:
        async with page.expect_navigation(url=re.compile("/objection$")) as navigation:
            await page.goto(str(server.make_url("/")))
        response = await navigation.value
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", level=1)).to_have_text("Geen toegang")
    finally:
        await server.close()
    # the same form on the portal's own origin, but without its token, is refused too
    await page.goto(url(world, world.url("garage-a/dealer/K1")))
    await page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    async with page.expect_navigation() as navigation:
        await page.get_by_role("button", name="Afmelden voor alle marketing").click()
    assert (await navigation.value).status == 403  # type: ignore[union-attr]
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert [e.event_type for e in events] == ["InvoiceRecorded"]


async def test_a_staff_user_of_dealer_a_cannot_open_a_customer_of_dealer_b(world: World, page: Page) -> None:
    await log_in(page, world, "garage-a", "staff")
    response = await page.goto(url(world, "/beheer/garage-b/klanten/dealer/B1"))
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("Geen toegang")
    assert "Autobedrijf B" not in await page.content()
    # looking B1 up among dealer A's own customers finds nothing
    await page.goto(url(world, "/beheer/garage-a/klanten"))
    await page.get_by_label("Klantnummer").fill("B1")
    await page.get_by_role("button", name="Zoeken").click()
    await expect(page.get_by_role("alert")).to_contain_text("Geen klant gevonden")
    # its own customer opens, and a phone request is recorded with a reason
    await page.get_by_label("Klantnummer").fill("K1")
    await page.get_by_role("button", name="Zoeken").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Klant K1")
    await page.get_by_label("Nieuwsbrief per post: Uw keuze").select_option("opt_out")
    await page.locator("#pref-reason").fill("telefonisch verzoek")
    await page.get_by_role("button", name="Instellingen opslaan").click()
    await expect(page.get_by_role("status")).to_contain_text("Opgeslagen.")
    await expect(page.get_by_role("table").last).to_contain_text("telefonisch verzoek")
    await shot(page, "klant-raadplegen")


# WCAG 2.1 contrast of every visible piece of text against the background it is drawn on
# (the nearest opaque ancestor background, translucent layers blended in): the failures.
CONTRAST_FAILURES = """() => {
  const parse = c => { const p = c.match(/[\\d.]+/g).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const over = (top, under) => ({r: top.r * top.a + under.r * (1 - top.a), g: top.g * top.a + under.g * (1 - top.a),
                                 b: top.b * top.a + under.b * (1 - top.a), a: 1});
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                     return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = el => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    return layers.reverse().reduce((under, top) => over(top, under), {r: 255, g: 255, b: 255, a: 1});
  };
  const failures = [];
  let checked = 0;
  for (const el of document.querySelectorAll('body *')) {
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const s = getComputedStyle(el), box = el.getBoundingClientRect();
    if (s.display === 'none' || s.visibility === 'hidden' || box.width <= 1 || box.height <= 1) continue;
    if (el.closest(':disabled, option')) continue;  // WCAG exempts inactive controls
    const bg = background(el), fg = over(parse(s.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05), size = parseFloat(s.fontSize);
    const large = size >= 24 || (parseInt(s.fontWeight) >= 700 && size >= 18.66);
    checked++;
    if (ratio < (large ? 3 : 4.5)) failures.push(`${el.tagName}.${el.className}: ${el.textContent.trim().slice(0, 40)} (${ratio.toFixed(2)}:1)`);
  }
  return {checked, failures};
}"""


async def _contrast_ok(page: Page, what: str, *, texts: int = 10) -> None:
    result = await page.evaluate(CONTRAST_FAILURES)
    assert result["checked"] >= texts, (what, result["checked"])
    assert result["failures"] == [], (what, result["failures"])


async def _focus_is_visible(page: Page) -> None:
    await page.keyboard.press("Tab")
    outline = await page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [document.activeElement.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; })()")
    assert outline[1] != "none" and outline[2] >= 2, outline


async def test_text_on_the_portal_and_the_admin_pages_has_wcag_aa_contrast_and_focus_is_visible(
        world: World, page: Page) -> None:
    await page.goto(url(world, world.url("garage-a/dealer/K1")))
    await _contrast_ok(page, "portal")
    for _ in range(3):  # the skip link, the language links
        await _focus_is_visible(page)
    await page.get_by_role("button", name="Afmelden voor alle marketing").click()
    await expect(page.get_by_role("status")).to_be_visible()
    await _contrast_ok(page, "portal with the saved and objected banners")
    await page.goto(url(world, "/p/" + "x" * 33))
    await _contrast_ok(page, "neutral page", texts=5)
    await log_in(page, world, "garage-a", "admin")
    for path in ("/beheer/garage-a", "/beheer/garage-a/beleid", "/beheer/garage-a/beleid/c01/bewerken",
                 "/beheer/garage-a/opt-in", "/beheer/garage-a/klanten/dealer/K1", "/beheer/garage-a/gebruikers"):
        await page.goto(url(world, path))
        await _contrast_ok(page, path)
        await _focus_is_visible(page)


async def test_a_customer_opts_out_of_newsletter_email_with_the_keyboard_alone(world: World, page: Page) -> None:
    await page.goto(url(world, world.url("garage-a/dealer/K1")))

    async def tab_to(check: str) -> None:
        for _ in range(80):
            await page.keyboard.press("Tab")
            if await page.evaluate(f"(() => {{ const e = document.activeElement; return {check}; }})()"):
                return
        raise AssertionError(f"Tab never reached {check}")

    await tab_to("e.id === 'pref.newsletter.email'")
    await page.keyboard.type("Nee")  # type-ahead picks "Nee, liever niet"
    await expect(page.get_by_label("Nieuwsbrief per e-mail: Uw keuze")).to_have_value("opt_out")
    await tab_to("e.tagName === 'BUTTON' && e.textContent.trim() === 'Instellingen opslaan'")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status")).to_contain_text("Uw wijziging is opgeslagen.")
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert events[-1].event_type == "PreferencesChanged"
    assert [(c.category, c.channel, c.value) for c in events[-1].event.changes] == [("newsletter", "email", "opt_out")]
