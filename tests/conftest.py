"""Fixtures: a real PostgreSQL and a real Kafka-protocol broker, started by the tests
themselves on loopback and free ports. Each test gets a fresh database cloned from a
migrated template, so tests never see each other's events.

Every fixture more than one test module needs is here, once (a module that needs a variant
overrides the small ``*_options`` fixture, or extends a fixture by taking it under the same
name): the database (``db_url``, ``pool``), the event store (``store``), the broker
(``broker``, ``fresh_broker``, ``topics``), the ledger API (``settings``, ``api``,
``operator_key``, ``dealer``, ``other_dealer``), the importer's ``ledger``, the portal's
``world`` and a local SMTP server (``smtp``)."""

from __future__ import annotations

import contextlib

import itertools
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from services.devservers import LocalBroker, LocalPostgres, remove_tree
from services.ledger.migrate import migrate
from services.ledger.store import EventStore

if TYPE_CHECKING:
    from services.ledger.commands import Ledger
    from services.mail.localsmtp import LocalSmtp
    from tests.portal_support import World

TEMPLATE_DB = "ledger_template"
_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    root = Path(tempfile.mkdtemp(prefix="ledger-test-pg-"))
    os.chmod(root, 0o755)
    server = LocalPostgres(root / "data", durable=False)
    server.start()
    yield server
    server.stop()
    remove_tree(root)


@pytest.fixture(scope="session")
async def migrated_template(pg_server: LocalPostgres) -> str:
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg_server.url_for(TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@contextlib.asynccontextmanager
async def fresh_database(server: LocalPostgres, template: str | None = None) -> AsyncIterator[str]:
    """A new database on the test server, a copy of ``template`` (else empty); its URL,
    dropped afterwards."""
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    finally:
        await conn.close()
    try:
        yield server.url_for(name)
    finally:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture
async def db_url(pg_server: LocalPostgres, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with fresh_database(pg_server, migrated_template) as url:
        yield url


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[EventStore]:
    """An event store on this test's database, its group-commit writer running."""
    s = EventStore(pool)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    b = LocalBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, for tests that stop and start it."""
    b = LocalBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topics() -> tuple[str, str]:
    """A ledger topic and an eligibility topic of this test's own on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    return f"ledger-{tag}", f"eligibility-{tag}"


# -- the ledger API ----------------------------------------------------------------------

from aiohttp.test_utils import TestClient  # noqa: E402

from services.ledger.subject_keys import new_master_key  # noqa: E402
from services.settings import Settings  # noqa: E402

MASTER_KEY = new_master_key()


@pytest.fixture
def settings_options() -> dict[str, Any]:
    """Settings fields a test module needs set otherwise: the module overrides this fixture."""
    return {}


@pytest.fixture
def settings(db_url: str, settings_options: dict[str, Any]) -> Settings:
    return Settings(**{"database_url": db_url, "master_key": MASTER_KEY, "pool_size": 5, **settings_options})


@pytest.fixture
async def api(aiohttp_client, settings: Settings) -> TestClient:
    from services.api.app import create_app

    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def operator_key(db_url: str) -> str:
    from services.ledger.api_keys import issue_key

    conn = await asyncpg.connect(db_url)
    try:
        return (await issue_key(conn, None, "operator", "tests")).key
    finally:
        await conn.close()


class Dealer:
    """A tenant made through the API, with a key per role."""

    def __init__(self, tenant_id: str, keys: dict[str, str]) -> None:
        self.tenant_id = tenant_id
        self.keys = keys

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


async def make_dealer(api: TestClient, operator_key: str, tenant_id: str) -> Dealer:
    r = await api.post("/v1/tenants", json={"tenant_id": tenant_id, "name": f"Autobedrijf {tenant_id}"},
                       headers={"Authorization": f"Bearer {operator_key}"})
    assert r.status == 201, await r.text()
    admin = (await r.json())["admin_key"]["key"]
    keys = {"admin": admin}
    for role in ("staff", "auditor", "sender", "importer", "marketing"):
        r = await api.post(f"/v1/tenants/{tenant_id}/api-keys", json={"role": role},
                           headers={"Authorization": f"Bearer {admin}"})
        assert r.status == 201, await r.text()
        keys[role] = (await r.json())["key"]
    return Dealer(tenant_id, keys)


@pytest.fixture
async def dealer(api: TestClient, operator_key: str) -> Dealer:
    return await make_dealer(api, operator_key, "garage-a")


@pytest.fixture
async def other_dealer(api: TestClient, operator_key: str) -> Dealer:
    return await make_dealer(api, operator_key, "garage-b")


# -- the importer, the portal, mail --------------------------------------------------------


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[Ledger]:
    """The ledger's commands on this test's database, with the tenant garage-a (the DMS
    import's tests: tests/import_support.py)."""
    from tests.import_support import start_ledger

    led = await start_ledger(pool, MASTER_KEY)
    yield led
    await led.store.stop()


@pytest.fixture
def world_options() -> dict[str, Any]:
    """Settings overrides for the portal app of ``world``: a module overrides this fixture."""
    return {}


@pytest.fixture
async def world(settings: Settings, aiohttp_client: Any, world_options: dict[str, Any]) -> World:
    """The portal app with two dealers, their accounts, subjects and links
    (tests/portal_support.py: make_world)."""
    from tests.portal_support import make_world

    return await make_world(aiohttp_client, settings, **world_options)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[LocalSmtp]:
    """A local SMTP server that keeps what it receives (services/mail/localsmtp.py)."""
    from services.mail.localsmtp import LocalSmtp

    server = LocalSmtp(tmp_path / "mail").start()
    yield server
    server.stop()
