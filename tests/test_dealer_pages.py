"""AVG Beheer pages for the dealer's own questions: the reach dashboard (SVG chart, no
script), the lapse list, and who may see them."""

from __future__ import annotations

import re

import asyncpg

from services.portal.context import POOL
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


async def test_the_lapse_csv_holds_contact_details_is_for_admins_and_is_recorded_in_the_change_log(
    aiohttp_client, settings, pool: asyncpg.Pool
) -> None:
    import csv
    import datetime as dt
    import io

    from schemas.api import Contact
    from tests.portal_support import OPERATOR, csrf_of

    world = await _world(aiohttp_client, settings)
    contact = Contact(name="Piet Prospect", street="Laan 1", postcode="1234 AB", city="Zwolle")
    await world.ledger.register_prospect(OPERATOR, "garage-a", "dealer", "P2", _today() - dt.timedelta(days=20),
                                         "beurs", contact)
    await project(pool)
    staff = await login(world.client, "garage-a", world.users["garage-a:staff"])
    page = await world.client.get("/beheer/garage-a/bereik/verloop?days=90", headers=staff)
    r = await world.client.post("/beheer/garage-a/bereik/verloop.csv", headers=staff,
                                data={"csrf_token": csrf_of(await page.text()), "days": "90"})
    assert r.status == 403  # staff may see the list, not download contact details
    admin = await login(world.client, "garage-a", world.users["garage-a:admin"])
    page = await world.client.get("/beheer/garage-a/bereik/verloop?days=90&category=prospect", headers=admin)
    r = await world.client.post("/beheer/garage-a/bereik/verloop.csv", headers=admin,
                                data={"csrf_token": csrf_of(await page.text()), "days": "90", "category": "prospect"})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(await r.text()), delimiter=";"))
    by_ref = {x["customer_ref"]: x for x in rows}
    assert set(by_ref) == {"P1", "P2"} and by_ref["P2"]["name"] == "Piet Prospect"
    assert by_ref["P2"]["category"] == "prospect" and by_ref["P2"]["channel"] == "post"
    assert by_ref["P2"]["postcode"] == "1234 AB" and by_ref["P2"]["lapses_on"]
    bad = await world.client.post("/beheer/garage-a/bereik/verloop.csv", headers=admin,
                                  data={"csrf_token": csrf_of(await page.text()), "days": "999"})
    assert bad.status == 422
    log = await world.client.get("/beheer/garage-a/wijzigingen", headers=staff)
    assert log.status == 200
    html = await log.text()
    assert 'data-kind="export"' in html and "admin@garage-a.example.nl" in html and "2 regels" in html
    assert html.count('data-kind="export"') == 1  # the refused download was not recorded


async def test_the_change_log_shows_policy_term_and_agreement_changes_with_who_and_a_readable_diff(
    aiohttp_client, settings
) -> None:
    import datetime as dt

    from schemas.events import Actor, TermCell
    from services.ledger.commands import Context

    world = await _world(aiohttp_client, settings)
    ctx = Context(actor=Actor(kind="staff", id="user:x"), method="staff_portal")
    _, state = await world.ledger.require_tenant("garage-a", fresh=True)
    chapter = state.chapters[0]
    await world.ledger.edit_chapter(ctx, "garage-a", chapter.chapter_id, chapter.title + " (nieuw)",
                                    "<p>Een geheel nieuwe eerste alinea.</p>", chapter.active)
    await world.ledger.edit_terms(ctx, "garage-a", [TermCell(category="newsletter", channel="email", months=12)])
    await world.ledger.set_processor_agreement(ctx, "garage-a", True, dt.date(2026, 3, 1))
    cookie = await login(world.client, "garage-a", world.users["garage-a:staff"])
    html = await (await world.client.get("/beheer/garage-a/wijzigingen", headers=cookie)).text()
    assert f"Titel: {chapter.title} → {chapter.title} (nieuw)" in html
    assert "<ins>Een geheel nieuwe eerste alinea.</ins>" in html and "<del>" in html
    assert "Nieuwsbrief, E-mail: 18 → 12 maanden" in html
    assert "Nee → Ja (1 maart 2026)" in html
    assert html.index("Verwerkersovereenkomst") < html.index("Opt-in termijnen gewijzigd")  # newest first
    assert "Dealer aangemaakt" in html
    other = await login(world.client, "garage-b", world.users["garage-b:staff"])
    assert (await world.client.get("/beheer/garage-a/wijzigingen", headers=other)).status == 403


async def test_account_changes_made_on_the_users_page_are_in_the_change_log(aiohttp_client, settings) -> None:
    from tests.portal_support import csrf_of

    world = await _world(aiohttp_client, settings)
    admin = await login(world.client, "garage-a", world.users["garage-a:admin"])
    page = await world.client.get("/beheer/garage-a/gebruikers", headers=admin)
    r = await world.client.post("/beheer/garage-a/gebruikers", headers=admin, data={
        "csrf_token": csrf_of(await page.text()), "email": "nieuw@garage-a.example.nl", "role": "marketing"})
    assert r.status == 200, await r.text()
    user = next(u for u in await world.accounts.list_users("garage-a") if u.email == "nieuw@garage-a.example.nl")
    r = await world.client.post(f"/beheer/garage-a/gebruikers/{user.user_id}/status", headers=admin,
                                data={"csrf_token": csrf_of(await page.text()), "disabled": "1"},
                                allow_redirects=False)
    assert r.status == 303
    r = await world.client.post(f"/beheer/garage-a/gebruikers/{user.user_id}/unlock", headers=admin,
                                data={"csrf_token": csrf_of(await page.text())}, allow_redirects=False)
    assert r.status == 303
    html = await (await world.client.get("/beheer/garage-a/wijzigingen", headers=admin)).text()
    assert "Account aangemaakt: nieuw@garage-a.example.nl" in html and "Rol: marketing (mailingexport)" in html
    assert "Account uitgeschakeld: nieuw@garage-a.example.nl" in html
    assert "Inlogwachttijd opgeheven: nieuw@garage-a.example.nl" in html
    assert html.index("Inlogwachttijd opgeheven") < html.index("Account uitgeschakeld") < html.index("Account aangemaakt")
    assert html.count('data-kind="account"') == 3 and "admin@garage-a.example.nl" in html
