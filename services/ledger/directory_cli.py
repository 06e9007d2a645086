"""``consent-ledger directory sync|reindex``: keep the contact directory and blind search
index (services/ledger/directory.py) up to date from a nightly job, and rebuild them after
a master key rotation (the per-tenant search keys derive from the master key)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from schemas.vocabulary import is_slug
from services.settings import from_env


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("directory", help="the contact directory and blind search index")
    dsub = p.add_subparsers(dest="directory_command", required=True)
    for name, text in (("sync", "index the contact data recorded since the last sync (searches do this too)"),
                       ("reindex", "forget the tenant's index and build it again (after rotate-master-key)")):
        c = dsub.add_parser(name, help=text)
        c.add_argument("--tenant", action="append", help="a tenant id (repeatable); default: every tenant")
        c.set_defaults(func=cmd_directory)


def cmd_directory(args: argparse.Namespace) -> int:
    from services.ledger.directory import Directory
    from services.ledger.store import tenant_ids
    from services.ledger.subject_keys import SubjectKeys, master_keys

    settings = from_env()
    if not settings.database_url or not settings.master_key:
        print("consent-ledger directory: LEDGER_DATABASE_URL and LEDGER_MASTER_KEY must be set", file=sys.stderr)
        return 2
    for tenant in args.tenant or ():
        if not is_slug(tenant):
            print(f"consent-ledger directory: --tenant {tenant!r} is not a tenant id", file=sys.stderr)
            return 2

    async def run() -> int:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
        assert pool is not None
        try:
            tenants = args.tenant or await tenant_ids(pool)
            directory = Directory(pool, SubjectKeys.from_settings(pool, settings), master_keys(settings)[0])
            for tenant in tenants:
                done = await (directory.reindex(tenant) if args.directory_command == "reindex"
                              else directory.sync(tenant))
                print(f"{tenant}: {done} contact events indexed")
        finally:
            await pool.close()
        return 0

    return asyncio.run(run())
