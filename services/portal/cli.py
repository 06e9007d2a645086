"""``consent-ledger portal ...``: run the portal, create users, issue links.

* ``portal serve``: the privacy portal and AVG Beheer pages (``LEDGER_PORTAL_PORT``).
* ``portal create-user --tenant T --email E --role admin``: the first admin of a tenant;
  the password is read from a prompt (twice) or, when stdin is not a terminal, from its
  first line. Never from the command line, where it would end up in shell history.
* ``portal issue-link --tenant T --source S --ref R [--rotate]``: print a subject's portal
  URL (the only time the token is visible).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

import asyncpg

from schemas.vocabulary import is_customer_ref, is_slug
from services.settings import from_env


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    portal = sub.add_parser("portal", help="the privacy portal and AVG Beheer pages")
    psub = portal.add_subparsers(dest="portal_command", required=True)
    p = psub.add_parser("serve", help="run the portal HTTP server")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="server processes sharing the port (SO_REUSEPORT); default LEDGER_PORTAL_WORKERS (1)")
    p.set_defaults(func=cmd_serve)
    p = psub.add_parser("create-user", help="create a user account for a tenant (password from prompt or stdin)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--role", choices=("admin", "staff", "marketing"), default="admin")
    p.set_defaults(func=cmd_create_user)
    p = psub.add_parser("unlock", help="lift the login back-off of a user account, for every address")
    p.add_argument("--tenant", required=True)
    p.add_argument("--email", required=True)
    p.set_defaults(func=cmd_unlock)
    p = psub.add_parser("issue-link", help="issue a subject's personal portal link and print its URL")
    p.add_argument("--tenant", required=True)
    p.add_argument("--source", default="dealer")
    p.add_argument("--ref", required=True)
    p.add_argument("--rotate", action="store_true", help="revoke the live link and issue a new one")
    p.set_defaults(func=cmd_issue_link)


def _database_url() -> str:
    url = from_env().database_url
    if not url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    return url


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve in ``workers`` processes (services/serving.py). Nothing that matters is kept in
    a worker's memory: the rate limit and the tenant cache are per process (docs/portal.md)."""
    from services.serving import serve_processes

    settings = from_env()
    if not settings.database_url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    workers = args.workers if args.workers is not None else settings.portal_workers
    return serve_processes(_serve_one, args.host or settings.host, args.port or settings.portal_port, workers, "portal")


def _serve_one(host: str, port: int, reuse_port: bool) -> None:
    """One server process: the portal app on uvloop, no aiohttp access log (the app logs
    each request itself, naming the route pattern and never the token)."""
    from aiohttp import web

    from services.logs import configure_logging
    from services.api.portal import create_portal_app
    from services.serving import event_loop, server_gc, server_options

    settings = from_env()
    configure_logging(settings.log_level)  # a spawned worker starts afresh
    app = create_portal_app(settings)
    server_gc()  # as the ledger's serve: start-up objects frozen, young collections every 50,000 allocations
    web.run_app(app, host=host, port=port, access_log=None, print=None, loop=event_loop(),
                reuse_port=reuse_port or None, **server_options(settings))


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise SystemExit("consent-ledger: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def create_user(url: str, tenant: str, email: str, role: str, password: str) -> str:
    """Create the account after checking that the tenant exists in the ledger."""
    from services.ledger.migrate import migrate
    from services.ledger.store import EventStore
    from services.portal.accounts import Accounts

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        if await EventStore(pool).stream_version(f"tenant/{tenant}") == 0:
            raise SystemExit(f"consent-ledger: tenant {tenant!r} does not exist")
        user = await Accounts(pool).create(tenant, email, role, password, created_by="cli")
        await _record_account_change(pool, tenant, user.user_id, "created", role)
        return user.user_id
    finally:
        await pool.close()


async def _record_account_change(pool: asyncpg.Pool, tenant: str, user_id: str, change: str, role: str) -> None:
    """The account change in the tenant's change log (StaffAccountChanged on users/{tenant})."""
    from schemas.events import Actor, Metadata, StaffAccountChanged
    from services.ledger.store import AppendRequest, EventStore, StreamWrite
    from services.portal.changelog import users_stream

    store = EventStore(pool)
    await store.start()
    try:
        await store.append(AppendRequest(
            tenant_id=tenant, metadata=Metadata(actor=Actor(kind="operator", id="cli"), method="system"),
            writes=[StreamWrite(users_stream(tenant), [StaffAccountChanged(
                user_id=user_id, change=change, role=role)])]))  # type: ignore[arg-type]
    finally:
        await store.stop()


def cmd_create_user(args: argparse.Namespace) -> int:
    from services.portal.accounts import AccountError
    from services.portal.messages import TEXT

    if not is_slug(args.tenant):
        raise SystemExit("consent-ledger: --tenant must be a tenant id (lower-case letters, digits, _ and -)")
    password = read_password()
    try:
        user_id = asyncio.run(create_user(_database_url(), args.tenant, args.email, args.role, password))
    except AccountError as exc:
        print(f"consent-ledger: {TEXT['en'].get(exc.message_key, exc.message_key)}", file=sys.stderr)
        return 2
    print(f"created {args.role} {args.email} for {args.tenant} ({user_id})")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """``portal unlock``: what the users page's "Unlock" does, for an admin who is the one
    waiting (or has no browser at hand)."""
    from services.portal.accounts import Accounts

    if not is_slug(args.tenant):
        raise SystemExit("consent-ledger: --tenant must be a tenant id (lower-case letters, digits, _ and -)")

    async def run() -> int | None:
        pool = await asyncpg.create_pool(_database_url(), min_size=1, max_size=2)
        assert pool is not None
        try:
            accounts = Accounts(pool)
            user = next((u for u in await accounts.list_users(args.tenant)
                         if u.email.lower() == args.email.strip().lower()), None)
            if user is None:
                return None
            cleared = await accounts.unlock(args.tenant, user.user_id)
            await _record_account_change(pool, args.tenant, user.user_id, "unlocked", user.role)
            return cleared
        finally:
            await pool.close()

    cleared = asyncio.run(run())
    if cleared is None:
        print(f"consent-ledger: {args.tenant} has no user {args.email!r}", file=sys.stderr)
        return 2
    print(f"unlocked {args.email} at {args.tenant} ({cleared} address(es) cleared)")
    return 0


def cmd_issue_link(args: argparse.Namespace) -> int:
    from services.portal.links import PortalLinkExists, UnknownSubject, issue_portal_link

    if not (is_slug(args.tenant) and is_slug(args.source) and is_customer_ref(args.ref)):
        raise SystemExit("consent-ledger: --tenant/--source must be ids and --ref a customer ref")
    settings = from_env()

    async def run() -> str:
        pool = await asyncpg.create_pool(_database_url(), min_size=1, max_size=2)
        assert pool is not None
        try:
            return await issue_portal_link(pool, args.tenant, args.source, args.ref, rotate=args.rotate,
                                           base_url=settings.portal_base_url, issued_by="cli")
        finally:
            await pool.close()

    try:
        print(asyncio.run(run()))
    except PortalLinkExists as exc:
        print(f"consent-ledger: {exc}; use --rotate for a new link", file=sys.stderr)
        return 3
    except UnknownSubject as exc:
        print(f"consent-ledger: {exc}", file=sys.stderr)
        return 2
    return 0
