"""A campaign sender that follows ``consent.eligibility.v1`` into a local SQLite table and
filters its send lists with it. This is the consumer sender authors copy: it is written to
be right when the broker loses its data, the topic is recreated or it falls behind.

    # keep a local copy of every subject's eligibility matrix (Ctrl-C stops; --until-idle 5
    # stops after 5 quiet seconds, e.g. from cron)
    python examples/campaign_sender.py follow --bootstrap 127.0.0.1:19092 --db sender.sqlite

    # which of these customers may get the newsletter by e-mail on 1 June? (refuses, exit 3,
    # when the copy is more than --max-age seconds behind the topic or is being rebuilt)
    python examples/campaign_sender.py filter --db sender.sqlite --tenant demo-garage \\
        --category newsletter --channel email --date 2026-06-01 --max-age 60 send_list.csv > to_send.csv

The send list is a CSV with a ``customer_ref`` column and optionally a ``source`` column
(default ``--source dealer``). The output has the eligible rows, with the reason, the
date the basis lapses and whether the message must carry the prospect disclosure.

How it stays right (what every consumer of the topic must do):

* offsets are stored in the same SQLite transaction as the rows, so a restart continues
  exactly where it stopped;
* a null value (tombstone) deletes the subject: it was erased;
* a message whose ``position`` is below the one held for its key is an older matrix
  delivered again: skipped (equal positions apply: a lapse re-evaluates without an event);
* **the topic lost its data** (the broker restarted empty, the topic was deleted and
  recreated, restored from a backup): a stored offset beyond a partition's end, or an
  "offset out of range" answer, or a message or ``~epoch/{partition}`` marker with a higher
  ``epoch`` than the copy's. The copy is then emptied and read again from the beginning of
  the compacted topic, and it stays *rebuilding* until every partition has carried the
  marker ``{"epoch": N, "complete": true}`` of a new epoch (the projector writes it once
  every subject is published again): until then ``filter`` refuses;
* the copy is *fresh as of* the last moment it had read every partition to its end;
  ``filter --max-age S`` refuses when that is more than S seconds ago (the broker is away,
  ``follow`` is not running, ...);
* a matrix evaluated on day E with ``valid_until`` U holds for E <= D < U. A send date
  outside that window is not answered from the copy: those subjects are reported on
  stderr, to be checked with ``POST /v1/tenants/{tenant}/eligibility:check``. A subject
  not in the copy is never sent to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import msgspec

# aiokafka is imported where the topic is followed: `filter` starts faster without it.
if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.eligibility import (  # noqa: E402
    TOPIC,
    EligibilityMatrix,
    decode_marker,
    decode_matrix,
    is_marker_key,
)

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
-- The latest epoch marker read per partition.
CREATE TABLE IF NOT EXISTS markers (
    topic      TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    complete   INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
-- How far the copy can be trusted: the topic's epoch it was built from, whether it is being
-- rebuilt (and needs the complete markers of epoch need_epoch), when it was last read to the
-- end of every partition (unix seconds), and why it was last reset.
CREATE TABLE IF NOT EXISTS copy_state (
    topic         TEXT PRIMARY KEY,
    epoch         INTEGER NOT NULL DEFAULT 0,
    need_epoch    INTEGER NOT NULL DEFAULT 0,
    rebuilding    INTEGER NOT NULL DEFAULT 1,
    caught_up_at  REAL,
    reset_reason  TEXT
);
"""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


class CopyState(msgspec.Struct, kw_only=True):
    epoch: int = 0
    need_epoch: int = 0
    rebuilding: bool = True  # a new copy is rebuilding until it has read every partition to its end
    caught_up_at: float | None = None
    reset_reason: str | None = None


def load_state(db: sqlite3.Connection, topic: str) -> CopyState:
    row = db.execute("SELECT epoch, need_epoch, rebuilding, caught_up_at, reset_reason FROM copy_state"
                     " WHERE topic = ?", (topic,)).fetchone()
    if row is None:
        return CopyState()
    return CopyState(epoch=row[0], need_epoch=row[1], rebuilding=bool(row[2]), caught_up_at=row[3],
                     reset_reason=row[4])


