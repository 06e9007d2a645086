"""Tamper evidence: someone with write access to PostgreSQL edits, deletes or reorders
ledger rows with plain SQL; `consent-ledger verify` names the first altered, missing or
reordered event by position and exits non-zero. An untouched ledger passes with exit 0.
A forger who also recomputes every later hash is caught by an externally kept anchor
(the hash every event carries on the Kafka topic)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from schemas.events import Actor, InvoiceRecorded, Metadata
from services.ledger.hashchain import Anchor, event_hash
from services.ledger.store import AppendRequest, EventStore, StreamWrite
from services.ledger.verify import verify_ledger

META = Metadata(actor=Actor(kind="api", id="tamper-test"), method="api")
EVENTS = 12
GARAGE_A = 3  # the log partition of tenant garage-a (of 32): every event here is in it
CLI = str(Path(sys.executable).with_name("consent-ledger"))


@pytest.fixture
async def ledger_conn(pool: asyncpg.Pool, db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A ledger of EVENTS events (positions 1..12) appended through the store, in
    single and multi-event appends over several streams; the invoice at position p is F{p}."""
    store = EventStore(pool)
    await store.start()
    try:
        n = 0
        for stream, count in (("a", 3), ("b", 1), ("a", 2), ("c", 4), ("b", 2)):
            events = [InvoiceRecorded(invoice_id=f"F{n + i + 1}", invoice_date=dt.date(2024, 1, n + i + 1))
                      for i in range(count)]
            n += count
            await store.append(AppendRequest(tenant_id="garage-a", metadata=META,
                                             writes=[StreamWrite(f"subject/garage-a/dealer/{stream}", events)]))
    finally:
        await store.stop()
    conn = await asyncpg.connect(db_url)
    assert await conn.fetchval("SELECT count(*) FROM ledger.events") == EVENTS
    yield conn
    await conn.close()


def run_verify(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_url, "LEDGER_LOG_LEVEL": "warning"}
    return subprocess.run([CLI, "verify", *args], env=env, capture_output=True, text=True, timeout=60)


async def swap_rows(conn: asyncpg.Connection, a: int, b: int) -> None:
    """Swap two events' places in the log. position is the primary key and (stream_id,
    version) is unique, so park one row on a free position first."""
    async with conn.transaction():
        await conn.execute("UPDATE ledger.events SET position = -1 WHERE position = $1", a)
        await conn.execute("UPDATE ledger.events SET position = $1 WHERE position = $2", a, b)
        await conn.execute("UPDATE ledger.events SET position = $1 WHERE position = -1", b)


Tamper = Callable[[asyncpg.Connection], Awaitable[object]]

