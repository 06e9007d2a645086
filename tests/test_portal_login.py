"""Staff login against guessing and against lock-out by others: the same answer, the same
work and about the same time whether an account exists or not, and a back-off per
(account, client address) that grows with every failure, which an admin can lift."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from argon2 import PasswordHasher

from services.portal.accounts import BACKOFF_FIRST, BACKOFF_MAX, MAX_FAILED_LOGINS, Accounts
from tests.portal_support import PASSWORD, World, csrf_of, login, make_world

REPO = Path(__file__).resolve().parent.parent
UNKNOWN = "niemand@garage-a.example.nl"


@pytest.fixture
def world_options() -> dict[str, Any]:
    # The test client is 127.0.0.1; as a trusted proxy it lets X-Forwarded-For name the client.
    return {"portal_trusted_proxies": "127.0.0.1"}


async def form_login(world: World, email: str, password: str, client: str) -> tuple[int, str]:
    page = await world.client.get("/login")
    r = await world.client.post(
        "/login", allow_redirects=False,
        headers={"Cookie": f"__Host-portal_login={page.cookies['__Host-portal_login'].value}",
                 "X-Forwarded-For": client},
        data={"tenant": "garage-a", "email": email, "password": password, "csrf_token": csrf_of(await page.text())})
    return r.status, await r.text()


async def test_an_unknown_account_gets_exactly_the_answers_of_a_known_one(world: World) -> None:
    """Five wrong passwords used to lock a real account and not an unknown one: which told
    an attacker which accounts exist."""
    known = world.users["garage-a:staff"]
    answers: dict[str, list[tuple[int, str]]] = {}
    for email in (known, UNKNOWN):
        answers[email] = []
        for _ in range(MAX_FAILED_LOGINS + 2):
            status, html = await form_login(world, email, "wrong password!!", "198.51.100.7")
            answers[email].append((status, _error_of(html)))
    assert answers[known] == answers[UNKNOWN]
    statuses = [status for status, _ in answers[known]]
    assert statuses == [401] * MAX_FAILED_LOGINS + [429, 429]
    assert "Te veel mislukte pogingen vanaf dit adres" in answers[known][-1][1]
    # During the wait even the right password is refused, unchecked, from that address.
    assert (await form_login(world, known, PASSWORD, "198.51.100.7"))[0] == 429


def _error_of(html: str) -> str:
    start = html.find('class="banner error"')
    return html[start:html.find("</div>", start)] if start >= 0 else ""


async def test_a_back_off_holds_only_for_that_address_so_nobody_can_lock_out_a_colleague(world: World) -> None:
    known = world.users["garage-a:staff"]
    for _ in range(MAX_FAILED_LOGINS + 3):
        await form_login(world, known, "wrong password!!", "203.0.113.66")  # the attacker
    status, _ = await form_login(world, known, PASSWORD, "192.0.2.10")  # the colleague, at the office
    assert status == 303
    assert (await form_login(world, known, PASSWORD, "203.0.113.66"))[0] == 429


async def test_the_wait_doubles_with_every_further_failure_up_to_a_maximum(world: World, db_url: str) -> None:
    accounts, email, client = world.accounts, world.users["garage-a:admin"], "198.51.100.9"
    conn = await asyncpg.connect(db_url)
    try:
        async def wait_after_failure() -> float | None:
            assert (await accounts.login("garage-a", email, "wrong password!!", client=client))[0] == "bad_credentials"
            row = await conn.fetchrow("SELECT extract(epoch FROM blocked_until - last_failed_at) AS s"
                                      " FROM portal.login_failures WHERE client = $1", client)
            # Time passes: the wait is over (the next failure counts again).
            await conn.execute("UPDATE portal.login_failures SET blocked_until = now() - interval '1 second'"
                               " WHERE client = $1 AND blocked_until IS NOT NULL", client)
            return None if row["s"] is None else float(row["s"])

        waits = [await wait_after_failure() for _ in range(MAX_FAILED_LOGINS + 8)]
    finally:
        await conn.close()
    first, most = BACKOFF_FIRST.total_seconds(), BACKOFF_MAX.total_seconds()
    assert waits[:MAX_FAILED_LOGINS - 1] == [None] * (MAX_FAILED_LOGINS - 1)
    assert waits[MAX_FAILED_LOGINS - 1:] == [min(first * 2 ** i, most) for i in range(9)]
    # A success clears the count.
    assert (await accounts.login("garage-a", email, PASSWORD, client=client))[0] == "ok"
    assert (await accounts.login("garage-a", email, "wrong password!!", client=client))[0] == "bad_credentials"


class CountingPool:
    """The pool, counting the statements a login sends."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.pool, name)
        if name not in ("fetchrow", "fetch", "fetchval", "execute"):
            return method

        async def counted(*args: Any) -> Any:
            self.statements += 1
            return await method(*args)
        return counted


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verifies = 0
        self.hashes = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's name
        self.verifies += 1
        return super().verify(hash, password)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashes += 1
        return super().hash(password, salt=salt)


