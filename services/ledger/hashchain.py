"""Tamper evidence: every event's hash covers its content and its predecessor's hash.

``hash_n = sha256(canonical(prev_hash, position, event_id, stream, version, tenant, type,
schema_version, recorded_at, occurred_on, data, metadata))``, with ``prev_hash`` of the
first event 32 zero bytes. Editing, deleting or reordering any row breaks the chain at
that row; :func:`verify_rows` names the first such row.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import AsyncIterator, Iterable
from typing import Final

import msgspec

GENESIS: Final = bytes(32)
_encode = msgspec.json.Encoder().encode


@functools.lru_cache(maxsize=64)  # every event of an append batch has the same recorded_at
def format_timestamp(ts: dt.datetime) -> str:
    """One fixed text form of a timestamp (UTC, microseconds), for hashing."""
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    prev_hash: bytes,
    position: int,
    event_id: str,
    stream_id: str,
    version: int,
    tenant_id: str,
    event_type: str,
    schema_version: int,
    recorded_at: dt.datetime,
    occurred_on: dt.date | None,
    data: str,
    metadata: str,
) -> bytes:
    canonical = _encode(
        [
            prev_hash.hex(),
            position,
            event_id,
            stream_id,
            version,
            tenant_id,
            event_type,
            schema_version,
            format_timestamp(recorded_at),
            occurred_on.isoformat() if occurred_on else None,
            data,
            metadata,
        ]
    )
    return hashlib.sha256(canonical).digest()


class ChainBroken(msgspec.Struct, frozen=True):
    position: int
    problem: str
    # The log partition of the break; None: the events written before partitioning (one
    # chain across every partition, ending at ledger.log_origin).
    partition: int | None = None

    def where(self) -> str:
        if self.partition is None:
            return f"position {self.position}"
        return f"partition {self.partition} position {self.position}"


class Anchor(msgspec.Struct, frozen=True):
    """A (position, hash) kept outside the database, e.g. the hash of an event as it was
    published on Kafka. A forger who recomputes every hash after an edit produces a
    self-consistent chain; only a hash remembered elsewhere tells the rewrite apart."""

    position: int
    hash: str  # hex, 64 characters
    # The log partition of the event (envelope field ``partition``); None: an event written
    # before the log was partitioned (its position is unique over the whole log).
    partition: int | None = None


def parse_anchor(text: str) -> Anchor:
    """``PARTITION/POSITION:HASH`` (an event of a log partition) or ``POSITION:HASH`` (an
    event written before partitioning), hash in hex, as given to ``consent-ledger verify
    --anchor``."""
    place, sep, digest = text.strip().partition(":")
    partition_text, slash, position = place.rpartition("/")
    if not sep or not position.isdigit() or int(position) < 1 or (slash and not partition_text.isdigit()):
        raise ValueError(f"anchor {text!r} is not [PARTITION/]POSITION:HASH with a position >= 1")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"anchor {text!r}: the hash must be 64 hex characters (SHA-256)")
    return Anchor(int(position), digest, int(partition_text) if slash else None)


def check_row(row: dict, expected_prev: bytes, expected_position: int) -> str | None:
    """The problem with one row given what the chain expects there, or None."""
    if row["position"] != expected_position:
        return f"expected position {expected_position}, found {row['position']} (missing or reordered event)"
    if bytes(row["prev_hash"]) != expected_prev:
        return ("prev_hash does not match the previous event's hash (missing, inserted or reordered event,"
                " or the previous event was altered and re-hashed)")
    recomputed = event_hash(
        expected_prev,
        row["position"],
        str(row["event_id"]),
        row["stream_id"],
        row["version"],
        row["tenant_id"],
        row["event_type"],
        row["schema_version"],
        row["recorded_at"],
        row["occurred_on"],
        row["data"],
        row["metadata"],
    )
    if recomputed != bytes(row["hash"]):
        return "content does not match its hash (altered event)"
    return None


def _anchor_map(anchors: Iterable[Anchor]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for a in anchors:
        digest = bytes.fromhex(a.hash)
        if out.get(a.position, digest) != digest:
            raise ValueError(f"two different anchors for position {a.position}")
        out[a.position] = digest
    return out


async def verify_rows(
    rows: AsyncIterator[dict] | Iterable[dict], head: dict | None, anchors: Iterable[Anchor] = (), *,
    start_position: int = 1, start_hash: bytes = GENESIS, partition: int | None = None,
) -> tuple[int, ChainBroken | None]:
    """Walk one chain's rows in position order; return (rows checked, first break or None).

    The chain starts at ``start_position`` linked to ``start_hash`` (a log partition starts
    where the log before partitioning ended). The first break is the lowest position at
    which something is wrong: a row that is missing, out of place, altered, not linked to
    its predecessor, or whose hash differs from an anchor; then the head (its position and
    hash must be the last event's).
    """
    anchored = _anchor_map(anchors)
    last_matched = 0
    expected_prev = start_hash
    expected_position = start_position
    base = start_position - 1
    count = 0
    if hasattr(rows, "__aiter__"):
        iterator = rows
    else:
        async def _aiter() -> AsyncIterator[dict]:
            for r in rows:  # type: ignore[union-attr]
                yield r
        iterator = _aiter()
    async for row in iterator:  # type: ignore[union-attr]
        problem = check_row(row, expected_prev, expected_position)
        if problem:
            return count, ChainBroken(position=expected_position, problem=problem, partition=partition)
        anchor = anchored.get(expected_position)
        if anchor is not None:
            if anchor != bytes(row["hash"]):
                since = f", after position {last_matched} (the last anchor that matched)" if last_matched else ""
                return count, ChainBroken(
                    position=expected_position,
                    problem="hash differs from the anchor kept outside the database: the chain was rewritten"
                    f" at or before this position{since}",
                    partition=partition,
                )
            last_matched = expected_position
        expected_prev = bytes(row["hash"])
        expected_position += 1
        count += 1
    end = base + count
    if head is not None:
        if head["position"] < end:
            return count, ChainBroken(
                position=head["position"] + 1,
                problem=f"event {head['position'] + 1} is beyond the ledger head (head says {head['position']}"
                f", found {end}): appended behind the store's back, or the head was rolled back",
                partition=partition,
            )
        if head["position"] > end:
            return count, ChainBroken(
                position=end + 1,
                problem=f"ledger head says {head['position']}, found {end} (events missing at the end)",
                partition=partition,
            )
        if bytes(head["hash"]) != expected_prev:
            return count, ChainBroken(position=end, problem="ledger head hash does not match the last event",
                                      partition=partition)
    beyond = [p for p in anchored if p > end]
    if beyond:
        return count, ChainBroken(
            position=end + 1,
            problem=f"an anchor names position {min(beyond)} but the chain ends at {end}"
            " (events missing at the end: truncated with the head rolled back)",
            partition=partition,
        )
    return count, None
