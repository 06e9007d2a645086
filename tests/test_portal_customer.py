"""The customer portal without a browser: token lookup, neutral page, headers, CSRF, rate
limit, saving preferences and objections as ledger events, the receipt."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from consent.eligibility import evaluate
from consent.subject import fold_subject
from schemas.vocabulary import subject_stream
from services.portal.context import LINKS
from services.portal.links import split_token
from services.portal.security import CSP
from tests.portal_support import OPERATOR, World, csrf_of, make_world
from tests.raw_http import raw_request


async def test_a_portal_page_shows_the_dealer_the_policy_in_order_and_the_settings_explained(world: World) -> None:
    r = await world.client.get(world.url("garage-a/dealer/K1"))
    assert r.status == 200
    html = await r.text()
    assert "Autobedrijf A" in html
    assert 'lang="nl"' in html
    # active chapters only, in the dealer's order
    assert html.index("Wie is verantwoordelijk") < html.index("Wanneer verzamelen wij") < html.index("Hoe lang bewaren")
    assert "Aan wie geven we internationale toegang" not in html  # inactive in the seed
    assert "Nieuwsbrief per e-mail" in html and "Onderhoudsherinneringen per post" in html
    assert re.search(r"Nu: ja, tot \d+-\d+-\d{4}", html)
    # one compact table: a row per kind of message, a column per channel, one line of help
    grid = html.split('<table class="grid">')[1].split("</table>")[0]
    assert grid.count("<tr>") == 1 + 4 and grid.count('<th scope="col">') == 1 + 5
    assert "Bij Automatisch ontvangt u berichten alleen zolang" in html
    # the policy summary comes before the settings, the full text after them
    assert html.index("In het kort") < html.index('id="settings-h"') < html.index('id="policy-h"')
    # no internal ids or jargon: no version hash, no data-source label, no customer number
    visible = re.sub(r"<[^>]+>", " ", html)
    assert "pv-" not in visible and "Dealer" not in visible and "K1" not in visible


async def test_english_is_served_when_the_customer_picks_it_and_dutch_otherwise(world: World) -> None:
    r = await world.client.get(world.url("garage-a/dealer/K1") + "?lang=en")
    html = await r.text()
    assert 'lang="en"' in html and "Newsletter by e-mail" in html and "Your settings" in html
    assert 'action="/p/' in html and "?lang=en" in html  # forms keep the language
    # the dealer's language, not the browser's: an English browser still gets Dutch first
    r = await world.client.get(world.url("garage-a/dealer/K1"), headers={"Accept-Language": "en-GB,en;q=0.9,nl;q=0.5"})
    html = await r.text()
    assert 'lang="nl"' in html and "Uw privacy-instellingen" in html and 'hreflang' not in html
    assert '?lang=en"' in html  # one click to English


LANG_LINK = re.compile(r'<a href="([^"]*)" lang="(nl|en)"')


async def test_the_language_links_of_a_404_page_never_lead_off_site_whatever_the_path(world: World) -> None:
    """The raw path used to be echoed: ``GET //evil.example/x`` linked to ``//evil.example/x?lang=en``.
    Sent over a raw socket: a client library would read ``//evil.example`` as a host."""
    host, port = world.client.host, world.client.port
    for path in (b"//evil.example/x", b"/\\evil.example", b"//evil.example", b"/%2F%2Fevil.example/x",
                 b"/\\/evil.example/x?a=b", b"/beheer//evil.example"):
        status, body = await raw_request(host, port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                         b"Connection: close\r\n\r\n")
        html = body.decode()
        assert status == 404, (path, status)
        links = LANG_LINK.findall(html)
        assert {lang for _, lang in links} == {"nl", "en"}, (path, html)
        for href, lang in links:
            assert href.startswith("?") and "evil" not in href, (path, href)
            assert f"lang={lang}" in href
    # A page that matched a route links to that route, built from its parameters.
    html = await (await world.client.get(world.url("garage-a/dealer/K1") + "?lang=en")).text()
    assert dict((lang, href) for href, lang in LANG_LINK.findall(html)) == {
        "nl": world.url("garage-a/dealer/K1") + "?lang=nl", "en": world.url("garage-a/dealer/K1") + "?lang=en"}


