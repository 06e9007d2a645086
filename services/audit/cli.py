"""`consent-ledger audit ...`: the audit and data subject rights commands.

Reads LEDGER_DATABASE_URL and LEDGER_MASTER_KEY (personal data, erasure, suppression)
from the environment. Answers are JSON on stdout (CSV for snapshots and CSV exports);
a request that cannot be answered prints a clear message on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

import asyncpg
import msgspec

from schemas.events import Actor
from services.audit import suppression
from services.audit.access import build_export, export_csv
from services.audit.asof import compare_with_now, explain_as_of
from services.audit.erasure import erase_subject
from services.audit.errors import AuditError
from services.audit.loading import check_subject_ids, load_subject_events, load_tenant, revealer
from services.audit.policy_history import policy_at, policy_by_version, versions
from services.audit.receipts import receipts_from
from services.audit.retention import run_retention
from services.audit.snapshot import write_snapshot
from services.audit.times import UTC, end_of_dutch_day, parse_known_at, parse_on
from services.errors import LedgerError, Refused
from services.ledger.commands import Context, Ledger
from services.ledger.store import EventStore
from services.ledger.subject_keys import SubjectKeys, master_keys
from services.settings import from_env


@dataclass(frozen=True)
class Runtime:
    """The open connections of one CLI run."""

    pool: asyncpg.Pool
    store: EventStore
    ledger: Ledger
    master_key: bytes
    previous_master_key: bytes | None = None  # during a master key rotation


@contextlib.asynccontextmanager
async def runtime(*, writes: bool = False, needs_key: bool = True) -> AsyncIterator[Runtime]:
    settings = from_env()
    if not settings.database_url:
        raise SystemExit("consent-ledger audit: LEDGER_DATABASE_URL is not set")
    if needs_key and not settings.master_key:
        raise SystemExit("consent-ledger audit: LEDGER_MASTER_KEY is not set (needed to open or shred personal data)")
    master, previous = master_keys(settings) if settings.master_key else (b"\0" * 32, None)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    store = EventStore(pool)
    if writes:
        await store.start()
    try:
        yield Runtime(pool=pool, store=store, ledger=Ledger(pool, store, SubjectKeys(pool, master, previous)),
                      master_key=master, previous_master_key=previous)
    finally:
        await store.stop()
        await pool.close()


def _print_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(msgspec.json.format(msgspec.json.encode(value).decode(), indent=2) + "\n")


def _run(work: Callable[[], Awaitable[int]]) -> int:
    try:
        return asyncio.run(work())
    except Refused as exc:  # AuditError, CommandRejected: the question or command as asked cannot be done
        field = f" ({exc.field})" if exc.field else ""
        print(f"consent-ledger audit: {exc.error}{field}: {exc.message}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"consent-ledger audit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _subject_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", required=True)
    p.add_argument("--source", default="dealer")
    p.add_argument("--ref", required=True, help="the dealer's customer ref")


def _time_args(p: argparse.ArgumentParser, k: str = "--known-at", d: str = "--on") -> None:
    p.add_argument(k, dest="known_at", default=None,
                   help="knowledge time K: ISO date-time with offset or a date (= end of that Dutch day); default now")
    p.add_argument(d, dest="on", default=None, help="date D (YYYY-MM-DD); default the Dutch day of K")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="audit as of any date, receipts, access export, erasure, retention")
    cmds = audit.add_subparsers(dest="audit_command", required=True)

    p = cmds.add_parser("as-of", help="a subject's eligibility matrix as known at K for date D, with evidence")
    _subject_args(p)
    _time_args(p)
    p.add_argument("--compare", action="store_true", help="also what is known now about D, and what changed")
    p.set_defaults(func=cmd_as_of)

    p = cmds.add_parser("policy", help="the policy text at K, by version id, or the list of versions")
    p.add_argument("--tenant", required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--known-at", dest="known_at", default=None)
    group.add_argument("--version", default=None)
    group.add_argument("--list", action="store_true")
    p.set_defaults(func=cmd_policy)

    p = cmds.add_parser("receipts", help="the consent receipts of a subject")
    _subject_args(p)
    p.set_defaults(func=cmd_receipts)

    p = cmds.add_parser("export", help="access export (GDPR art. 15) of a subject")
    _subject_args(p)
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--out", default="-", help="file to write (default stdout)")
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("erase", help="erase a subject (GDPR art. 17): shred its key; cannot be undone")
    _subject_args(p)
    p.add_argument("--confirm-ref", required=True, help="repeat the customer ref to confirm")
    p.set_defaults(func=cmd_erase)

    p = cmds.add_parser("snapshot", help="every subject's matrix as of K for date D, as CSV (streaming)")
    p.add_argument("--tenant", required=True)
    _time_args(p, "--as-of", "--at")
    p.add_argument("--out", default="-", help="CSV file to write (default stdout)")
    p.set_defaults(func=cmd_snapshot)

    p = cmds.add_parser("retention", help="erase subjects whose retention period ended (daily job)")
    p.add_argument("--tenant", action="append", default=None, help="only this tenant (repeatable); default all")
    p.add_argument("--dry-run", action="store_true", help="only list who would be erased")
    p.add_argument("--today", default=None, help="run as if today were this date (YYYY-MM-DD)")
    p.set_defaults(func=cmd_retention)

    p = cmds.add_parser("suppression", help="did this customer ref object before it was erased?")
    _subject_args(p)
    p.set_defaults(func=cmd_suppression)


def cmd_as_of(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with runtime() as rt:
            now = _now()
            known_at = parse_known_at(args.known_at, now)
            on = parse_on(args.on, known_at)
            events = await load_subject_events(rt.store, args.tenant, args.source, args.ref)
            tenant = await load_tenant(rt.store, args.tenant)
            reveal = await revealer(rt.ledger.keys, args.tenant, args.source, args.ref)
            if args.compare:
                _print_json(compare_with_now(events, tenant, known_at, now, on, reveal))
                return 0
            view = explain_as_of(events, tenant, known_at, on, reveal)
            if view is None:
                raise AuditError(404, "not_known_at", f"the ledger knew nothing of this subject at {known_at.isoformat()}",
                                 "known_at")
            _print_json(view)
            return 0

    return _run(work)


def cmd_policy(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with runtime(needs_key=False) as rt:
            tenant = await load_tenant(rt.store, args.tenant)
            if args.list:
                _print_json(versions(tenant))
            elif args.version:
                _print_json(policy_by_version(tenant, args.version))
            else:
                _print_json(policy_at(tenant, parse_known_at(args.known_at, _now())))
            return 0

    return _run(work)


def cmd_receipts(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with runtime(needs_key=False) as rt:
            events = await load_subject_events(rt.store, args.tenant, args.source, args.ref)
            _print_json(receipts_from(events, await load_tenant(rt.store, args.tenant)))
            return 0

    return _run(work)


@contextlib.contextmanager
def _output(path: str) -> Any:
    """stdout, or the file ``path``: written as ``path.part`` and renamed when complete, so
    a run that fails half-way leaves no half-written export or snapshot behind. A path that
    cannot be written is a clear error (exit 2), not a traceback."""
    if path == "-":
        yield sys.stdout
        return
    part = path + ".part"
    try:
        f = open(part, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise AuditError(422, "validation_error", f"cannot write {path}: {exc.strerror or exc}", "out") from None
    try:
        with f:
            yield f
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(part)
        raise


def cmd_export(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with runtime() as rt:
            events = await load_subject_events(rt.store, args.tenant, args.source, args.ref)
            tenant = await load_tenant(rt.store, args.tenant)
            export = build_export(events, tenant, await revealer(rt.ledger.keys, args.tenant, args.source, args.ref),
                                  _now())
            with _output(args.out) as out:
                if args.format == "csv":
                    out.write(export_csv(export))
                else:
                    _print_json(export, out)
            return 0

    return _run(work)


def cmd_erase(args: argparse.Namespace) -> int:
    async def work() -> int:
        if args.confirm_ref != args.ref:
            raise AuditError(422, "validation_error", "--confirm-ref must repeat --ref", "confirm_ref")
        check_subject_ids(args.tenant, args.source, args.ref)
        async with runtime(writes=True) as rt:
            ctx = Context(actor=Actor(kind="operator", id="cli"), method="system")
            _print_json(await erase_subject(rt.ledger, rt.master_key, ctx, args.tenant, args.source, args.ref))
            return 0

    return _run(work)


def cmd_snapshot(args: argparse.Namespace) -> int:
    async def work() -> int:
        async with runtime(needs_key=False) as rt:
            known_at = parse_known_at(args.known_at, _now(), "--as-of")
            on = parse_on(args.on, known_at, "--at")
            tenant = await load_tenant(rt.store, args.tenant)
            async with rt.pool.acquire() as conn:
                with _output(args.out) as out:
                    summary = await write_snapshot(conn, tenant, known_at, on, out)
            print(msgspec.json.encode(summary).decode(), file=sys.stderr)
            return 0

    return _run(work)


def cmd_retention(args: argparse.Namespace) -> int:
    async def work() -> int:
        now = _now()
        if args.today:
            try:
                now = end_of_dutch_day(dt.date.fromisoformat(args.today))
            except ValueError:
                raise AuditError(422, "validation_error", f"--today must be YYYY-MM-DD, not {args.today!r}",
                                 "today") from None
        async with runtime(writes=not args.dry_run) as rt:
            if args.tenant:
                for tenant_id in args.tenant:
                    await load_tenant(rt.store, tenant_id)
            reports = await run_retention(rt.ledger, rt.master_key, now=now, dry_run=args.dry_run, tenants=args.tenant)
            _print_json(reports)
            return 0

    return _run(work)


def cmd_suppression(args: argparse.Namespace) -> int:
    async def work() -> int:
        check_subject_ids(args.tenant, args.source, args.ref)
        async with runtime() as rt:
            _print_json(await suppression.lookup(rt.pool, rt.master_key, args.tenant, args.source, args.ref,
                                                 previous=rt.previous_master_key))
            return 0

    return _run(work)