TAMPERS: dict[str, tuple[Tamper, int, str]] = {
    # name: (the SQL an attacker runs, first position that must be reported, words in the problem)
    "edit a row's data": (
        lambda c: c.execute("UPDATE ledger.events SET data = replace(data::text, '\"F5\"', '\"F99\"')::json"
                            " WHERE position = 5"),
        5, "altered",
    ),
    "edit a row's metadata": (
        lambda c: c.execute("UPDATE ledger.events SET metadata = '{\"actor\":{\"kind\":\"staff\",\"id\":\"x\"}}'"
                            " WHERE position = 8"),
        8, "altered",
    ),
    "move a row's recorded_at": (
        lambda c: c.execute("UPDATE ledger.events SET recorded_at = recorded_at - interval '1 day'"
                            " WHERE position = 7"),
        7, "altered",
    ),
    "change only a row's stored hash": (
        lambda c: c.execute("UPDATE ledger.events SET hash = sha256(hash) WHERE position = 10"),
        10, "altered",
    ),
    "relink a row's prev_hash": (
        lambda c: c.execute("UPDATE ledger.events SET prev_hash = sha256(prev_hash) WHERE position = 6"),
        6, "prev_hash",
    ),
    "delete a row in the middle": (
        lambda c: c.execute("DELETE FROM ledger.events WHERE position = 4"),
        4, "missing",
    ),
    "delete the first row": (
        lambda c: c.execute("DELETE FROM ledger.events WHERE position = 1"),
        1, "missing",
    ),
    "swap two rows": (lambda c: swap_rows(c, 3, 9), 3, "reordered"),
    "swap two neighbouring rows": (lambda c: swap_rows(c, 6, 7), 6, "reordered"),
    "swap two rows' data": (
        lambda c: c.execute(
            "UPDATE ledger.events e SET data = o.data FROM ledger.events o"
            " WHERE (e.position, o.position) IN ((2, 11), (11, 2))"
        ),
        2, "altered",
    ),
    "delete the last row": (
        lambda c: c.execute("DELETE FROM ledger.events WHERE position = 12"),
        12, "missing at the end",
    ),
    "alter the head's hash": (
        lambda c: c.execute("UPDATE ledger.partitions SET hash = sha256(hash) WHERE log_partition = 3"),
        12, "head hash",
    ),
    "move the head back one event": (
        lambda c: c.execute("UPDATE ledger.partitions h SET position = 11, hash = e.hash FROM ledger.events e"
                            " WHERE e.position = 11 AND h.log_partition = 3 AND e.log_partition = 3"),
        12, "beyond the ledger head",
    ),
    "move the head forward": (
        lambda c: c.execute("UPDATE ledger.partitions SET position = 13 WHERE log_partition = 3"),
        13, "missing at the end",
    ),
    "move an event into another partition": (
        lambda c: c.execute("UPDATE ledger.events SET log_partition = 4 WHERE position = 5"),
        5, "expected position 5, found 6",
    ),
}


async def test_an_event_moved_into_another_partition_is_named_there_too(
    ledger_conn: asyncpg.Connection,
) -> None:
    """Partition 3's chain misses it; partition 4's walk finds an event of a tenant whose
    partition is 3 (each chain is checked on its own, in parallel)."""
    await ledger_conn.execute("UPDATE ledger.events SET log_partition = 4 WHERE position = 5")
    count, broken = await verify_ledger(ledger_conn)
    assert broken is not None and (broken.partition, broken.position) == (GARAGE_A, 5)
    await ledger_conn.execute("UPDATE ledger.events SET log_partition = 4 WHERE log_partition = 3")
    # ... and partition 3's head rolled back to empty, so that only partition 4 is wrong.
    await ledger_conn.execute("UPDATE ledger.partitions SET position = 0, hash = decode(repeat('00', 32), 'hex')"
                              " WHERE log_partition = 3")
    count, broken = await verify_ledger(ledger_conn)
    assert broken is not None and broken.partition == 4 and "partition is 3" in broken.problem, broken


