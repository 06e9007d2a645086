"""The portal in the local stack (``consent-ledger run``): the server, a demo admin account
for the demo dealer and a demo customer's portal link, printed once.

Runs after ``services.devstack:demo_tenant``. At every start the demo admin gets a new random
password and the demo customer a new link (the previous one is revoked): both are stored
only hashed, so they can only be shown when they are made.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from services.portal.accounts import AccountError, new_password
from services.api.portal import create_portal_app
from services.portal.context import ACCOUNTS, LINKS
from services.portal.links import portal_url
from services.serving import server_options
from services.settings import Settings

DEMO_TENANT: Final = "demo-garage"
DEMO_ADMIN: Final = "admin@demo-garage.example"
DEMO_STAFF: Final = "balie@demo-garage.example"
DEMO_CUSTOMER: Final = ("dealer", "K1001")


@contextlib.asynccontextmanager
async def portal_component(settings: Settings) -> AsyncIterator[list[str]]:
    from services.devstack import require_free_port

    require_free_port(settings.portal_port, "the privacy portal", "LEDGER_PORTAL_PORT")
    app = create_portal_app(settings)
    runner = web.AppRunner(app, access_log=None, **server_options(settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.portal_port).start()
        accounts = app[ACCOUNTS]
        passwords: dict[str, str] = {}
        for email, role in ((DEMO_ADMIN, "admin"), (DEMO_STAFF, "staff")):
            password = new_password()
            try:
                await accounts.create(DEMO_TENANT, email, role, password, created_by="devstack")
            except AccountError:  # made by an earlier run: give it a fresh password
                user = next(u for u in await accounts.list_users(DEMO_TENANT) if u.email == email)
                await accounts.reset_password(DEMO_TENANT, user.user_id, password)
                await accounts.set_disabled(DEMO_TENANT, user.user_id, False)
            passwords[email] = password
        source, ref = DEMO_CUSTOMER
        token = await app[LINKS].issue(DEMO_TENANT, source, ref, rotate=True, issued_by="devstack")
        base = settings.portal_base_url.rstrip("/")
        yield [
            f"portal       {base}/login  (AVG Beheer; company code {DEMO_TENANT})",
            f"  admin      {DEMO_ADMIN}  password {passwords[DEMO_ADMIN]}",
            f"  staff      {DEMO_STAFF}  password {passwords[DEMO_STAFF]}",
            f"  customer   {ref}: {portal_url(base, token)}",
        ]
    finally:
        await runner.cleanup()
