"""The audit package's one error type: a well-formed request that cannot be answered.

It carries what the HTTP layer and the CLI need (status, code, message, field), so a bad
date, an unknown subject or a future knowledge time is a clear 4xx / exit 2, never a 500.
"""

from __future__ import annotations

from services.ledger.errors import LedgerError


class AuditError(LedgerError):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field
