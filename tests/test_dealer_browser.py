"""The dealer's pages in a real browser: the reach chart renders without script, text has
WCAG AA contrast, and a search finds a customer by plate (screenshots in test-artifacts/)."""

from __future__ import annotations

import asyncpg
import pytest
from playwright.async_api import Page, expect

from schemas.api import Contact
from tests.portal_support import OPERATOR, World
from tests.test_dealer_pages import _today
from tests.test_eligibility_api import project
from tests.browser_support import browser, shot, url  # noqa: F401 (browser: the fixture)
from tests.test_portal_browser import _contrast_ok, log_in, page  # noqa: F401 (page: the fixture)

pytestmark = pytest.mark.browser


async def test_the_reach_chart_search_and_change_log_work_in_a_browser_with_aa_contrast(
        world: World, page: Page, pool: asyncpg.Pool) -> None:
    await world.ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K5", "F5", _today(),
                                      Contact(name="Anna de Vries", licence_plate="GH-456-J", vehicle_make="Toyota"))
    await project(pool)
    await log_in(page, world, "garage-a", "admin")
    await page.get_by_role("link", name="Bereik").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Bereik per categorie en kanaal")
    chart = page.get_by_role("img", name="Grafiek: bereikbare personen per categorie en kanaal")
    box = await chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 300
    assert await page.locator("svg rect[fill='#1f5f8b']").count() >= 25  # a bar per cell for today
    await _contrast_ok(page, "reach")
    await shot(page, "bereik")
    await page.get_by_role("link", name="Wie vervalt binnenkort?").click()
    await _contrast_ok(page, "lapses", texts=5)
    await page.get_by_role("link", name="Klant raadplegen").click()
    await page.get_by_label("Naam, e-mail, telefoon, postcode + huisnummer of kenteken").fill("gh 456 j")
    await page.get_by_role("button", name="Zoek op gegevens").click()
    await expect(page.get_by_role("table")).to_contain_text("Anna de Vries")
    await page.get_by_role("link", name="K5").click()
    await expect(page.get_by_role("heading", level=2, name="Contactgegevens en voertuig")).to_be_visible()
    await _contrast_ok(page, "customer with contact")
    await page.goto(url(world, "/beheer/garage-a/wijzigingen"))
    await _contrast_ok(page, "change log")
    await shot(page, "wijzigingen")
