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
