"""Property-based fuzzing of everything that takes input over HTTP.

* Schemathesis against a live ledger: every operation in /v1/openapi.json, fed generated
  requests (valid and invalid) with real API keys, must never answer 5xx, must answer with
  a status the document declares, in the declared content type and schema, and a request
  that was refused (4xx) must not have appended anything (the ledger head is read before
  and after every request).
* Hypothesis strategies for every form of the privacy portal and the AVG Beheer pages
  (staff and customer, with real sessions and CSRF tokens, so the posts get past the
  guards): any text (control characters, odd Unicode, empty), valid and invalid choices,
  extra fields. Never a 5xx, never an append or a new account from a refused post.

The servers are the real `consent-ledger serve` and `portal serve` in their own processes on
free ports, so the fuzzers (synchronous HTTP) and the servers never share an event loop.

Size: ``LEDGER_FUZZ_EXAMPLES`` (default 14) examples per API operation, half valid and
half invalid, and 25 times that many portal forms. The default is the bounded run of
the normal suite (about a minute here); a nightly-sized run sets it higher, e.g.
``LEDGER_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/test_openapi_fuzz.py`` (README,
"Fuzzing").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import aiohttp
import asyncpg
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from consent.text import control_character_problem
from schemas.vocabulary import CATEGORIES, CHANNELS
from services.devservers import free_port, wait_for_port
from services.ledger.api_keys import issue_key
from tests.conftest import MASTER_KEY

CLI = str(Path(sys.executable).with_name("consent-ledger"))
EXAMPLES_PER_OPERATION = int(os.environ.get("LEDGER_FUZZ_EXAMPLES", "14"))
PORTAL_EXAMPLES = 25 * EXAMPLES_PER_OPERATION


class LedgerState:
    """What a refused request must leave alone: every partition's head, the API keys, the portal's
    accounts. Read over its own connection on its own event loop (the fuzzers are sync)."""

    def __init__(self, db_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(asyncpg.connect(db_url))

    def read(self) -> tuple[Any, ...]:
        row = self._loop.run_until_complete(self._conn.fetchrow(
            "SELECT (SELECT array_agg(position ORDER BY log_partition) FROM ledger.partitions) AS heads,"
            " (SELECT count(*) FROM ledger.api_keys WHERE revoked_at IS NULL) AS keys,"
            " (SELECT count(*) FROM portal.users) AS users"))
        assert row is not None
        return tuple(row)

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """not_a_server_error, except the one honest 503: a read model that has not caught up
    yet (this server runs without Kafka, so the eligibility projector never catches up)."""
    if response.status_code == 503 and response.json().get("error") == "not_projected_yet":
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class LiveLedger:
    base_url: str
    operator_key: str
    keys: dict[str, str]  # role -> key of tenant garage-a
    db_url: str


@pytest.fixture
async def live_ledger(db_url: str) -> AsyncIterator[LiveLedger]:
    port = free_port()
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_LOG_LEVEL": "warning", "LEDGER_DB_POOL_SIZE": "4"}
    env.pop("LEDGER_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        base = f"http://127.0.0.1:{port}"
        conn = await asyncpg.connect(db_url)
        try:
            operator = (await issue_key(conn, None, "operator", "fuzz")).key
        finally:
            await conn.close()
        keys: dict[str, str] = {}
        async with aiohttp.ClientSession(base) as http:
            async with http.post("/v1/tenants", json={"tenant_id": "garage-a", "name": "Autobedrijf A"},
                                 headers={"Authorization": f"Bearer {operator}"}) as r:
                assert r.status == 201, await r.text()
                keys["admin"] = (await r.json())["admin_key"]["key"]
            for role in ("staff", "auditor", "sender", "importer", "marketing"):
                async with http.post("/v1/tenants/garage-a/api-keys", json={"role": role},
                                     headers={"Authorization": f"Bearer {keys['admin']}"}) as r:
                    assert r.status == 201, await r.text()
                    keys[role] = (await r.json())["key"]
            # Something to find: a customer with an invoice.
            async with http.post("/v1/tenants/garage-a/subjects/dealer/C1/invoices",
                                 json={"invoice_id": "F-1", "invoice_date": "2024-01-31"},
                                 headers={"Authorization": f"Bearer {keys['admin']}"}) as r:
                assert r.status == 201, await r.text()
        yield LiveLedger(base, operator, keys, db_url)
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        # A traceback in the server's log is a bug even if the answer was a tidy 4xx.
        assert "Traceback" not in (stderr or ""), stderr


def key_for(ledger: LiveLedger, roles: list[str]) -> str:
    if "operator" in roles:
        return ledger.operator_key
    role = "admin" if "admin" in roles else roles[0]
    return ledger.keys[role]


def fuzz(ledger: LiveLedger) -> dict[str, dict[int, int]]:
    """Run every operation; returns {operation: {status: count}}. Raises on a failed check."""
    state = LedgerState(ledger.db_url)
    try:
        return _fuzz(ledger, state)
    finally:
        state.close()


# Characters that broke things before (a NUL reached PostgreSQL: 500), and their kin.
DANGER = ("\x00", "\x01", "\x08", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "\ud7ff", "\U0001f600")


def _string_places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every string in a decoded JSON body."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_places(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_places(v, (*path, i))]
    return []


def _spiked(body: Any, path: tuple[Any, ...], char: str, at: int) -> Any:
    if not path:
        return body[:at] + char + body[at:]
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[path[0]] = _spiked(body[path[0]], path[1:], char, at)
    return copy


def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Schemathesis draws values that fit the schema; the bugs were in values that fit it
    but for one character. So half the bodies get one of DANGER inserted into one of
    their strings (a refusal then must be a tidy 4xx naming it, with nothing written)."""
    places = _string_places(body)
    if not places:
        return st.just(body)
    spiked = st.tuples(st.sampled_from(places), st.sampled_from(DANGER), st.integers(0, 40)).map(
        lambda t: _spiked(body, t[0], t[1], min(t[2], len(_at(body, t[0])))))
    return st.one_of(st.just(body), spiked)


