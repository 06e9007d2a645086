"""A campaign sender that follows ``consent.eligibility.v1`` into a local SQLite table and
filters its send lists with it.

    # keep a local copy of every subject's eligibility matrix (Ctrl-C stops; --until-idle 5
    # stops after 5 quiet seconds, e.g. from cron)
    python examples/campaign_sender.py follow --bootstrap 127.0.0.1:19092 --db sender.sqlite

    # which of these customers may get the newsletter by e-mail on 1 June?
    python examples/campaign_sender.py filter --db sender.sqlite --tenant demo-garage \\
        --category newsletter --channel email --date 2026-06-01 send_list.csv > to_send.csv

The send list is a CSV with a ``customer_ref`` column and optionally a ``source`` column
(default ``--source dealer``). The output has the eligible rows, with the reason, the
date the basis lapses and whether the message must carry the prospect disclosure.

How it stays right:

* offsets are stored in the same SQLite transaction as the rows, so a restart continues
  exactly where it stopped;
* a null value (tombstone) deletes the subject: it was erased;
* a matrix evaluated on day E with ``valid_until`` U holds for E <= D < U. A send date
  outside that window is not answered from the copy: those subjects are reported on
  stderr, to be checked with ``POST /v1/tenants/{tenant}/eligibility:check``. A subject
  not in the copy is never sent to.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.eligibility import TOPIC, EligibilityMatrix, decode_matrix  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS eligibility (
    key           TEXT PRIMARY KEY,   -- {tenant}/{source}/{customer_ref}
    tenant_id     TEXT NOT NULL,
    source        TEXT NOT NULL,
    customer_ref  TEXT NOT NULL,
    evaluated_on  TEXT NOT NULL,
    valid_until   TEXT,
    position      INTEGER NOT NULL,
    matrix        TEXT NOT NULL        -- the message as received (JSON)
);
CREATE TABLE IF NOT EXISTS offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


# -- following the topic -------------------------------------------------------------------


def store_batch(db: sqlite3.Connection, topic: str, records: Iterable[tuple[int, int, bytes, bytes | None]]) -> int:
    """Apply (partition, offset, key, value) records and their offsets in one transaction."""
    n = 0
    offsets: dict[int, int] = {}
    with db:
        for partition, offset, key, value in records:
            if value is None:
                db.execute("DELETE FROM eligibility WHERE key = ?", (key.decode(),))
            else:
                m = decode_matrix(value)
                db.execute(
                    "INSERT INTO eligibility (key, tenant_id, source, customer_ref, evaluated_on, valid_until,"
                    " position, matrix) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                    " evaluated_on = excluded.evaluated_on, valid_until = excluded.valid_until,"
                    " position = excluded.position, matrix = excluded.matrix",
                    (m.key, m.tenant_id, m.source, m.customer_ref, m.evaluated_on.isoformat(),
                     m.valid_until.isoformat() if m.valid_until else None, m.position, value.decode()),
                )
            offsets[partition] = offset + 1
            n += 1
        db.executemany(
            "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?)"
            " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            [(topic, p, o) for p, o in offsets.items()],
        )
    return n


async def follow(bootstrap: str, db_path: Path, *, topic: str = TOPIC, until_idle: float | None = None) -> int:
    """Copy the topic into the database until stopped (or ``until_idle`` quiet seconds)."""
    db = open_db(db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        partitions = sorted(p["partition"] for d in described if d["topic"] == topic for p in d["partitions"])
    finally:
        await admin.close()
    if not partitions:
        raise SystemExit(f"campaign_sender: no topic {topic} on {bootstrap}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=100)
    await consumer.start()
    total = 0
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        stored = dict(db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,)).fetchall())
        for tp in tps:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        quiet_since = time.monotonic()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            records = [(tp.partition, r.offset, r.key, r.value) for tp, rs in batch.items() for r in rs]
            if records:
                total += store_batch(db, topic, records)
                quiet_since = time.monotonic()
            elif until_idle is not None and time.monotonic() - quiet_since >= until_idle:
                break
    finally:
        await consumer.stop()
        db.close()
    return total


# -- filtering a send list -----------------------------------------------------------------


class Verdict(msgspec.Struct, frozen=True):
    source: str
    customer_ref: str
    status: str  # "eligible", "not_eligible", "unknown", "recheck"
    reason: str = ""
    until: str = ""
    requires_disclosure: bool = False
    requires_postfilter_check: bool = False  # screen the address against the Postfilter first
    requires_objection_offer: bool = False  # the message must offer the right to object


def verdicts(db: sqlite3.Connection, tenant: str, category: str, channel: str, on: dt.date,
             subjects: Iterable[tuple[str, str]]) -> Iterator[Verdict]:
    for source, ref in subjects:
        row = db.execute("SELECT matrix FROM eligibility WHERE key = ?", (f"{tenant}/{source}/{ref}",)).fetchone()
        if row is None:
            yield Verdict(source, ref, "unknown")
            continue
        matrix: EligibilityMatrix = decode_matrix(row[0])
        if on < matrix.evaluated_on or (matrix.valid_until is not None and on >= matrix.valid_until):
            yield Verdict(source, ref, "recheck")
            continue
        cell = matrix.cell(category, channel)
        yield Verdict(source, ref, "eligible" if cell.eligible else "not_eligible", cell.reason,
                      cell.until.isoformat() if cell.until else "", cell.requires_disclosure,
                      cell.requires_postfilter_check, cell.requires_objection_offer)


def read_send_list(handle: TextIO, default_source: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or "customer_ref" not in reader.fieldnames:
        raise SystemExit("campaign_sender: the send list needs a customer_ref column")
    return [((row.get("source") or default_source).strip(), row["customer_ref"].strip()) for row in reader]


def filter_list(db_path: Path, tenant: str, category: str, channel: str, on: dt.date, send_list: TextIO,
                out: TextIO, default_source: str = "dealer") -> dict[str, int]:
    db = open_db(db_path)
    try:
        counts = {"eligible": 0, "not_eligible": 0, "unknown": 0, "recheck": 0}
        writer = csv.writer(out)
        writer.writerow(["source", "customer_ref", "reason", "until", "requires_disclosure",
                         "requires_postfilter_check", "requires_objection_offer"])
        recheck = []
        for v in verdicts(db, tenant, category, channel, on, read_send_list(send_list, default_source)):
            counts[v.status] += 1
            if v.status == "eligible":
                writer.writerow([v.source, v.customer_ref, v.reason, v.until, "yes" if v.requires_disclosure else "",
                                 "yes" if v.requires_postfilter_check else "",
                                 "yes" if v.requires_objection_offer else ""])
            elif v.status == "recheck":
                recheck.append(f"{v.source}/{v.customer_ref}")
        if recheck:
            print(f"campaign_sender: {len(recheck)} subject(s) need a fresh check for {on.isoformat()}"
                  f" (POST /v1/tenants/{tenant}/eligibility:check): {', '.join(recheck[:20])}", file=sys.stderr)
        return counts
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="campaign_sender", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("follow", help="copy consent.eligibility.v1 into the local database")
    f.add_argument("--bootstrap", required=True)
    f.add_argument("--db", type=Path, required=True)
    f.add_argument("--topic", default=TOPIC)
    f.add_argument("--until-idle", type=float, default=None, help="stop after this many quiet seconds")
    s = sub.add_parser("filter", help="print the eligible part of a send list (CSV)")
    s.add_argument("--db", type=Path, required=True)
    s.add_argument("--tenant", required=True)
    s.add_argument("--category", required=True,
                   choices=["aftersales_service", "newsletter", "sales_campaign", "aftersales_campaign", "prospect"])
    s.add_argument("--channel", required=True, choices=["email", "post", "phone", "sms", "app"])
    s.add_argument("--date", type=dt.date.fromisoformat, default=dt.date.today(), help="send date, YYYY-MM-DD")
    s.add_argument("--source", default="dealer", help="data source of rows without a source column")
    s.add_argument("send_list", type=argparse.FileType("r", encoding="utf-8"))
    args = parser.parse_args(argv)
    if args.command == "follow":
        n = asyncio.run(follow(args.bootstrap, args.db, topic=args.topic, until_idle=args.until_idle))
        print(f"campaign_sender: {n} message(s) applied", file=sys.stderr)
        return 0
    if not args.db.exists():
        raise SystemExit(f"campaign_sender: {args.db} does not exist (run `follow` first)")
    counts = filter_list(args.db, args.tenant, args.category, args.channel, args.date, args.send_list, sys.stdout,
                         args.source)
    print("campaign_sender: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