async def test_unknown_malformed_and_revoked_tokens_get_the_same_neutral_page(world: World) -> None:
    valid = world.links["garage-a/dealer/K1"]
    unknown = ("A" if valid[0] != "A" else "B") + valid[1:]
    wrong_verifier = valid[:11] + ("x" if valid[11] != "x" else "y") + valid[12:]
    assert await world.client.app[LINKS].revoke("garage-a", "dealer", "P1", revoked_by="tests")
    bodies = set()
    for token in (unknown, wrong_verifier, "short", world.links["garage-a/dealer/P1"]):
        r = await world.client.get(f"/p/{token}")
        assert r.status == 404
        body = await r.text()
        assert "Link niet geldig" in body and "Autobedrijf" not in body
        bodies.add(body.replace(token, "TOKEN"))
    assert len(bodies) == 1


async def test_tokens_are_long_random_and_stored_only_as_hashes(world: World, pool) -> None:  # type: ignore[no-untyped-def]
    token = world.links["garage-a/dealer/K1"]
    assert len(token) == 33  # 11 + 22 base64url characters = 64 + 128 random bits
    rows = await pool.fetch("SELECT * FROM portal.links")
    dump = repr([dict(r) for r in rows])
    assert token not in dump and token[:11] not in dump and token[11:] not in dump
    selector_hash, verifier_hash = split_token(token)  # type: ignore[misc]
    assert selector_hash == hashlib.sha256(token[:11].encode()).digest()
    row = await pool.fetchrow("SELECT verifier_hash FROM portal.links WHERE selector_hash = $1", selector_hash)
    assert bytes(row["verifier_hash"]) == verifier_hash


async def test_rotating_a_link_revokes_the_old_one(world: World) -> None:
    old = world.links["garage-a/dealer/K1"]
    new = await world.client.app[LINKS].issue("garage-a", "dealer", "K1", rotate=True, issued_by="tests")
    assert new != old
    assert (await world.client.get(f"/p/{old}")).status == 404
    assert (await world.client.get(f"/p/{new}")).status == 200


async def test_every_page_has_strict_security_headers_and_is_not_cached(world: World) -> None:
    for path in (world.url("garage-a/dealer/K1"), "/p/nonsense", "/login"):
        r = await world.client.get(path)
        h = r.headers
        assert h["Content-Security-Policy"] == CSP
        assert "script-src" not in CSP and "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
        assert h["X-Frame-Options"] == "DENY"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Cache-Control"] == "no-store"
        assert "<script" not in (await r.text()).lower()


async def _form(world: World, key: str, lang: str = "") -> tuple[str, str, str]:
    r = await world.client.get(world.url(key) + lang)
    html = await r.text()
    version = re.search(r'name="policy_version" value="(pv-[0-9a-f]+)"', html)
    assert version
    return html, csrf_of(html), version.group(1)


async def test_a_customer_opting_out_of_newsletter_email_appends_a_subject_event(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/preferences", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version,
                                      "pref.newsletter.email": "opt_out", "pref.newsletter.post": "default"})
    assert r.status == 303
    assert "saved=" in r.headers["Location"]
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    last = events[-1]
    assert last.event_type == "PreferencesChanged"
    assert last.event.changed_by.kind == "subject" and last.event.method == "portal"
    assert last.metadata.actor.kind == "subject" and last.metadata.method == "portal"
    assert last.event.policy_version == version
    assert [(c.category, c.channel, c.value) for c in last.event.changes] == [("newsletter", "email", "opt_out")]
    _, tenant = await world.ledger.require_tenant("garage-a", fresh=True)
    decision = evaluate(fold_subject(events), tenant.terms, "newsletter", "email", dt.date.today())  # type: ignore[arg-type]
    assert not decision.eligible and decision.reason == "opted_out"

    page = await world.client.get(r.headers["Location"])
    html = await page.text()
    assert "Uw wijziging is opgeslagen" in html
    assert re.search(r'id="pref.newsletter.email"[^>]*>(?:(?!</select>).)*value="opt_out" selected', html, re.S)
    assert re.search(r'id="pref.newsletter.email-state">Nu: nee<', html)
    receipt_link = re.search(r'href="(/p/[^"]+/receipt/[^"]+)"', html)
    assert receipt_link
    receipt = await world.client.get(receipt_link.group(1))
    assert receipt.status == 200
    assert receipt.headers["Content-Disposition"].startswith("attachment;")
    body = await receipt.json()
    assert body["eventId"] == last.event_id and body["policyVersion"] == version
    assert body["collectionMethod"] == "portal" and body["policyVersionLabel"] == "policy shown"