def _has_control_character(body: Any) -> bool:
    """A string in the body (or a key) that consent/text.py refuses."""
    if isinstance(body, str):
        return control_character_problem(body) is not None
    if isinstance(body, dict):
        return any(_has_control_character(k) or _has_control_character(v) for k, v in body.items())
    if isinstance(body, list):
        return any(_has_control_character(v) for v in body)
    return False


def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _fuzz(ledger: LiveLedger, state: LedgerState) -> dict[str, dict[int, int]]:
    schema = schemathesis.openapi.from_url(f"{ledger.base_url}/v1/openapi.json")
    schema.hook(flatmap_body)
    seen: dict[str, dict[int, int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        roles = operation.definition.raw.get("x-roles", [])
        if roles == ["public"]:
            headers: dict[str, str] = {}
        else:
            headers = {"Authorization": f"Bearer {key_for(ledger, roles)}"}
        # The tenant the keys belong to, its default data source and a chapter that exists;
        # everything else (refs, ids, bodies, query) is generated.
        fixed = {name: value for name, value in (("tenant", "garage-a"), ("source", "dealer"), ("chapter_id", "c03"))
                 if "{" + name + "}" in operation.path}
        counts = seen.setdefault(operation.label, {})

        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

            @given(case=strategy)
            @settings(max_examples=EXAMPLES_PER_OPERATION // 2, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            def run(case: schemathesis.Case) -> None:
                before = state.read()
                response = case.call(base_url=ledger.base_url, headers=headers, timeout=10)
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
                case.validate_response(response, checks=CHECKS)
                if _has_control_character(case.body):  # the text rule: such a body is refused, never stored
                    assert 400 <= response.status_code < 500, (
                        f"{case.method} {case.formatted_path} took a control character: {response.status_code}")
                if response.status_code >= 400:
                    assert state.read() == before, (
                        f"{case.method} {case.formatted_path} was refused ({response.status_code}) but wrote:"
                        f" {before} -> {state.read()}: {response.text[:300]}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid (no body, no parameters): the positive run covers it.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return seen


@pytest.mark.slow
async def test_no_generated_request_makes_the_ledger_fail(live_ledger: LiveLedger) -> None:
    started = time.perf_counter()
    seen = await asyncio.to_thread(fuzz, live_ledger)
    elapsed = time.perf_counter() - started
    total = sum(sum(c.values()) for c in seen.values())
    print(f"schemathesis: {total} requests over {len(seen)} operations in {elapsed:.1f}s")
    for label, counts in sorted(seen.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert len(seen) >= 25
    assert total >= len(seen) * 5
    # The fuzzer got past validation and auth somewhere: it is not only bouncing off 4xx.
    successes = sum(n for c in seen.values() for status, n in c.items() if status < 300)
    assert successes > 0
    assert not any(status >= 500 and status != 503 for c in seen.values() for status in c)




# -- the portal's forms ---------------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
POLICY_RE = re.compile(r'name="policy_version" value="([^"]+)"')
VERSION_RE = re.compile(r'name="version" value="(\d+)"')
ADMIN_EMAIL = "beheer@garage-a.example.nl"
ADMIN_PASSWORD = "correct horse battery staple"

# Text as people type it, or anything at all (control characters, odd Unicode, empty).
TEXT = st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=0x17F, exclude_characters="\x7f"),
                         max_size=60),
                 st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
                 # the characters that broke things before: NUL, other controls, separators, markup
                 st.text(st.sampled_from("a@.- \x00\x01\x1b\x7f\x85\u2028\ufeff\t\n\r<>\"'&é"), max_size=20))


def choice(*valid: str) -> st.SearchStrategy[str]:
    """A value the form offers, or anything else."""
    return st.one_of(st.sampled_from(valid), TEXT)


def spiked(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A plausible value, sometimes with one dangerous character inside it (a random string
    seldom looks enough like an e-mail address to get as far as the database)."""
    return st.one_of(values, st.tuples(values, st.sampled_from(DANGER), st.integers(0, 40)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]))


# Form fields whose value must be one the form offers: anything else must be refused (a
# signed=maybe used to be read as "no" and appended).
STRICT: dict[str, tuple[str, ...]] = {
    "signed": ("yes", "no"), "active": ("yes", "no"), "withdraw": ("0", "1"),
    "method": ("phone", "email", "in_person"), "direction": ("up", "down"), "role": ("admin", "staff"),
    **{f"pref.{c}.{h}": ("default", "opt_in", "opt_out") for c in CATEGORIES for h in CHANNELS},
}


CELLS = [f"{c}.{h}" for c in CATEGORIES for h in CHANNELS]
PREFERENCE = choice("default", "opt_in", "opt_out")
WORDS = st.text(st.characters(min_codepoint=32, max_codepoint=0x17F, exclude_characters="\x7f"), min_size=1,
                max_size=40)
STAFF_FORMS: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "/beheer/garage-a/agreement": {"signed": choice("yes", "no"),
                                    "signed_on": st.one_of(spiked(st.dates().map(dt.date.isoformat)), TEXT)},
    "/beheer/garage-a/module": {"active": choice("yes", "no")},
    "/beheer/garage-a/beleid/nieuw": {"title": spiked(WORDS), "body": spiked(WORDS)},
    "/beheer/garage-a/beleid/c03/bewerken": {"title": spiked(WORDS), "body": spiked(WORDS),
                                              "version": st.one_of(st.integers(0, 30).map(str), TEXT)},
    "/beheer/garage-a/beleid/c04/move": {"direction": choice("up", "down")},
    "/beheer/garage-a/opt-in": {f"term.{cell}": st.one_of(st.integers(-5, 130).map(str), TEXT)
                                for cell in CELLS[:3]},
    "/beheer/garage-a/klanten/dealer/C1/voorkeuren": {
        "method": choice("phone", "email", "in_person"), "reason": spiked(WORDS),
        **{f"pref.{cell}": PREFERENCE for cell in CELLS[:3]}},
    "/beheer/garage-a/klanten/dealer/C1/bezwaar": {"method": choice("phone", "email", "in_person"),
                                                    "reason": spiked(WORDS), "withdraw": choice("0", "1")},
    "/beheer/garage-a/gebruikers": {"email": st.one_of(spiked(st.emails()), TEXT), "role": choice("admin", "staff")},
}
CUSTOMER_FORMS: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "/preferences": {f"pref.{cell}": PREFERENCE for cell in CELLS[:4]},
    "/objection": {},
    "/objection/withdraw": {},
}
LOGIN_FORM: dict[str, st.SearchStrategy[str]] = {
    "tenant": choice("garage-a", "garage-b"),
    "email": st.one_of(spiked(st.sampled_from([ADMIN_EMAIL, "niemand@garage-a.example.nl"])), TEXT),
    "password": spiked(WORDS)}


@dataclass
class LivePortal:
    base_url: str
    token: str  # garage-a/dealer/C1's personal link


@pytest.fixture
async def live_portal(live_ledger: LiveLedger) -> AsyncIterator[LivePortal]:
    from argon2 import PasswordHasher

    from services.portal.accounts import Accounts
    from services.portal.links import issue_portal_link

    pool = await asyncpg.create_pool(live_ledger.db_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        # Cheap argon2 parameters for this account (they travel in the hash); unknown
        # e-mails still cost the server's production verification, so few login examples.
        fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        await Accounts(pool, fast).create("garage-a", ADMIN_EMAIL, "admin", ADMIN_PASSWORD, created_by="fuzz")
        token = (await issue_portal_link(pool, "garage-a", "dealer", "C1", issued_by="fuzz")).rsplit("/", 1)[1]
    finally:
        await pool.close()
    port = free_port()
    env = {**os.environ, "LEDGER_DATABASE_URL": live_ledger.db_url, "LEDGER_MASTER_KEY": MASTER_KEY,
           "LEDGER_LOG_LEVEL": "warning", "LEDGER_DB_POOL_SIZE": "4", "LEDGER_PORTAL_RATE_PER_MINUTE": "0"}
    proc = subprocess.Popen([CLI, "portal", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        yield LivePortal(f"http://127.0.0.1:{port}", token)
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        assert "Traceback" not in (stderr or ""), stderr


def _csrf(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, html[:500]
    return match.group(1)


def fuzz_portal(portal: LivePortal, db_url: str) -> dict[str, dict[int, int]]:
    """Post generated forms to every form route; returns {route: {status: count}}."""
    state = LedgerState(db_url)
    http = requests.Session()
    seen: dict[str, dict[int, int]] = {}
    try:
        # Log in once (the session cookie is Secure: sent by hand over plain http).
        page = http.get(f"{portal.base_url}/login", timeout=10)
        r = http.post(f"{portal.base_url}/login", allow_redirects=False, timeout=30,
                      headers={"Cookie": f"__Host-portal_login={page.cookies['__Host-portal_login']}"},
                      data={"tenant": "garage-a", "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                            "csrf_token": _csrf(page.text)})
        assert r.status_code == 303, r.text[:500]
        session = {"Cookie": f"__Host-portal_session={r.cookies['__Host-portal_session']}"}

        def post(label: str, url: str, data: dict[str, str], headers: dict[str, str]) -> None:
            before = state.read()
            response = http.post(url, data=data, headers=headers, allow_redirects=False, timeout=30)
            counts = seen.setdefault(label, {})
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            assert response.status_code < 500, (label, data, response.status_code, response.text[:500])
            offered = all(data.get(name, valid[0]) in valid for name, valid in STRICT.items() if name in data)
            if not offered:
                assert response.status_code >= 400, (label, data, response.status_code, "a choice not offered was taken")
            if response.status_code >= 400:
                assert state.read() == before, (label, data, response.status_code, "a refused form wrote")

        @given(data=st.data())
        @settings(max_examples=PORTAL_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
        def staff_and_customer_forms(data: st.DataObject) -> None:
            extra = data.draw(st.one_of(st.just({}), st.dictionaries(TEXT, TEXT, max_size=2)), label="extra fields")
            if data.draw(st.booleans(), label="staff page"):
                path = data.draw(st.sampled_from(sorted(STAFF_FORMS)), label="route")
                form = data.draw(st.fixed_dictionaries(STAFF_FORMS[path]), label="form")
                html = http.get(f"{portal.base_url}/beheer/garage-a", headers=session, timeout=10).text
                fields = {**extra, **form, "csrf_token": _csrf(html)}
                if "version" in form and data.draw(st.booleans(), label="current version"):
                    edit = http.get(f"{portal.base_url}/beheer/garage-a/opt-in", headers=session, timeout=10).text
                    fields["version"] = VERSION_RE.search(edit).group(1)  # type: ignore[union-attr]
                post(path, portal.base_url + path, fields, session)
            else:
                path = data.draw(st.sampled_from(sorted(CUSTOMER_FORMS)), label="route")
                form = data.draw(st.fixed_dictionaries(CUSTOMER_FORMS[path]), label="form")
                html = http.get(f"{portal.base_url}/p/{portal.token}", timeout=10).text
                policy = POLICY_RE.search(html)
                fields = {**extra, **form, "csrf_token": _csrf(html),
                          "policy_version": data.draw(choice(policy.group(1) if policy else "pv-0"), label="pv")}
                post("/p/{token}" + path, f"{portal.base_url}/p/{portal.token}{path}", fields, {})

        @given(form=st.fixed_dictionaries(LOGIN_FORM), extra=st.dictionaries(TEXT, TEXT, max_size=2))
        @settings(max_examples=max(4, PORTAL_EXAMPLES // 25), deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
        def login_form(form: dict[str, str], extra: dict[str, str]) -> None:
            page = http.get(f"{portal.base_url}/login", timeout=10)
            post("/login", f"{portal.base_url}/login", {**extra, **form, "csrf_token": _csrf(page.text)},
                 {"Cookie": f"__Host-portal_login={page.cookies['__Host-portal_login']}"})

        staff_and_customer_forms()
        login_form()
    finally:
        state.close()
        http.close()
    return seen


@pytest.mark.slow
async def test_no_generated_portal_form_makes_the_portal_fail_or_write_when_refused(
        live_ledger: LiveLedger, live_portal: LivePortal) -> None:
    started = time.perf_counter()
    seen = await asyncio.to_thread(fuzz_portal, live_portal, live_ledger.db_url)
    elapsed = time.perf_counter() - started
    total = sum(sum(c.values()) for c in seen.values())
    print(f"portal forms: {total} posts over {len(seen)} routes in {elapsed:.1f}s")
    for label, counts in sorted(seen.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert len(seen) == len(STAFF_FORMS) + len(CUSTOMER_FORMS) + 1  # every form was posted
    # Both sides were reached: refusals (4xx) and accepted saves (303) that appended.
    assert any(status == 303 for c in seen.values() for status in c)
    assert any(400 <= status < 500 for c in seen.values() for status in c)