async def test_a_login_does_the_same_work_whether_the_account_exists_or_not(world: World, pool) -> None:  # type: ignore[no-untyped-def]
    """The same statements and argon2 calls for an unknown account, a disabled one and a
    wrong password (the unknown one used to skip the failure count's UPDATE and, the first
    time, pay for making the dummy hash inside the login)."""
    counting = CountingPool(pool)
    hasher = CountingHasher()
    accounts = Accounts(counting, hasher)  # type: ignore[arg-type]
    disabled = (await world.accounts.list_users("garage-a"))[-1]
    await world.accounts.set_disabled("garage-a", disabled.user_id, True)
    work = {}
    for label, email in (("unknown", UNKNOWN), ("known, wrong password", world.users["garage-a:admin"]),
                         ("disabled", disabled.email), ("unknown again", "nog.iemand@garage-a.example.nl")):
        before = (counting.statements, hasher.verifies, hasher.hashes)
        outcome, _ = await accounts.login("garage-a", email, "wrong password!!", client="192.0.2.1")
        assert outcome == "bad_credentials"
        if label == "unknown":  # the dummy hash is made once, before the first login's own work
            before = (before[0], before[1], before[2] + 1)
        work[label] = (counting.statements - before[0], hasher.verifies - before[1], hasher.hashes - before[2])
    assert set(work.values()) == {(2, 1, 0)}, work


@pytest.mark.slow
async def test_unknown_and_known_accounts_take_about_the_same_time_with_production_argon2(
        settings, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    """With argon2-cffi's production parameters the verification dominates; interleaved
    samples share the machine's noise (the figure is loose: the machine is shared)."""
    world = await make_world(aiohttp_client, settings)
    accounts = Accounts(world.accounts._pool, PasswordHasher())  # noqa: SLF001 - the same pool, real parameters
    known = "echt@garage-a.example.nl"  # hashed with the production parameters, like the dummy
    await accounts.create("garage-a", known, "staff", PASSWORD, created_by="tests")
    await accounts.login("garage-a", UNKNOWN, "warm-up", client="192.0.2.2")
    times: dict[str, list[float]] = {"unknown": [], "known": []}
    for i in range(6):
        for label, email in (("unknown", f"x{i}@garage-a.example.nl"), ("known", known)):
            started = time.perf_counter()
            await accounts.login("garage-a", email, "wrong password!!", client=f"192.0.2.{10 + i}")
            times[label].append(time.perf_counter() - started)
    ratio = statistics.median(times["unknown"]) / statistics.median(times["known"])
    assert 0.67 < ratio < 1.5, times


async def test_an_admin_unlocks_an_account_on_the_users_page(world: World) -> None:
    staff_email = world.users["garage-a:staff"]
    for _ in range(MAX_FAILED_LOGINS):
        await form_login(world, staff_email, "wrong password!!", "198.51.100.20")
    assert (await form_login(world, staff_email, PASSWORD, "198.51.100.20"))[0] == 429
    cookie = await login(world.client, "garage-a", world.users["garage-a:admin"])
    html = await (await world.client.get("/beheer/garage-a/gebruikers", headers=cookie)).text()
    assert "moet wachten na mislukte logins (1 adres(sen))" in html
    staff = next(u for u in await world.accounts.list_users("garage-a") if u.email == staff_email)
    r = await world.client.post(f"/beheer/garage-a/gebruikers/{staff.user_id}/unlock", headers=cookie,
                                data={"csrf_token": csrf_of(html)}, allow_redirects=False)
    assert r.status == 303
    assert (await form_login(world, staff_email, PASSWORD, "198.51.100.20"))[0] == 303
    # Staff cannot unlock (admins only), and the route wants the CSRF token like every POST.
    staff_cookie = await login(world.client, "garage-a", staff_email)
    r = await world.client.post(f"/beheer/garage-a/gebruikers/{staff.user_id}/unlock", headers=staff_cookie,
                                data={"csrf_token": csrf_of(html)})
    assert r.status == 403


async def test_the_cli_unlocks_an_account(world: World, db_url: str, settings) -> None:  # type: ignore[no-untyped-def]
    admin_email = world.users["garage-a:admin"]
    for _ in range(MAX_FAILED_LOGINS):
        await world.accounts.login("garage-a", admin_email, "wrong password!!", client="198.51.100.30")
    assert (await world.accounts.login("garage-a", admin_email, PASSWORD, client="198.51.100.30"))[0] == "locked"
    env = {"LEDGER_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", "portal", "unlock",
                                                    "--tenant", "garage-a", "--email", admin_email.upper()],
                                   capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 address(es) cleared" in done.stdout
    assert (await world.accounts.login("garage-a", admin_email, PASSWORD, client="198.51.100.30"))[0] == "ok"
    recorded = await world.ledger.store.read_stream("users/garage-a")  # in the change log (docs/dealer.md)
    assert [(e.event.change, e.metadata.actor.id) for e in recorded][-1:] == [("unlocked", "cli")]  # type: ignore[attr-defined]
    unknown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", "portal", "unlock",
                                                       "--tenant", "garage-a", "--email", UNKNOWN],
                                      capture_output=True, text=True, cwd=REPO, env=env)
    assert unknown.returncode == 2 and "no user" in unknown.stderr


async def test_an_account_e_mail_with_a_control_character_is_refused_wherever_it_comes_from(world: World) -> None:
    from services.portal.accounts import AccountError

    for email in ("a\x01b@garage-a.example.nl", "ab@garage-a.example.nl\x7f", "x\x85@garage-a.example.nl"):
        with pytest.raises(AccountError) as err:
            await world.accounts.create("garage-a", email, "staff", PASSWORD, created_by="tests")
        assert (err.value.message_key, err.value.field) == ("email_invalid", "email")
