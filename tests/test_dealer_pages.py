"""AVG Beheer pages for the dealer's own questions: the reach dashboard (SVG chart, no
script), the lapse list, and who may see them."""

from __future__ import annotations

import re

import asyncpg

from services.portal.app import POOL
from tests.portal_support import World, login, make_world
from tests.test_eligibility_api import project


async def _world(aiohttp_client, settings) -> World:  # type: ignore[no-untyped-def]
    world = await make_world(aiohttp_client, settings)
    await project(world.client.app[POOL])
    return world


async def test_the_reach_page_shows_a_chart_and_the_figures_of_the_api_without_any_script(
    aiohttp_client, settings, pool: asyncpg.Pool
) -> None:
    from services.projector.reach import ReachCache

    world = await _world(aiohttp_client, settings)
    cookie = await login(world.client, "garage-a", world.users["garage-a:staff"])
    r = await world.client.get("/beheer/garage-a/bereik", headers=cookie)
    assert r.status == 200, await r.text()
    html = await r.text()
    assert "<svg" in html and "<script" not in html and 'role="img"' in html
    counts = await ReachCache(pool).counts("garage-a", _today())
    for cell in ("newsletter:email", "aftersales_service:post", "prospect:post", "prospect:email"):
        for j in range(3):
            shown = re.search(rf'data-cell="{cell}:{j}">(\d+)<', html)
            assert shown is not None and int(shown.group(1)) == counts.total(j, cell), (cell, j)
    assert re.search(r'data-cell="newsletter:email:0">1<', html)  # K1, a customer since a month
    assert re.search(r'data-cell="prospect:post:0">1<', html)  # P1, a prospect by post


async def test_a_user_of_another_dealer_cannot_see_the_reach_or_the_lapse_list(aiohttp_client, settings) -> None:
    world = await _world(aiohttp_client, settings)
    cookie = await login(world.client, "garage-b", world.users["garage-b:admin"])
    for path in ("/beheer/garage-a/bereik", "/beheer/garage-a/bereik/verloop"):
        assert (await world.client.get(path, headers=cookie)).status == 403


async def test_the_lapse_page_lists_who_loses_a_basis_and_refuses_a_huge_window(aiohttp_client, settings) -> None:
    world = await _world(aiohttp_client, settings)
    cookie = await login(world.client, "garage-a", world.users["garage-a:staff"])
    # P1 was acquired 10 days ago: its 3-month post term lapses within 90 days
    r = await world.client.get("/beheer/garage-a/bereik/verloop?days=90&category=prospect", headers=cookie)
    assert r.status == 200, await r.text()
    html = await r.text()
    assert "/klanten/dealer/P1" in html and "/klanten/dealer/K1" not in html
    assert "verloop.csv" not in html  # staff: no download of contact details
    bad = await world.client.get("/beheer/garage-a/bereik/verloop?days=100000", headers=cookie)
    assert bad.status == 422 and "366" in await bad.text()


def _today():  # type: ignore[no-untyped-def]
    from services.projector.clock import SystemClock

    return SystemClock().today()


async def test_staff_find_a_customer_by_plate_and_see_name_and_vehicle_on_the_customer_page(
    aiohttp_client, settings
) -> None:
    from schemas.api import Contact
    from tests.portal_support import OPERATOR

    world = await _world(aiohttp_client, settings)
    contact = Contact(name="Anna de Vries", email="anna@example.nl", licence_plate="GH-456-J", vehicle_make="Toyota",
                      vehicle_model="Yaris", street="Kerkstraat 5", postcode="1234 AB")
    await world.ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K5", "F5", _today(), contact)
    cookie = await login(world.client, "garage-a", world.users["garage-a:staff"])
    r = await world.client.get("/beheer/garage-a/klanten/zoeken", params={"q": "gh456j"}, headers=cookie)
    assert r.status == 200, await r.text()
    html = await r.text()
    assert "/klanten/dealer/K5" in html and "Anna de Vries" in html and "Toyota Yaris" in html
    r = await world.client.get("/beheer/garage-a/klanten/zoeken", params={"q": "1234AB 5"}, headers=cookie)
    assert "/klanten/dealer/K5" in await r.text()
    page = await (await world.client.get("/beheer/garage-a/klanten/dealer/K5", headers=cookie)).text()
    assert "Anna de Vries" in page and "GH-456-J" in page and "Toyota" in page
    other = await login(world.client, "garage-b", world.users["garage-b:staff"])
    r = await world.client.get("/beheer/garage-b/klanten/zoeken", params={"q": "gh456j"}, headers=other)
    assert r.status == 200 and "K5" not in await r.text() and "Anna" not in await r.text()
    assert (await world.client.get("/beheer/garage-a/klanten/zoeken", params={"q": "x"}, headers=other)).status == 403
