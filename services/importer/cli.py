"""``consent-ledger import`` and ``consent-ledger portal-links export``.

* ``import --tenant T --source S [--kind K] [--mapping M.toml] [--report R.csv] FILE...``:
  the DMS's daily files into the ledger, in-process (no HTTP), in atomic batches.
  Exit status: 0 every row imported (or already there); 1 some rows rejected (the valid
  ones are imported; see the report); 2 nothing imported (bad arguments, unknown
  tenant/source, unreadable file, another import running); 3 stopped part-way (the
  database went away): run the same command again, it picks up where it stopped.
* ``portal-links export --tenant T --source S REFS.csv --out links.csv [--only-missing]``:
  a personal portal URL per customer for a mailing (see services/importer/portal_links.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import msgspec

from schemas.events import Actor
from schemas.vocabulary import is_slug
from services.importer.mapping import DEFAULT_MAPPING, KINDS, Mapping, MappingError, load_mapping
from services.importer.pipeline import DEFAULT_BATCH, MAX_BATCH, Importer, ImportRefused, Summary
from services.importer.plans import Rejection
from services.importer.report import ConsoleRejections, RejectionReport
from services.settings import Settings, from_env

EXIT_OK, EXIT_REJECTED, EXIT_REFUSED, EXIT_ABORTED = 0, 1, 2, 3
PROGRESS_MIN_BYTES = 256 * 1024  # about 3,000 invoice rows: below that a bar only flickers


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help="import DMS files (invoices, prospects, opt-in settings) into the ledger",
                       description="Import DMS export files (CSV or JSON Lines) into the ledger, idempotently.")
    p.add_argument("files", nargs="+", metavar="FILE", type=Path)
    p.add_argument("--tenant", required=True)
    p.add_argument("--source", required=True, help="data source, e.g. dealer or unknown")
    p.add_argument("--kind", choices=("auto", *KINDS), default="auto",
                   help="what the files hold (default: recognised from the columns)")
    p.add_argument("--mapping", type=Path, help="TOML file mapping the DMS's columns (examples/dms-mapping.toml)")
    p.add_argument("--format", choices=("auto", "csv", "jsonl"), default="auto",
                   help="default: from the file name (.jsonl/.ndjson = JSON Lines, else CSV)")
    p.add_argument("--report", type=Path,
                   help="where rejected rows go (.csv or .jsonl); default import-rejected-<tenant>-<time>.csv,"
                        " written only if a row is rejected")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"rows per atomic batch (1..{MAX_BATCH})")
    p.add_argument("--json", action="store_true", help="print each file's summary as one JSON line at the end")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, for files over a few thousand rows)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-changes", help="write-back: preference changes, objections and erasures since a cursor",
                       description="Write every preference change, objection and erasure recorded since the cursor"
                                   " as CSV in the import mapping's columns (or JSON), for the DMS. With"
                                   " --cursor-file the cursor is read from it and, once the output file is complete,"
                                   " the new cursor is written to it: run it every night and nothing is missed or"
                                   " given twice; a run that stops is simply run again.")
    p.add_argument("--tenant", required=True)
    p.add_argument("--source", help="only this data source (an import file is per source)")
    p.add_argument("--after", type=int, help="the cursor to start after (default: the cursor file's, else 0)")
    p.add_argument("--cursor-file", type=Path, help="where the cursor is kept between runs")
    p.add_argument("--mapping", type=Path, help="TOML mapping: the DMS's column names and words (CSV)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", type=Path, required=True, help="the file to write (replaced only when complete)")
    p.set_defaults(func=cmd_export_changes)

    p = sub.add_parser("portal-links", help="portal links for mailings")
    psub = p.add_subparsers(dest="portal_links_command", required=True)
    e = psub.add_parser("export", help="issue personal portal links for a list of customers and write them as CSV",
                        description="Issue a personal portal link per customer and write customer_ref;portal_url"
                                    " as CSV for a mailing. Links are stored hashed, so an existing link cannot be"
                                    " shown again: by default every listed customer gets a NEW link (their old link"
                                    " stops working); with --only-missing only customers without a live link get"
                                    " one and the others are listed with status 'exists'.")
    e.add_argument("refs", type=Path, metavar="REFS.csv", help="CSV with a customer_ref column (or one column)")
    e.add_argument("--tenant", required=True)
    e.add_argument("--source", required=True)
    e.add_argument("--out", type=Path, required=True, help="the CSV to write (created 0600: it holds live links)")
    e.add_argument("--column", default="customer_ref", help="the column of REFS.csv with the customer numbers")
    e.add_argument("--only-missing", action="store_true", help="keep live links; issue only where there is none")
    e.set_defaults(func=cmd_portal_links_export)


# -- the in-process ledger ---------------------------------------------------------------


@asynccontextmanager
async def open_ledger(settings: Settings, *, pool_size: int = 6) -> AsyncIterator[object]:
    """Pool, event store (its writer running) and Ledger, closed on exit."""
    from services.ledger.commands import Ledger
    from services.ledger.migrate import migrate
    from services.ledger.store import EventStore
    from services.ledger.subject_keys import SubjectKeys

    if not settings.database_url:
        raise ImportRefused("LEDGER_DATABASE_URL is not set", field="LEDGER_DATABASE_URL", status=2)
    if not settings.master_key:
        raise ImportRefused("LEDGER_MASTER_KEY is not set (needed to seal contact data)",
                            field="LEDGER_MASTER_KEY", status=2)
    pool = await asyncpg.create_pool(settings.database_url, min_size=2, max_size=pool_size)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        store = EventStore(pool)
        await store.start()
        try:
            yield Ledger(pool, store, SubjectKeys.from_settings(pool, settings))
        finally:
            await store.stop()
    finally:
        await pool.close()


# -- import ------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    for name, value in (("--tenant", args.tenant), ("--source", args.source)):
        if not is_slug(value):
            return _refuse(f"{name} {value!r}: lower-case letters, digits, _ and - (max 40)")
    if not 1 <= args.batch_size <= MAX_BATCH:
        return _refuse(f"--batch-size must be 1..{MAX_BATCH}")
    for f in args.files:
        if not f.is_file():
            return _refuse(f"{f}: no such file")
    try:
        mapping = load_mapping(args.mapping) if args.mapping else DEFAULT_MAPPING
    except MappingError as exc:
        return _refuse(f"mapping {exc}")
    report_path = args.report or Path(
        f"import-rejected-{args.tenant}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.csv")
    try:
        return asyncio.run(_import(args, mapping, report_path))
    except ImportRefused as exc:
        return _refuse(str(exc))


def _refuse(message: str) -> int:
    print(f"consent-ledger import: {message}; nothing was imported", file=sys.stderr)
    return EXIT_REFUSED


async def _import(args: argparse.Namespace, mapping: Mapping, report_path: Path) -> int:
    settings = from_env()
    status = EXIT_OK
    summaries: list[Summary] = []
    report = RejectionReport(report_path, "", always=args.report is not None)
    try:
        async with open_ledger(settings) as ledger:
            importer = Importer(ledger, batch_size=args.batch_size)  # type: ignore[arg-type]
            for path in args.files:
                label = path.name
                report.file_label = label
                on_reject = _reject_to(report, ConsoleRejections(sys.stdout, label))

                with _progress(args.progress, path, label) as on_progress:
                    try:
                        summary = await importer.run_file(
                            str(path), tenant=args.tenant, source=args.source, mapping=mapping,
                            actor=Actor(kind="importer", id="cli"), kind=None if args.kind == "auto" else args.kind,
                            fmt=None if args.format == "auto" else args.format, on_reject=on_reject,
                            on_progress=on_progress, display_name=label)
                    except ImportRefused as exc:
                        print(f"{label}: refused: {exc} (field: {exc.field}); nothing was imported from it",
                              file=sys.stderr)
                        status = max(status, EXIT_REFUSED)
                        continue
                summaries.append(summary)
                print(describe(summary))
                if summary.aborted:
                    status = max(status, EXIT_ABORTED)
                elif summary.rejected:
                    status = max(status, EXIT_REJECTED)
    finally:
        report.close()
    if report.count:
        print(f"{report.count} rejected row(s) written to {report_path}")
    if args.json:
        for s in summaries:
            print(msgspec.json.encode(s).decode())
    return status


def _reject_to(report: RejectionReport, console: ConsoleRejections) -> Callable[[Rejection], None]:
    def on_reject(rejection: Rejection) -> None:
        report.write(rejection)
        console.write(rejection)

    return on_reject


def describe(s: Summary) -> str:
    """One paragraph per file for people (the --json line is for machines)."""
    parts = [f"{s.file}: {s.kind} ({s.format}, {s.encoding}): {s.rows} rows: {s.recorded} recorded"]
    if s.kind == "invoices":
        parts.append(f"{s.corrected} corrected")
    parts.append(f"{s.unchanged} unchanged")
    if s.kind == "preferences":
        parts.append(f"{s.kept} kept (changed by the customer since the last import)")
        parts.append(f"{s.ignored} ignored")
    parts.append(f"{s.rejected} rejected")
    text = ", ".join(parts) + f"; {s.events} events in {s.batches} batches"
    if s.first_position is not None:
        text += f" (ledger positions {s.first_position}..{s.last_position})"
    text += f"; {s.seconds:.1f} s, {s.rows_per_s:,.0f} rows/s; run {s.run_id}"
    if s.aborted:
        text += f"\n{s.file}: STOPPED: {s.aborted}. Run the same import again to finish it (rows already" \
                " imported are recognised and skipped)."
    return text


class _progress:
    """A rich progress bar on stderr (rows and rows/s), or nothing."""

    def __init__(self, wanted: bool | None, path: Path, label: str) -> None:
        self.size = path.stat().st_size
        show = wanted if wanted is not None else (sys.stderr.isatty() and self.size >= PROGRESS_MIN_BYTES)
        self.bar = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]:,.0f} rows/s"),
                                TimeElapsedColumn(), console=Console(file=sys.stderr), transient=False)
            self.task = self.bar.add_task(label, total=self.size or 1, rows=0, rate=0.0)
        self.started = 0.0

    def __enter__(self) -> object:
        if self.bar is None:
            return None
        import time

        self.bar.start()
        self.started = time.perf_counter()

        def update(rows: int, position: int) -> None:
            elapsed = time.perf_counter() - self.started
            self.bar.update(self.task, completed=position, rows=rows,  # type: ignore[union-attr]
                            rate=rows / elapsed if elapsed > 0 else 0.0)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# -- write-back ---------------------------------------------------------------------------


def cmd_export_changes(args: argparse.Namespace) -> int:
    import os

    from services.importer.writeback import changes_csv
    from services.ledger.changes import ChangesPage, UnknownCursor, changes_since
    from services.ledger.store import EventStore

    def refuse(message: str) -> int:
        print(f"consent-ledger export-changes: {message}", file=sys.stderr)
        return EXIT_REFUSED

    if not is_slug(args.tenant):
        return refuse(f"--tenant {args.tenant!r}: lower-case letters, digits, _ and - (max 40)")
    if args.source is not None and not is_slug(args.source):
        return refuse(f"--source {args.source!r}: lower-case letters, digits, _ and - (max 40)")
    after = args.after
    if after is None and args.cursor_file is not None and args.cursor_file.exists():
        text = args.cursor_file.read_text().strip()
        if not (text.isascii() and text.isdigit()):
            return refuse(f"--cursor-file {args.cursor_file}: {text[:40]!r} is not a cursor")
        after = int(text)
    after = after or 0
    if after < 0:
        return refuse("--after: a cursor is 0 or more")
    try:
        mapping = load_mapping(args.mapping) if args.mapping else DEFAULT_MAPPING
    except MappingError as exc:
        return refuse(f"--mapping: {exc}")
    settings = from_env()
    if not settings.database_url:
        return refuse("LEDGER_DATABASE_URL is not set")

    async def run() -> tuple[int, int, int]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            if await EventStore(pool).stream_version(f"tenant/{args.tenant}") == 0:
                raise ImportRefused(f"--tenant {args.tenant!r} does not exist", field="tenant", status=2)
            tmp = args.out.with_name(args.out.name + ".partial")
            cursor, rows, first = after, 0, True
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                pages: list[ChangesPage] = []
                while True:
                    page = await changes_since(pool, args.tenant, cursor, 5000, source=args.source)
                    rows += len(page.changes)
                    if args.format == "csv":
                        out.write(changes_csv(page, mapping, header=first))
                    else:
                        pages.append(page)
                    first = False
                    cursor = page.next_cursor
                    if not page.has_more:
                        break
                if args.format == "json":
                    out.write(msgspec.json.encode(ChangesPage(
                        tenant_id=args.tenant, after=after, next_cursor=cursor, has_more=False,
                        changes=[c for p in pages for c in p.changes])).decode() + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, args.out)  # the file is there whole, or not at all
            if args.cursor_file is not None:  # only after the file is complete: a crash repeats, never skips
                ctmp = args.cursor_file.with_name(args.cursor_file.name + ".partial")
                ctmp.write_text(f"{cursor}\n")
                os.replace(ctmp, args.cursor_file)
            return after, cursor, rows
        finally:
            await pool.close()

    try:
        start, cursor, rows = asyncio.run(run())
    except UnknownCursor:
        return refuse(f"cursor {after} was not given by this ledger (it is past its end)")
    except ImportRefused as exc:
        return refuse(str(exc))
    print(f"{args.out}: {rows} changes after cursor {start}; next cursor {cursor}")
    return EXIT_OK


# -- portal links ------------------------------------------------------------------------


def cmd_portal_links_export(args: argparse.Namespace) -> int:
    from services.importer.portal_links import LinkExportRefused, export_portal_links

    for name, value in (("--tenant", args.tenant), ("--source", args.source)):
        if not is_slug(value):
            print(f"consent-ledger portal-links: {name} {value!r} is not valid", file=sys.stderr)
            return EXIT_REFUSED
    settings = from_env()

    async def run() -> int:
        async with open_ledger(settings) as ledger:
            result = await export_portal_links(
                ledger, args.tenant, args.source, args.refs, args.out, column=args.column,  # type: ignore[arg-type]
                only_missing=args.only_missing, base_url=settings.portal_base_url, issued_by="cli")
        print(result.describe(args.out))
        return EXIT_OK if not result.problems else EXIT_REJECTED

    try:
        return asyncio.run(run())
    except (LinkExportRefused, ImportRefused) as exc:
        print(f"consent-ledger portal-links: {exc}; no links were issued", file=sys.stderr)
        return EXIT_REFUSED
