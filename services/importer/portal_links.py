"""Portal links for a mailing: a CSV of customer numbers in, ``customer_ref;portal_url;status`` out.

A campaign e-mail should carry each customer's own privacy-portal link (seed, section 7:
"U kunt de klant ook de link toesturen"). Links are stored only as hashes
(services/portal/links.py), so the URL of a link issued earlier cannot be shown again.
Hence two modes:

* default: every listed customer gets a NEW link; a live one is revoked (status
  ``replaced``: the link in an earlier e-mail stops working, the new one replaces it);
* ``only_missing``: customers who have a live link keep it and are listed with status
  ``exists`` and no URL (the mailing must leave the link out or use another channel);
  the others get a new link (``issued``).

Customers the ledger does not know (``unknown_subject``), erased ones (``erased``),
invalid numbers (``invalid``) and repeats (``duplicate``) get no link. The output holds
live links, which are secrets: it is created with mode 0600 and should be deleted after
the mailing. URLs are never printed or logged.
"""

from __future__ import annotations

import asyncio
import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec
import structlog

from schemas.vocabulary import is_customer_ref, subject_stream
from services.errors import LedgerError
from services.importer.mapping import normalise_header
from services.importer.reader import FileProblem, detect_encoding
from services.ledger.commands import CommandRejected, Ledger

log = structlog.get_logger(__name__)

CHUNK: Final = 500
CONCURRENCY: Final = 4
STATUSES: Final = ("issued", "replaced", "exists", "unknown_subject", "erased", "invalid", "duplicate")


class LinkExportRefused(LedgerError):
    """Nothing was issued: unknown tenant/source or an unreadable list. CLI only
    (``consent-ledger portal-links``): the message, exit 2; no HTTP answer."""


class ExportResult(msgspec.Struct, kw_only=True):
    counts: dict[str, int]

    @property
    def problems(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("unknown_subject", "erased", "invalid", "duplicate"))

    def describe(self, out: Path) -> str:
        shown = ", ".join(f"{self.counts.get(s, 0)} {s}" for s in STATUSES if self.counts.get(s))
        return f"{out}: {sum(self.counts.values())} customers: {shown or 'none'}"


def read_refs(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """(line, customer ref) from a CSV with a header (``;`` or ``,``, UTF-8 or Windows-1252)."""
    try:
        encoding = detect_encoding(path)
    except FileProblem as exc:
        raise LinkExportRefused(f"{path}: {exc}") from None
    with open(path, encoding=encoding, newline="") as f:
        first = f.readline()
        delimiter = ";" if first.count(";") >= first.count(",") else ","
        header = [normalise_header(h) for h in next(csv.reader([first], delimiter=delimiter), [])]
        if normalise_header(column) in header:
            index = header.index(normalise_header(column))
        elif len(header) == 1:
            index = 0
        else:
            raise LinkExportRefused(f"{path}: no column {column!r} in the header ({', '.join(header)})")
        reader = csv.reader(f, delimiter=delimiter)
        for row in reader:
            if row and any(c.strip() for c in row):
                yield reader.line_num + 1, (row[index].strip() if index < len(row) else "")


async def export_portal_links(ledger: Ledger, tenant: str, source: str, refs: Path, out: Path, *,
                              column: str = "customer_ref", only_missing: bool = False, base_url: str,
                              issued_by: str = "import") -> ExportResult:
    from services.portal.links import PortalLinkExists, UnknownSubject, issue_portal_link, live_link_refs

    try:
        await ledger.require_source(tenant, source)
    except CommandRejected as exc:
        raise LinkExportRefused(exc.message) from None
    entries = read_refs(refs, column)
    counts: dict[str, int] = {}
    seen: set[str] = set()
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def issue(ref: str, had_link: bool) -> tuple[str, str]:
        async with semaphore:
            try:
                url = await issue_portal_link(ledger.pool, tenant, source, ref, rotate=not only_missing,
                                              base_url=base_url, issued_by=f"import:{issued_by}")
            except PortalLinkExists:
                return "", "exists"  # issued by someone else meanwhile
            except UnknownSubject:
                return "", "unknown_subject"
        return url, "replaced" if had_link else "issued"

    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        os.chmod(out, 0o600)  # also when the file existed before with a wider mode
        writer = csv.writer(f, delimiter=";")
        writer.writerow(("customer_ref", "portal_url", "status"))
        while True:
            chunk = [ref for _, ref in _take(entries, CHUNK)]
            if not chunk:
                break
            answers: list[tuple[str, str, str] | asyncio.Task[tuple[str, str]]] = []
            valid = [r for r in dict.fromkeys(chunk) if is_customer_ref(r) and r not in seen]
            heads = await ledger.subject_heads([subject_stream(tenant, source, r) for r in valid]) if valid else {}
            live = await live_link_refs(ledger.pool, tenant, source, valid)
            for ref in chunk:
                if not is_customer_ref(ref):
                    answers.append((ref, "", "invalid"))
                    continue
                if ref in seen:
                    answers.append((ref, "", "duplicate"))
                    continue
                seen.add(ref)
                version, erased = heads.get(subject_stream(tenant, source, ref), (0, False))
                if erased:
                    answers.append((ref, "", "erased"))
                elif version == 0:
                    answers.append((ref, "", "unknown_subject"))
                elif only_missing and ref in live:
                    answers.append((ref, "", "exists"))
                else:
                    answers.append(asyncio.ensure_future(issue(ref, ref in live)))
            for ref, answer in zip(chunk, answers):
                if isinstance(answer, tuple):
                    row = answer
                else:
                    url, status = await answer
                    row = (ref, url, status)
                counts[row[2]] = counts.get(row[2], 0) + 1
                writer.writerow(row)
    log.info("portal_links_exported", tenant=tenant, source=source, only_missing=only_missing, **counts)
    return ExportResult(counts=counts)


def _take(it: Iterator[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out