def save_state(db: sqlite3.Connection, topic: str, state: CopyState) -> None:
    db.execute(
        "INSERT INTO copy_state (topic, epoch, need_epoch, rebuilding, caught_up_at, reset_reason)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET epoch = excluded.epoch,"
        " need_epoch = excluded.need_epoch, rebuilding = excluded.rebuilding,"
        " caught_up_at = excluded.caught_up_at, reset_reason = excluded.reset_reason",
        (topic, state.epoch, state.need_epoch, int(state.rebuilding), state.caught_up_at, state.reset_reason),
    )


# -- following the topic -------------------------------------------------------------------


class TopicRebuilt(Exception):
    """The topic no longer holds what the copy was built from: empty the copy, read again."""

    def __init__(self, reason: str, need_epoch: int) -> None:
        super().__init__(reason)
        self.need_epoch = need_epoch


def store_batch(db: sqlite3.Connection, topic: str, records: Iterable[tuple[int, int, bytes, bytes | None]],
                state: CopyState | None = None) -> int:
    """Apply (partition, offset, key, value) records and their offsets in one transaction.
    Raises :class:`TopicRebuilt` (nothing of the batch applied) on a new epoch, unless the
    copy is being rebuilt from the beginning anyway."""
    state = state or load_state(db, topic)
    n = 0
    offsets: dict[int, int] = {}
    with db:
        for partition, offset, key, value in records:
            if is_marker_key(key):
                if value is not None:
                    marker = decode_marker(value)
                    _new_epoch(state, marker.epoch, f"marker of epoch {marker.epoch} on partition {partition}")
                    db.execute("INSERT INTO markers (topic, partition, epoch, complete) VALUES (?, ?, ?, ?)"
                               " ON CONFLICT (topic, partition) DO UPDATE SET epoch = excluded.epoch,"
                               " complete = excluded.complete", (topic, partition, marker.epoch, int(marker.complete)))
            elif value is None:
                db.execute("DELETE FROM eligibility WHERE key = ?", (key.decode(),))
            else:
                m = decode_matrix(value)
                _new_epoch(state, m.epoch, f"a matrix of epoch {m.epoch}")
                held = db.execute("SELECT position FROM eligibility WHERE key = ?", (m.key,)).fetchone()
                if held is None or m.position >= held[0]:  # a lower position: an older matrix again
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
        save_state(db, topic, state)
    return n


def _new_epoch(state: CopyState, epoch: int, what: str) -> None:
    if epoch <= state.epoch:
        return
    if not state.rebuilding:
        raise TopicRebuilt(f"the topic was rebuilt: {what}, the copy is of epoch {state.epoch}", epoch)
    state.epoch = state.need_epoch = epoch  # reading from the beginning anyway: wait for its markers


def reset_copy(db: sqlite3.Connection, topic: str, state: CopyState, reason: str, need_epoch: int) -> None:
    """Empty the copy (it is read again from the topic's beginning) and note why."""
    with db:
        db.execute("DELETE FROM eligibility")
        db.execute("DELETE FROM offsets WHERE topic = ?", (topic,))
        db.execute("DELETE FROM markers WHERE topic = ?", (topic,))
        state.epoch = max(state.epoch, need_epoch)
        state.need_epoch = need_epoch
        state.rebuilding = True
        state.caught_up_at = None
        state.reset_reason = reason
        save_state(db, topic, state)
    print(f"campaign_sender: {reason}; the copy is read again from the beginning"
          f" (it needs the complete markers of epoch {need_epoch})" if need_epoch else
          f"campaign_sender: {reason}; the copy is read again from the beginning", file=sys.stderr, flush=True)


def rebuilt(db: sqlite3.Connection, topic: str, state: CopyState, partitions: list[int]) -> bool:
    """A rebuilding copy that has read every partition to its end is done once every
    partition carried the complete marker of the epoch it waits for (none needed at 0)."""
    if state.need_epoch == 0:
        return True
    marks = dict((r[0], (r[1], r[2])) for r in db.execute(
        "SELECT partition, epoch, complete FROM markers WHERE topic = ?", (topic,)))
    return all(p in marks and marks[p][0] >= state.need_epoch and marks[p][1] for p in partitions)


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return []
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for d in described if d["topic"] == topic for p in d["partitions"])