async def test_an_untouched_ledger_passes_verify(ledger_conn: asyncpg.Connection, db_url: str) -> None:
    assert await verify_ledger(ledger_conn) == (EVENTS, None)
    done = run_verify(db_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok: {EVENTS} events" in done.stdout


async def test_an_empty_ledger_passes_verify(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        assert await verify_ledger(conn) == (0, None)
    finally:
        await conn.close()


@pytest.mark.parametrize("name", list(TAMPERS))
async def test_verify_names_the_first_tampered_position(name: str, ledger_conn: asyncpg.Connection, db_url: str) -> None:
    tamper, position, words = TAMPERS[name]
    await tamper(ledger_conn)
    count, broken = await verify_ledger(ledger_conn)
    assert broken is not None, name
    assert broken.position == position, broken
    assert words in broken.problem, broken
    assert position - 1 <= count <= EVENTS, "events before the break were checked and found intact"

    done = run_verify(db_url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BROKEN at partition {GARAGE_A} position {position}:" in done.stdout, done.stdout
    assert broken.partition == GARAGE_A


async def rewrite_chain_from(conn: asyncpg.Connection, position: int) -> None:
    """What a careful forger does: edit a row and recompute every later hash and the head."""
    await conn.execute("UPDATE ledger.events SET data = replace(data::text, '\"F5\"', '\"F55\"')::json"
                       " WHERE position = $1", position)
    rows = await conn.fetch(
        "SELECT position, event_id::text AS event_id, stream_id, version, tenant_id, event_type, schema_version,"
        " recorded_at, occurred_on, data, metadata, prev_hash FROM ledger.events WHERE position >= $1"
        " ORDER BY position", position)
    prev = bytes(rows[0]["prev_hash"])
    for r in rows:
        digest = event_hash(prev, r["position"], r["event_id"], r["stream_id"], r["version"], r["tenant_id"],
                            r["event_type"], r["schema_version"], r["recorded_at"], r["occurred_on"], r["data"],
                            r["metadata"])
        await conn.execute("UPDATE ledger.events SET prev_hash = $1, hash = $2 WHERE position = $3",
                           prev, digest, r["position"])
        prev = digest
    await conn.execute("UPDATE ledger.partitions SET hash = $1 WHERE log_partition = $2", prev, GARAGE_A)


async def test_a_recomputed_chain_passes_alone_but_not_against_external_anchors(
    ledger_conn: asyncpg.Connection, db_url: str
) -> None:
    # What a Kafka consumer kept: the hash of every event it received.
    published = {r["position"]: bytes(r["hash"]).hex()
                 for r in await ledger_conn.fetch("SELECT position, hash FROM ledger.events")}
    await rewrite_chain_from(ledger_conn, 5)
    assert await verify_ledger(ledger_conn) == (EVENTS, None), "the forger made the chain self-consistent"

    # Anchored at the last event only: the rewrite is caught, at or before that position.
    count, broken = await verify_ledger(ledger_conn, anchors=[Anchor(EVENTS, published[EVENTS], GARAGE_A)])
    assert broken is not None and broken.position == EVENTS and "anchor" in broken.problem
    # Anchored at every event (a consumer of the whole topic): the exact first rewritten event.
    anchors = [Anchor(p, h, GARAGE_A) for p, h in published.items()]
    count, broken = await verify_ledger(ledger_conn, anchors=anchors)
    assert broken is not None and broken.position == 5 and count == 4

    done = run_verify(db_url, "--anchor", f"{GARAGE_A}/3:{published[3]}",
                      "--anchor", f"{GARAGE_A}/{EVENTS}:{published[EVENTS]}")
    assert done.returncode == 1 and f"BROKEN at partition {GARAGE_A} position {EVENTS}:" in done.stdout, done.stdout
    assert "after position 3" in done.stdout, "the last anchor that still matched bounds the rewrite"


async def test_an_anchor_beyond_the_ledger_reveals_truncation(ledger_conn: asyncpg.Connection, db_url: str) -> None:
    last = await ledger_conn.fetchrow("SELECT position, hash FROM ledger.events WHERE position = $1", EVENTS)
    # Truncate cleanly: drop the last two events and point the head at what is left.
    await ledger_conn.execute("DELETE FROM ledger.events WHERE position > $1", EVENTS - 2)
    await ledger_conn.execute("UPDATE ledger.partitions h SET position = e.position, hash = e.hash FROM ledger.events e"
                              " WHERE e.position = $1 AND h.log_partition = $2 AND e.log_partition = $2",
                              EVENTS - 2, GARAGE_A)
    assert await verify_ledger(ledger_conn) == (EVENTS - 2, None)
    count, broken = await verify_ledger(ledger_conn, anchors=[Anchor(EVENTS, bytes(last["hash"]).hex(), GARAGE_A)])
    assert broken is not None and broken.position == EVENTS - 1 and "missing" in broken.problem


async def test_verify_refuses_a_malformed_anchor(db_url: str) -> None:
    done = run_verify(db_url, "--anchor", "twelve:abc")
    assert done.returncode != 0
    assert "anchor" in (done.stdout + done.stderr).lower()


async def test_matching_anchors_pass(ledger_conn: asyncpg.Connection, db_url: str) -> None:
    rows = await ledger_conn.fetch("SELECT position, hash FROM ledger.events WHERE position IN (1, 12)")
    args = [a for r in rows for a in ("--anchor", f"{GARAGE_A}/{r['position']}:{bytes(r['hash']).hex()}")]
    done = run_verify(db_url, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 anchors matched" in done.stdout
