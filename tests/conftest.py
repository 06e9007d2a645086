"""Fixtures: a real PostgreSQL and a real Kafka-protocol broker, started by the tests
themselves on loopback and free ports. Each test gets a fresh database cloned from a
migrated template, so tests never see each other's events."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.devservers import LocalBroker, LocalPostgres, remove_tree
from services.ledger.migrate import migrate

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


@pytest.fixture
async def db_url(pg_server: LocalPostgres, migrated_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {migrated_template}")
    finally:
        await conn.close()
    yield pg_server.url_for(name)
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()


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


# -- the ledger API ----------------------------------------------------------------------

from aiohttp.test_utils import TestClient  # noqa: E402

from services.ledger.subject_keys import new_master_key  # noqa: E402
from services.settings import Settings  # noqa: E402

MASTER_KEY = new_master_key()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, master_key=MASTER_KEY, pool_size=5)


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
