"""`consent-ledger`: the command line of the whole system.

Sub-commands live next to what they operate on; each module listed in ``COMMAND_MODULES``
has ``register(subparsers)`` that adds its commands with a ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

import asyncpg

from services.kafka_security import KafkaSecurity
from services.logs import configure_logging
from services.settings import SettingsError, from_env

COMMAND_MODULES: tuple[str, ...] = (
    "services.cli",
    "services.ledger.relay",
    "services.devstack",
    "services.audit.cli",
    "services.portal.cli",
    "services.importer.cli",
    "services.ledger.directory_cli",
    "services.projector.cli",
    "schemas.export",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("verify", help="check the hash chain of the whole ledger")
    p.add_argument("--anchor", action="append", default=[], type=_anchor, metavar="[PARTITION/]POSITION:HASH",
                   help="a hash kept outside the database (e.g. from the Kafka topic: the envelope's partition,"
                        " position and hash) that the event must have; without PARTITION/, an event written before"
                        " the log was partitioned; repeatable")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("serve", help="run the ledger HTTP API (and the Kafka relay if a broker is set)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="server processes sharing the port (SO_REUSEPORT); default LEDGER_HTTP_WORKERS (1)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("keygen", help="print a new master key for LEDGER_MASTER_KEY")
    p.set_defaults(func=cmd_keygen)
    p = sub.add_parser("rotate-master-key",
                       help="re-wrap every subject key (and re-hash the suppression list) from"
                            " LEDGER_MASTER_KEY_PREVIOUS to LEDGER_MASTER_KEY")
    p.set_defaults(func=cmd_rotate_master_key)
    p = sub.add_parser("operator-key", help="issue an operator API key (creates tenants); printed once")
    p.add_argument("--label", default="operator")
    p.set_defaults(func=cmd_operator_key)


def _database_url() -> str:
    url = from_env().database_url
    if not url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from services.ledger.migrate import migrate

    async def run() -> list[str]:
        conn = await asyncpg.connect(_database_url())
        try:
            return await migrate(conn, log_partitions=from_env().log_partitions)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _anchor(text: str) -> object:
    from services.ledger.hashchain import parse_anchor

    try:
        return parse_anchor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_verify(args: argparse.Namespace) -> int:
    from services.ledger.verify import verify_ledger

    async def run() -> tuple[int, object]:
        url = _database_url()
        conn = await asyncpg.connect(url)
        try:
            # Partitions are verified in parallel, on connections sharing the snapshot.
            return await verify_ledger(conn, anchors=args.anchor, connect=lambda: asyncpg.connect(url))
        finally:
            await conn.close()

    try:
        count, broken = asyncio.run(run())
    except ValueError as exc:  # contradictory anchors
        print(f"consent-ledger verify: {exc}", file=sys.stderr)
        return 2
    if broken is None:
        n = len(args.anchor)
        anchored = f", {n} anchor{'s' if n != 1 else ''} matched" if n else ""
        print(f"ok: {count} events, hash chain intact{anchored}")
        return 0
    print(f"BROKEN at {broken.where()}: {broken.problem} ({count} events verified before it)")  # type: ignore[attr-defined]
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    from services.serving import serve_processes

    settings = from_env()
    if not settings.database_url:
        raise SystemExit("consent-ledger: LEDGER_DATABASE_URL is not set")
    workers = args.workers if args.workers is not None else settings.http_workers
    return serve_processes(_serve_one, args.host or settings.host, args.port or settings.port, workers, "ledger")


def _serve_one(host: str, port: int, reuse_port: bool) -> None:
    """One API process on uvloop; no aiohttp access log (the app logs each request itself)."""
    from aiohttp import web

    from services.api.app import create_app
    from services.serving import event_loop, server_gc, server_options

    settings = from_env()
    configure_logging(settings.log_level)  # a spawned worker starts afresh
    app = create_app(settings)
    server_gc()
    web.run_app(app, host=host, port=port, access_log=None, print=None, loop=event_loop(),
                reuse_port=reuse_port or None, **server_options(settings))


def cmd_keygen(args: argparse.Namespace) -> int:
    from services.ledger.subject_keys import new_master_key

    print(new_master_key())
    return 0


def cmd_rotate_master_key(args: argparse.Namespace) -> int:
    """Step 2 of a master key rotation (docs/deploy.md): everything the previous master key
    protects moves to the current one. Idempotent; exit 1 if any subject key opens with
    neither key (nothing is changed for those)."""
    import msgspec

    from services.audit import suppression
    from services.ledger.subject_keys import master_keys, rewrap_subject_keys

    settings = from_env()
    try:
        current, previous = master_keys(settings)
    except ValueError as exc:
        print(f"consent-ledger: {exc}", file=sys.stderr)
        return 2
    if previous is None:
        print("consent-ledger: set LEDGER_MASTER_KEY_PREVIOUS (or _FILE) to the key being replaced", file=sys.stderr)
        return 2

    async def run() -> tuple[object, int]:
        pool = await asyncpg.create_pool(_database_url(), min_size=1, max_size=2)
        assert pool is not None
        try:
            report = await rewrap_subject_keys(pool, current, previous)
            moved = await suppression.rehash(pool, current, previous)
            return report, moved
        finally:
            await pool.close()

    report, moved = asyncio.run(run())
    summary = {**msgspec.structs.asdict(report), "suppressions_rehashed": moved}  # type: ignore[arg-type]
    print(msgspec.json.encode(summary).decode())
    if summary["unopenable"]:
        print(f"consent-ledger: {len(summary['unopenable'])} subject keys open with neither master key; left as they"
              " are", file=sys.stderr)
        return 1
    return 0


def cmd_operator_key(args: argparse.Namespace) -> int:
    from services.ledger.api_keys import issue_key
    from services.ledger.migrate import migrate

    async def run() -> str:
        conn = await asyncpg.connect(_database_url())
        try:
            await migrate(conn)
            return (await issue_key(conn, None, "operator", args.label)).key
        finally:
            await conn.close()

    print(asyncio.run(run()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-ledger", description="Event-sourced consent ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = from_env()
        KafkaSecurity.from_settings(settings)  # a wrong TLS/SASL setting is refused before anything starts
    except SettingsError as exc:  # e.g. LEDGER_MASTER_KEY_FILE names a missing file
        print(f"consent-ledger: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