async def test_saving_unchanged_settings_records_nothing(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    before = await world.ledger.store.stream_version(subject_stream("garage-a", "dealer", "K1"))
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/preferences", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version, "pref.newsletter.email": "default"})
    assert r.status == 303 and "unchanged=1" in r.headers["Location"]
    assert await world.ledger.store.stream_version(subject_stream("garage-a", "dealer", "K1")) == before


async def test_a_receipt_of_another_subject_is_not_served(world: World) -> None:
    _, csrf, version = await _form(world, "garage-b/dealer/B1")
    r = await world.client.post(world.url("garage-b/dealer/B1") + "/objection", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version})
    event_id = r.headers["Location"].split("saved=")[1]
    assert (await world.client.get(world.url("garage-b/dealer/B1") + f"/receipt/{event_id}")).status == 200
    assert (await world.client.get(world.url("garage-a/dealer/K1") + f"/receipt/{event_id}")).status == 404


async def test_unsubscribing_from_all_marketing_records_an_objection_and_can_be_withdrawn(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/objection", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version})
    assert r.status == 303
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert events[-1].event_type == "ObjectionRecorded"
    assert events[-1].event.changed_by.kind == "subject" and events[-1].event.policy_version == version
    html = await (await world.client.get(world.url("garage-a/dealer/K1"))).text()
    assert "U heeft zich afgemeld voor alle marketing" in html and "Afmelding intrekken" in html
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/objection/withdraw", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version})
    assert r.status == 303
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert events[-1].event_type == "ObjectionWithdrawn"


async def test_a_post_without_or_with_a_foreign_csrf_token_is_refused_and_records_nothing(world: World) -> None:
    _, _, version = await _form(world, "garage-a/dealer/K1")
    _, other_csrf, _ = await _form(world, "garage-b/dealer/B1")
    before = await world.ledger.store.stream_version(subject_stream("garage-a", "dealer", "K1"))
    for data in ({"policy_version": version, "pref.newsletter.email": "opt_out"},
                 {"csrf_token": other_csrf, "policy_version": version, "pref.newsletter.email": "opt_out"},
                 {"csrf_token": "0" * 64, "policy_version": version}):
        r = await world.client.post(world.url("garage-a/dealer/K1") + "/preferences", data=data)
        assert r.status == 403
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/objection", data={"policy_version": version})
    assert r.status == 403
    assert await world.ledger.store.stream_version(subject_stream("garage-a", "dealer", "K1")) == before


async def test_a_post_from_another_site_is_refused_even_with_the_token(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/objection",
                                data={"csrf_token": csrf, "policy_version": version},
                                headers={"Origin": "https://evil.example"})
    assert r.status == 403


async def test_a_save_against_an_outdated_policy_is_not_recorded(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    await world.ledger.set_chapter_active(OPERATOR, "garage-a", "c07", True)
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/preferences",
                                data={"csrf_token": csrf, "policy_version": version, "pref.newsletter.email": "opt_out"})
    assert r.status == 409
    assert "privacybeleid is gewijzigd" in await r.text()
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "K1"))
    assert all(e.event_type != "PreferencesChanged" for e in events)


async def test_an_invalid_choice_is_refused(world: World) -> None:
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/preferences",
                                data={"csrf_token": csrf, "policy_version": version, "pref.newsletter.email": "maybe"})
    assert r.status == 400


