"""Issuing portal links for mailings (``issue_portal_link``), the CLI that makes the first
admin, and the small pure parts: language choice, the rate limiter, the sanitiser."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from schemas.events import Actor
from services.ledger.commands import Context, Ledger
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, parse_master_key
from services.portal.accounts import Accounts
from services.portal.links import (
    LinkStore,
    PortalLinkExists,
    UnknownSubject,
    issue_portal_link,
)
from services.portal.messages import pick_language
from services.portal.security import RateLimiter, sanitise_html
from tests.conftest import MASTER_KEY
from tests.processes import listeners

REPO = Path(__file__).resolve().parent.parent
OPERATOR = Context(actor=Actor(kind="operator", id="tests"))


@pytest.fixture
async def ledger(pool: asyncpg.Pool, store: EventStore) -> Ledger:
    """The ledger's commands with the tenant garage-a and its customer K1."""
    ledger = Ledger(pool, store, SubjectKeys(pool, parse_master_key(MASTER_KEY)))
    await ledger.create_tenant(OPERATOR, "garage-a", "Autobedrijf A")
    await ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K1", "F1", dt.date.today())
    return ledger


async def test_issuing_a_link_says_when_one_exists_and_rotating_replaces_it(pool, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    url = await issue_portal_link(pool, "garage-a", "dealer", "K1", base_url="https://portal.example.nl/")
    assert url.startswith("https://portal.example.nl/p/") and len(url.rsplit("/", 1)[1]) == 33
    with pytest.raises(PortalLinkExists) as exists:
        await issue_portal_link(pool, "garage-a", "dealer", "K1")
    assert exists.value.issued_at.tzinfo is not None
    rotated = await issue_portal_link(pool, "garage-a", "dealer", "K1", rotate=True)
    links = LinkStore(pool)
    assert await links.lookup(url.rsplit("/", 1)[1]) is None
    target = await links.lookup(rotated.rsplit("/", 1)[1])
    assert target is not None and (target.tenant_id, target.source, target.customer_ref) == ("garage-a", "dealer", "K1")
    assert len(await links.history("garage-a", "dealer", "K1")) == 2


async def test_opening_a_link_reads_the_subject_stream_in_the_same_round_trip_and_refuses_what_lookup_refuses(  # type: ignore[no-untyped-def]
        pool, ledger: Ledger) -> None:
    await ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K2", "F2", dt.date.today())
    await ledger.record_objection(OPERATOR, "garage-a", "dealer", "K1")
    links = LinkStore(pool)
    token = (await issue_portal_link(pool, "garage-a", "dealer", "K1")).rsplit("/", 1)[1]
    await issue_portal_link(pool, "garage-a", "dealer", "K2")
    opened = await links.open(token)
    assert opened is not None
    target, events = opened
    assert target == await links.lookup(token)
    expected = await ledger.store.read_stream("subject/garage-a/dealer/K1")
    assert [e.event_id for e in events] == [e.event_id for e in expected] and len(events) == 2
    assert events == expected  # the same decoded envelopes, in version order
    wrong_verifier = token[:11] + ("A" if token[11] != "A" else "B") + token[12:]
    for bad in (wrong_verifier, token[:-1], token + "x", "A" * 33, "../" + token[3:]):
        assert await links.open(bad) is None and await links.lookup(bad) is None
    await issue_portal_link(pool, "garage-a", "dealer", "K1", rotate=True)
    assert await links.open(token) is None  # revoked


async def test_every_token_check_compares_one_full_digest_in_constant_time_even_when_no_link_matches(  # type: ignore[no-untyped-def]
        pool, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    from services.portal import links as links_module

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(links_module.hmac, "compare_digest", spy)
    links = LinkStore(pool)
    token = (await issue_portal_link(pool, "garage-a", "dealer", "K1")).rsplit("/", 1)[1]
    unknown_selector = ("A" if token[0] != "A" else "B") + token[1:]
    wrong_verifier = token[:11] + ("A" if token[11] != "A" else "B") + token[12:]
    for candidate, opens in ((token, True), (unknown_selector, False), (wrong_verifier, False)):
        for check in (links.lookup, links.open):
            compared.clear()
            assert (await check(candidate) is not None) is opens
            # exactly one comparison of two 32-byte digests, whether or not a row was found
            assert len(compared) == 1 and [len(x) for x in compared[0]] == [32, 32], (candidate, check)
    compared.clear()
    await links.lookup(unknown_selector)
    assert compared[0][0] == links_module._DUMMY_DIGEST  # no row: compared against the dummy digest


async def test_a_link_is_only_issued_for_a_subject_the_ledger_knows(pool, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownSubject):
        await issue_portal_link(pool, "garage-a", "dealer", "NOBODY")
    with pytest.raises(UnknownSubject):
        await issue_portal_link(pool, "garage-b", "dealer", "K1")
    with pytest.raises(ValueError):
        await issue_portal_link(pool, "garage-a", "dealer", "../K1")


async def test_serve_with_two_workers_shares_the_port_and_stops_its_workers_with_it(  # type: ignore[no-untyped-def]
        pool, db_url: str, ledger: Ledger) -> None:
    import signal

    import aiohttp

    from services.devservers import free_port

    token = (await issue_portal_link(pool, "garage-a", "dealer", "K1")).rsplit("/", 1)[1]
    port = free_port()
    env = dict(os.environ, LEDGER_DATABASE_URL=db_url, LEDGER_MASTER_KEY=MASTER_KEY, LEDGER_PORTAL_RATE_PER_MINUTE="0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "portal", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(150):  # both workers up (children of the supervisor) and the port answers
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200 and listeners(port) == 2:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            assert listeners(port) == 2, "the two workers did not both bind the port"
            workers = [int(c) for c in children_file.read_text().split()]
            for _ in range(6):  # new connections, spread over both processes by the kernel
                async with http.get(f"http://127.0.0.1:{port}/p/{token}") as r:
                    assert r.status == 200 and "no-store" in r.headers["Cache-Control"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    # The workers (and multiprocessing's resource tracker, also a child) end with the supervisor.
    for _ in range(100):
        if not any(_alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cli(args: list[str], db_url: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LEDGER_DATABASE_URL=db_url, LEDGER_MASTER_KEY=MASTER_KEY)
    return subprocess.run([sys.executable, "-m", "services.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


async def test_the_cli_creates_the_first_admin_with_a_password_from_stdin(pool, db_url: str, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    done = _cli(["portal", "create-user", "--tenant", "garage-a", "--email", "eigenaar@garage-a.nl", "--role", "admin"],
                db_url, "een lang geheim wachtwoord\n")
    assert done.returncode == 0, done.stderr
    assert "created admin eigenaar@garage-a.nl for garage-a" in done.stdout
    assert "een lang geheim wachtwoord" not in done.stdout + done.stderr
    outcome, user = await Accounts(pool).login("garage-a", "eigenaar@garage-a.nl", "een lang geheim wachtwoord")
    assert outcome == "ok" and user is not None and user.role == "admin"
    recorded = await pool.fetch("SELECT event_type, metadata FROM ledger.events WHERE stream_id = 'users/garage-a'")
    assert [r["event_type"] for r in recorded] == ["StaffAccountChanged"]  # in the change log (issue 15)

    too_short = _cli(["portal", "create-user", "--tenant", "garage-a", "--email", "b@garage-a.nl"], db_url, "kort\n")
    assert too_short.returncode != 0 and "at least 12 characters" in too_short.stderr
    unknown = _cli(["portal", "create-user", "--tenant", "garage-x", "--email", "c@garage-a.nl"], db_url,
                   "een lang geheim wachtwoord\n")
    assert unknown.returncode != 0 and "does not exist" in unknown.stderr

    link = _cli(["portal", "issue-link", "--tenant", "garage-a", "--ref", "K1"], db_url)
    assert link.returncode == 0 and "/p/" in link.stdout
    again = _cli(["portal", "issue-link", "--tenant", "garage-a", "--ref", "K1"], db_url)
    assert again.returncode == 3 and "--rotate" in again.stderr


def test_the_language_follows_the_url_then_accept_language_then_dutch() -> None:
    assert pick_language("en", "nl") == ("en", True)
    # the dealer's language (Dutch) unless the visitor picks another: not the browser's
    assert pick_language(None, "fr-FR, en-US;q=0.8, nl;q=0.5") == ("nl", False)
    assert pick_language(None, "en") == ("nl", False)
    assert pick_language("de", "fr") == ("nl", False)


def test_the_rate_limiter_allows_a_burst_then_refills_per_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.allow("1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("5.6.7.8")  # another address has its own bucket
    now[0] += 1.0
    assert limiter.allow("1.2.3.4") and not limiter.allow("1.2.3.4")
    assert RateLimiter(per_minute=0, burst=1).allow("x")


@pytest.mark.parametrize("body", [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<p style="background:url(javascript:alert(1))" onclick="alert(1)">x</p>',
    "<iframe src=https://evil.example></iframe>",
    '<svg><script>alert(1)</script></svg>',
    "<scr<script>ipt>alert(1)</script>",
    '<form action="https://evil.example"><input name=x></form>',
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>',
])
def test_the_sanitiser_leaves_no_active_content(body: str) -> None:
    clean = sanitise_html(body).lower()
    for bad in ("<script", "onerror", "onclick", "javascript:", "<iframe", "<form", "<img", "<svg", "style="):
        assert bad not in clean, (body, clean)


def test_the_sanitiser_keeps_the_seed_formatting() -> None:
    body = '<p>Wij <strong>bewaren</strong>:</p><ul><li>Naam</li></ul><a href="https://example.nl">site</a>'
    clean = sanitise_html(body)
    assert "<strong>bewaren</strong>" in clean and "<ul><li>Naam</li></ul>" in clean
    assert 'href="https://example.nl"' in clean and 'rel="noopener noreferrer nofollow"' in clean
