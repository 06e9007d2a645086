"""The event store's error types, in the project's one error family
(:class:`services.errors.LedgerError`), each with its HTTP answer.

Driver (asyncpg) errors are translated into these in one place,
:func:`services.ledger.store.translate_errors`; nothing above the store sees asyncpg.
"""

from __future__ import annotations

from services.errors import LedgerError

__all__ = ["LedgerError", "WrongExpectedVersion", "IdempotencyKeyReused", "StoreUnavailable", "IntegrityError",
           "StreamClosed"]


class WrongExpectedVersion(LedgerError):
    """A writer's expected stream version is stale (optimistic concurrency)."""

    status = 409
    error = "wrong_expected_version"
    field = "expected_version"

    def __init__(self, stream_id: str, expected: int, current: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {current}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.current = current
        self.current_version = current


class IdempotencyKeyReused(LedgerError):
    """The Idempotency-Key was already used for a different request."""

    status = 422
    error = "idempotency_key_reused"
    field = "Idempotency-Key"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class StoreUnavailable(LedgerError):
    """PostgreSQL cannot be reached; the only kind of error that is retried. The driver's
    text is logged, never shown."""

    status = 503
    error = "unavailable"
    log_event = "store_unavailable"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.message = "the ledger database is unavailable; retry later"
        self.headers = {"Retry-After": "1"}


class IntegrityError(LedgerError):
    """A write broke a constraint the store relies on (never expected in normal use). The
    driver's text is logged, never shown."""

    status = 409
    error = "conflict"
    field = "$"
    log_event = "integrity_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.message = "the write conflicts with existing data"


class StreamClosed(LedgerError):
    """The stream's last event closes it (e.g. SubjectErased): nothing more may be appended."""

    def __init__(self, stream_id: str, closed_by: str) -> None:
        super().__init__(f"stream {stream_id!r} is closed by {closed_by}: nothing more can be appended to it")
        self.stream_id = stream_id
        self.closed_by = closed_by
