"""The ledger's error types, under one base.

Driver (asyncpg) errors are translated into these in one place,
:func:`services.ledger.store.translate_errors`; nothing above the store sees asyncpg.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class WrongExpectedVersion(LedgerError):
    """A writer's expected stream version is stale (optimistic concurrency)."""

    def __init__(self, stream_id: str, expected: int, current: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {current}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.current = current


class IdempotencyKeyReused(LedgerError):
    """The Idempotency-Key was already used for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class StoreUnavailable(LedgerError):
    """PostgreSQL cannot be reached; the only kind of error that is retried."""


class IntegrityError(LedgerError):
    """A write broke a constraint the store relies on (never expected in normal use)."""


class StreamClosed(LedgerError):
    """The stream's last event closes it (e.g. SubjectErased): nothing more may be appended."""

    def __init__(self, stream_id: str, closed_by: str) -> None:
        super().__init__(f"stream {stream_id!r} is closed by {closed_by}: nothing more can be appended to it")
        self.stream_id = stream_id
        self.closed_by = closed_by
