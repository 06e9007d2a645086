"""What the event store takes and answers (services/ledger/store.py is the verbs): append
requests and results, the ledger's error translation, event ids, and the row decoder
shared by the store's readers."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final

import asyncpg
import msgspec
from asyncpg.pgproto.pgproto import UUID as PgUUID

from schemas.events import Event, Metadata, RecordedEvent, SubjectErased, decode_event
from services.ledger.errors import IntegrityError, LedgerError, StoreUnavailable

ANY_VERSION: Final = None
NO_STREAM: Final = 0

_metadata_decoder: Final = msgspec.json.Decoder(Metadata)


class StreamWrite(msgspec.Struct, frozen=True):
    """Events for one stream. ``expected_version``: None = any, 0 = stream must not exist."""

    stream_id: str
    events: Sequence[Event]
    expected_version: int | None = None


class AppendRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    writes: Sequence[StreamWrite]
    metadata: Metadata
    idempotency_key: str | None = None
    # A hash of what the client asked for; a reused key with another fingerprint is refused.
    fingerprint: bytes = b""
    # The caller's own statements, run in the SAME transaction right after this request's
    # events are inserted (e.g. the DMS import's invoice index, docs/import.md): both
    # commit or neither. A request with a hook commits in a transaction of its own (never
    # grouped), so a failing hook fails only that request.
    in_transaction: TransactionHook | None = None


class StreamResult(msgspec.Struct, frozen=True):
    stream_id: str
    from_version: int
    to_version: int


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    streams: list[StreamResult]
    first_position: int
    last_position: int
    event_ids: list[str]
    recorded_at: dt.datetime
    replayed: bool = False
    # The log partition of the request's tenant: positions are those of this partition
    # (services/ledger/partitions.py). Results stored before partitioning decode as 0 and are
    # answered with the tenant's partition.
    partition: int = 0


RESULT_DECODER: Final = msgspec.json.Decoder(AppendResult)

# Event types after which a stream takes no more events (a closed stream): an erased
# subject (GDPR art. 17, docs/erasure.md). Checked under the head lock, in the batch.
CLOSING_EVENTS: Final = frozenset({SubjectErased.__name__})


def is_id(text: str) -> bool:
    """Tenant and stream ids are non-empty printable text (no newline: the writer joins
    columns with newlines)."""
    return bool(text) and text.isprintable()


# Event ids are time-ordered (version 7, RFC 9562) UUIDs: the batch's Unix time in
# milliseconds in the first 48 bits, then the version nibble 7, the variant bits 10 and 74
# random bits. The event_id index then grows at its right end, like the position index,
# instead of taking each new id on a random leaf page: with random (version 4) ids, writing
# 400,000 events into a copy of ledger.events cost PostgreSQL 21-23 us of CPU a row, with
# these 19 us, and the gap widens as the index outgrows the cache. The time in the id says
# no more than the event's recorded_at.
_UUID_CLEAR: Final = bytes.fromhex("000000000000" "0fff" "3fff" "ffffffffffff")
_UUID_SET: Final = bytes.fromhex("000000000000" "7000" "8000" "000000000000")


def new_event_ids(count: int) -> list[str]:
    """``count`` version 7 UUIDs as text, from one ``os.urandom`` call masked as one big
    integer (a system call and a UUID object per event are a visible cost at thousands of
    events a second; asyncpg's UUID type formats them in C)."""
    if not count:
        return []
    size = 16 * count
    now_ms = time.time_ns() // 1_000_000
    clear = int.from_bytes(_UUID_CLEAR * count, "big")
    set_ = int.from_bytes((now_ms.to_bytes(6, "big") + _UUID_SET[6:]) * count, "big")
    block = ((int.from_bytes(os.urandom(size), "big") & clear) | set_).to_bytes(size, "big")
    return [str(PgUUID(block[a:a + 16])) for a in range(0, size, 16)]


TransactionHook = Callable[[asyncpg.Connection, AppendResult], Awaitable[None]]
"""``hook(conn, result)``: extra writes inside the append's transaction (see AppendRequest)."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """The one place where asyncpg's errors become the ledger's own."""
    try:
        yield
    except LedgerError:
        raise
    except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.InterfaceError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    except asyncpg.exceptions.PostgresConnectionError as exc:
        raise StoreUnavailable(str(exc)) from exc
    except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
        raise IntegrityError(str(exc)) from exc


def row_to_recorded(row: asyncpg.Record) -> RecordedEvent:
    """A row read with ``sql.EVENT_COLUMNS``."""
    return RecordedEvent(
        position=row["position"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        tenant_id=row["tenant_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        occurred_on=row["occurred_on"],
        event=decode_event(row["data"]),
        metadata=_metadata_decoder.decode(row["metadata"]),
        hash=bytes(row["hash"]).hex(),
        partition=row["log_partition"],
    )


AppendObserver = Callable[[int, float], None]
"""Called after each committed batch with (events appended, seconds the batch took)."""


def request_fingerprint(*parts: bytes | str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        b = part.encode() if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.digest()
