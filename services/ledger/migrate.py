"""Forward-only SQL migrations.

Each service package that owns tables has a ``migrations/`` folder of ``NNNN_name.sql``
files (one table, index or function per file, schema-qualified). They are applied
package by package in the order of ``MIGRATION_PACKAGES`` (the ledger first: others may
refer to it), and within a package in name order. Each file runs in its own transaction
and is recorded in ``ledger.schema_migrations`` as ``package/file``; an advisory lock
keeps two processes from migrating at once.
"""

from __future__ import annotations

from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_MIGRATION_LOCK = 0x6C6564676572  # "ledger"


MIGRATION_PACKAGES: tuple[str, ...] = (
    "services.ledger",
    "services.audit",
    "services.portal",
    "services.projector",
    "services.importer",
    "services.mail",
)


def migration_files() -> list[tuple[str, str]]:
    """(recorded name, SQL) of every migration, in the order they apply."""
    out: list[tuple[str, str]] = []
    for package in MIGRATION_PACKAGES:
        folder = resources.files(package) / "migrations"
        files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
        prefix = "" if package == "services.ledger" else f"{package}/"
        out += [(prefix + name, f.read_text("utf-8")) for name, f in files]
    return out


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    """Names of the migrations not applied yet; read-only (needs SELECT on
    ledger.schema_migrations, nothing more)."""
    names = [name for name, _ in migration_files()]
    if await conn.fetchval("SELECT to_regclass('ledger.schema_migrations')") is None:
        return names
    done = {r["name"] for r in await conn.fetch("SELECT name FROM ledger.schema_migrations")}
    return [name for name in names if name not in done]


async def migrate(conn: asyncpg.Connection, *, log_partitions: int | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied. ``log_partitions``: the number
    of log partitions, used only by the migration that creates them (0010_partitions.sql:
    chosen once, at install; default 32)."""
    applied_now: list[str] = []
    # Nothing pending: run no DDL at all, so that services connecting as a least-privilege
    # role (no CREATE right, deploy/postgres-roles.sql) start once `migrate` has run.
    if not await pending_migrations(conn):
        return applied_now
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        if log_partitions is not None:
            await conn.execute("SELECT set_config('ledger.log_partitions', $1, false)", str(log_partitions))
        await conn.execute("CREATE SCHEMA IF NOT EXISTS ledger")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ledger.schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM ledger.schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO ledger.schema_migrations (name) VALUES ($1)", name)
            log.info("migration_applied", migration=name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now
