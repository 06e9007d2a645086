"""Shared set-up for the portal tests: the portal app on a fresh database, two dealers with
customers, user accounts, logging in, and reading CSRF tokens out of pages."""

from __future__ import annotations

import datetime as dt
import re
from email.message import EmailMessage
from dataclasses import dataclass, field

import msgspec
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from schemas.events import Actor
from services.ledger.commands import Context, Ledger
from services.portal.accounts import Accounts
from services.api.portal import create_portal_app
from services.mail.localsmtp import LocalSmtp
from services.mail.smtp import SmtpSender
from services.portal.context import ACCOUNTS, LEDGER, LINKS, MAIL
from services.portal.routes_staff import SESSION_COOKIE
from services.settings import Settings

OPERATOR = Context(actor=Actor(kind="operator", id="tests"), method="api")
PASSWORD = "correct horse battery staple"
# argon2id with small parameters: the production ones (64 MiB, 3 passes) take ~0.1-0.7 s per
# hash on this shared machine, and every test makes four accounts. The production parameters
# are checked in test_portal_staff.py and used by the CLI test.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@dataclass
class World:
    """Two dealers (garage-a, garage-b), a customer and a prospect at garage-a, a customer
    at garage-b, an admin and a staff user per dealer, and a portal link for each subject."""

    client: TestClient
    ledger: Ledger
    accounts: Accounts
    links: dict[str, str] = field(default_factory=dict)  # "tenant/source/ref" -> token
    users: dict[str, str] = field(default_factory=dict)  # "tenant:role" -> e-mail

    def url(self, key: str) -> str:
        return f"/p/{self.links[key]}"


def portal_settings(settings: Settings, **overrides: object) -> Settings:
    values: dict[str, object] = {"portal_rate_per_minute": 0}
    values.update(overrides)
    return msgspec.structs.replace(settings, **values)


async def make_world(aiohttp_client, settings: Settings, **overrides: object) -> World:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_portal_app(portal_settings(settings, **overrides), password_hasher=FAST_HASHER))
    ledger = client.app[LEDGER]
    accounts = client.app[ACCOUNTS]
    world = World(client, ledger, accounts)
    today = dt.date.today()
    for tenant in ("garage-a", "garage-b"):
        await ledger.create_tenant(OPERATOR, tenant, f"Autobedrijf {tenant[-1].upper()}")
        for role in ("admin", "staff"):
            email = f"{role}@{tenant}.example.nl"
            await accounts.create(tenant, email, role, PASSWORD, created_by="tests")
            world.users[f"{tenant}:{role}"] = email
    await ledger.record_invoice(OPERATOR, "garage-a", "dealer", "K1", "F1", today - dt.timedelta(days=30))
    await ledger.register_prospect(OPERATOR, "garage-a", "dealer", "P1", today - dt.timedelta(days=10), "website")
    await ledger.record_invoice(OPERATOR, "garage-b", "dealer", "B1", "F9", today - dt.timedelta(days=60))
    for key in ("garage-a/dealer/K1", "garage-a/dealer/P1", "garage-b/dealer/B1"):
        tenant, source, ref = key.split("/")
        world.links[key] = await client.app[LINKS].issue(tenant, source, ref, rotate=False, issued_by="tests")
    return world


async def login(client: TestClient, tenant: str, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Log in through the form; returns the Cookie header to send on the next requests.

    (The session cookie is ``Secure``: aiohttp's cookie jar does not send it over the test
    server's plain http, so the tests carry it themselves.)"""
    page = await client.get("/login")
    prelogin = page.cookies["__Host-portal_login"].value
    token = csrf_of(await page.text())
    r = await client.post("/login", data={"tenant": tenant, "email": email, "password": password,
                                          "csrf_token": token},
                          headers={"Cookie": f"__Host-portal_login={prelogin}"}, allow_redirects=False)
    assert r.status == 303, (r.status, await r.text())
    return {"Cookie": f"{SESSION_COOKIE}={r.cookies[SESSION_COOKIE].value}"}


async def deliver(world: World, settings: Settings, smtp: LocalSmtp) -> list[EmailMessage]:
    """Send the portal's due mails to the test's SMTP server (the ``smtp`` fixture); what it holds."""
    sender = SmtpSender(msgspec.structs.replace(settings, smtp_host="127.0.0.1", smtp_port=smtp.port))
    await world.client.app[MAIL].outbox.send_due(sender)
    return smtp.messages()


def link_in(message: EmailMessage, path: str) -> str:
    """The path and query of the link in the mail's text whose path starts with ``path``."""
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(r"https?://\S+(" + re.escape(path) + r"\S+)", text)
    assert match, text
    return match.group(1)