async def follow(bootstrap: str, db_path: Path, *, topic: str = TOPIC, until_idle: float | None = None,
                 check_every: float = 0.3) -> int:
    """Copy the topic into the database until stopped (or ``until_idle`` quiet seconds);
    reconnects (with the broker away, the copy just grows older)."""
    from aiokafka.errors import KafkaError

    db = open_db(db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    total = 0
    quiet = [time.monotonic()]  # when a message last arrived (the session moves it)
    try:
        while not stop.is_set():
            try:
                n, idle = await _session(db, bootstrap, topic, stop, until_idle, check_every, quiet)
                total += n
                if idle:
                    break
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                print(f"campaign_sender: broker unavailable ({type(exc).__name__}); retrying", file=sys.stderr,
                      flush=True)
            if until_idle is not None and time.monotonic() - quiet[0] >= until_idle:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    finally:
        db.close()
    return total


async def _session(db: sqlite3.Connection, bootstrap: str, topic: str, stop: asyncio.Event,
                   until_idle: float | None, check_every: float, quiet: list[float]) -> tuple[int, bool]:
    """One connection; returns (messages applied, stopped for being idle). Raises on broker
    errors (the caller reconnects)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError, OffsetOutOfRangeError

    partitions = await _partitions(bootstrap, topic)
    if not partitions:
        raise KafkaError(f"no topic {topic} on {bootstrap} (yet)")
    state = load_state(db, topic)
    # auto_offset_reset="none": an offset beyond a partition's end must be seen, not silently
    # replaced by the beginning (that is how a recreated topic shows).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="none",
                                fetch_max_wait_ms=100, request_timeout_ms=5000)
    # Also asked at every check whether the topic still exists: a deleted topic answers
    # fetches like one with nothing new, and the copy must not count as complete then.
    # (A send list filtered between the deletion and this check is bounded by --max-age.)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await consumer.start()
    total = 0
    try:
        await admin.start()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await _seek_stored(db, consumer, topic, tps)
        last_check = 0.0
        started = time.monotonic()
        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                records = [(tp.partition, r.offset, r.key, r.value) for tp, rs in batch.items() for r in rs]
                if records:
                    total += store_batch(db, topic, records, state)
                    quiet[0] = time.monotonic()
                if time.monotonic() - last_check >= check_every:
                    last_check = time.monotonic()
                    # The end of each partition as the last fetch answer gave it (a fetch answers
                    # every partition, also when nothing is new), and when that answer came.
                    # (Not end_offsets(): tansu answers it with the last batch's first offset + 1.)
                    ends = {tp: consumer.highwater(tp) for tp in tps}
                    answered = [consumer.last_poll_timestamp(tp) for tp in tps]
                    positions = {tp: await consumer.position(tp) for tp in tps}
                    behind = [(tp.partition, ends[tp], positions[tp]) for tp in tps
                              if ends[tp] is not None and ends[tp] < positions[tp]]
                    if behind:
                        p, end, at = behind[0]
                        raise TopicRebuilt(f"partition {p} ends at offset {end}, below the copy's {at}"
                                           " (the topic was recreated or lost its data)", state.epoch + 1)
                    if topic not in await admin.list_topics():
                        # Deleted: whatever comes back is a new topic (a republish under a
                        # higher epoch). The copy is not trusted until it is rebuilt from it.
                        reset_copy(db, topic, state, "the topic was deleted", state.epoch + 1)
                        raise KafkaError(f"the topic {topic} is gone")
                    now_ms = time.time() * 1000
                    if any(a is None or now_ms - a > 3000 for a in answered):
                        if time.monotonic() - started > 3:  # no answer from the broker for a while: reconnect
                            raise KafkaError("no fetch answer for 3 s")
                    elif all(positions[tp] >= ends[tp] for tp in tps):  # type: ignore[operator]
                        if state.rebuilding and rebuilt(db, topic, state, partitions):
                            state.rebuilding = False
                            print(f"campaign_sender: the copy is complete (epoch {state.epoch})", file=sys.stderr,
                                  flush=True)
                        if not state.rebuilding:
                            # Complete as of the oldest of the answers it rests on.
                            state.caught_up_at = min(a for a in answered if a is not None) / 1000
                        with db:
                            save_state(db, topic, state)
                if until_idle is not None and time.monotonic() - quiet[0] >= until_idle:
                    return total, True
            except OffsetOutOfRangeError:
                reset_copy(db, topic, state, "an offset is out of range (the topic was recreated or truncated)",
                           state.epoch + 1)
                await consumer.seek_to_beginning(*tps)
            except TopicRebuilt as rebuilt_topic:
                reset_copy(db, topic, state, str(rebuilt_topic), rebuilt_topic.need_epoch)
                new = await _partitions(bootstrap, topic)
                if new != partitions:  # recreated with another partition count: connect again
                    return total, False
                await consumer.seek_to_beginning(*tps)
        return total, False
    finally:
        await admin.close()
        await _stop(consumer)


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop the consumer; with the broker away, aiokafka's fetch task can end the stop with
    its own CancelledError: that one is not a cancellation of ours."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def _seek_stored(db: sqlite3.Connection, consumer: AIOKafkaConsumer, topic: str,
                       tps: list[TopicPartition]) -> None:
    stored = dict(db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,)).fetchall())
    for tp in tps:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)


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


class Refused(Exception):
    """The copy cannot be trusted now: filter nothing."""


def trust(db: sqlite3.Connection, topic: str, max_age: float, now: float | None = None) -> None:
    """Raise :class:`Refused` when the copy is being rebuilt or older than ``max_age`` seconds."""
    state = load_state(db, topic)
    row = db.execute("SELECT 1 FROM copy_state WHERE topic = ?", (topic,)).fetchone()
    if row is None:
        raise Refused(f"the copy has never been followed from {topic} (run `follow`)")
    if state.rebuilding:
        why = f" ({state.reset_reason})" if state.reset_reason else ""
        wait = (f": waiting for every partition's complete marker of epoch {state.need_epoch}"
                if state.need_epoch else ": it has not read the topic to its end yet")
        raise Refused(f"the copy is being rebuilt{why}{wait}; keep `follow` running"
                      " (or ask the HTTP check)")
    if state.caught_up_at is None:
        raise Refused("the copy has never been read to the end of the topic")
    age = (now if now is not None else time.time()) - state.caught_up_at
    if age > max_age:
        raise Refused(f"the copy was last complete {age:.1f} s ago, more than --max-age {max_age:g} s"
                      " (is `follow` running, is the broker reachable?)")


def filter_list(db_path: Path, tenant: str, category: str, channel: str, on: dt.date, send_list: TextIO,
                out: TextIO, default_source: str = "dealer", *, topic: str = TOPIC,
                max_age: float | None = None) -> dict[str, int]:
    db = open_db(db_path)
    try:
        subjects = read_send_list(send_list, default_source)  # a bad list is reported first
        if max_age is not None:
            trust(db, topic, max_age)
        counts = {"eligible": 0, "not_eligible": 0, "unknown": 0, "recheck": 0}
        writer = csv.writer(out)
        writer.writerow(["source", "customer_ref", "reason", "until", "requires_disclosure",
                         "requires_postfilter_check", "requires_objection_offer"])
        recheck = []
        for v in verdicts(db, tenant, category, channel, on, subjects):
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
    s.add_argument("--topic", default=TOPIC)
    s.add_argument("--max-age", type=float, default=300.0,
                   help="refuse (exit 3) when the copy was last complete more than this many seconds ago"
                   " (default 300)")
    s.add_argument("send_list", type=argparse.FileType("r", encoding="utf-8"))
    args = parser.parse_args(argv)
    if args.command == "follow":
        n = asyncio.run(follow(args.bootstrap, args.db, topic=args.topic, until_idle=args.until_idle))
        print(f"campaign_sender: {n} message(s) applied", file=sys.stderr)
        return 0
    if not args.db.exists():
        raise SystemExit(f"campaign_sender: {args.db} does not exist (run `follow` first)")
    if args.max_age <= 0:
        raise SystemExit("campaign_sender: --max-age must be above 0")
    try:
        counts = filter_list(args.db, args.tenant, args.category, args.channel, args.date, args.send_list,
                             sys.stdout, args.source, topic=args.topic, max_age=args.max_age)
    except Refused as exc:
        print(f"campaign_sender: refusing to filter: {exc}", file=sys.stderr)
        return 3
    print("campaign_sender: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