async def test_a_prospect_sees_the_prospect_category_and_can_opt_in_pending_confirmation(world: World) -> None:
    html, csrf, version = await _form(world, "garage-a/dealer/P1")
    assert "Kennismakingsberichten per e-mail" in html
    assert 'id="pref.prospect.email-state">Nu: nee<' in html
    r = await world.client.post(world.url("garage-a/dealer/P1") + "/preferences", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version, "pref.prospect.email": "opt_in"})
    assert r.status == 303
    html = await (await world.client.get(r.headers["Location"])).text()
    # double opt-in: an e-mail opt-in from the portal counts once confirmed from a mail
    assert 'id="pref.prospect.email-state">Bevestig via de e-mail<' in html
    events = await world.ledger.store.read_stream(subject_stream("garage-a", "dealer", "P1"))
    assert events[-1].event.confirmation_required  # type: ignore[union-attr]


async def test_requests_beyond_the_rate_limit_per_address_get_429(settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    world = await make_world(aiohttp_client, settings, portal_rate_per_minute=60, portal_rate_burst=5)
    statuses = [(await world.client.get(world.url("garage-a/dealer/K1"))).status for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    r = await world.client.get("/p/unknown-token-but-still-limited")
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1



async def test_behind_a_trusted_proxy_the_limit_counts_the_forwarded_client(settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    world = await make_world(aiohttp_client, settings, portal_rate_per_minute=60, portal_rate_burst=2,
                             portal_trusted_proxies="127.0.0.1")
    path = world.url("garage-a/dealer/K1")

    async def status(forwarded: str) -> int:
        return (await world.client.get(path, headers={"X-Forwarded-For": forwarded})).status

    assert [await status("203.0.113.5") for _ in range(3)] == [200, 200, 429]
    assert await status("198.51.100.7") == 200  # another customer behind the same proxy
    assert await status("203.0.113.9, 203.0.113.5") == 429  # a spoofed left hop does not help


async def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    world = await make_world(aiohttp_client, settings, portal_rate_per_minute=60, portal_rate_burst=2)
    path = world.url("garage-a/dealer/K1")
    statuses = [(await world.client.get(path, headers={"X-Forwarded-For": f"192.0.2.{i}"})).status for i in range(3)]
    assert statuses == [200, 200, 429]


async def test_a_post_whose_origin_is_the_public_https_address_is_accepted(settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    world = await make_world(aiohttp_client, settings, portal_base_url="https://privacy.garage.example")
    _, csrf, version = await _form(world, "garage-a/dealer/K1")
    r = await world.client.post(world.url("garage-a/dealer/K1") + "/objection", allow_redirects=False,
                                data={"csrf_token": csrf, "policy_version": version},
                                headers={"Origin": "https://privacy.garage.example"})
    assert r.status == 303
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


async def test_an_erased_subject_gets_the_neutral_page(world: World) -> None:
    from schemas.events import Metadata, SubjectErased
    from services.ledger.store import AppendRequest, StreamWrite

    await world.ledger.store.append(AppendRequest(
        tenant_id="garage-a", writes=[StreamWrite(subject_stream("garage-a", "dealer", "K1"),
                                                  [SubjectErased(reason="request")])],
        metadata=Metadata(actor=OPERATOR.actor, method="api")))
    r = await world.client.get(world.url("garage-a/dealer/K1"))
    assert r.status == 404 and "Link niet geldig" in await r.text()


async def test_the_english_page_has_no_dutch_left_in_its_own_words(world: World) -> None:
    html = await (await world.client.get(world.url("garage-a/dealer/K1") + "?lang=en")).text()
    own_words = html.split('id="policy-h"')[0]  # the dealer's policy text stays as the dealer wrote it
    for dutch in ("Nieuwsbrief", "Uw ", "opslaan", "Afmelden", " tot ", "Volgens", "Automatisch"):
        assert dutch not in own_words, dutch
    assert re.search(r"Now: yes, until \d+/\d+/\d{4}", own_words)
