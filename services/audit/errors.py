"""The audit package's error: a well-formed question that cannot be answered.

A member of the project's error family (:class:`services.errors.Refused`): it carries the
status, id, message and field, so a bad date, an unknown subject or a future knowledge time
is a clear 4xx from the API's error middleware (no route translates it) and exit 2 from the
CLI, never a 500.
"""

from __future__ import annotations

from services.errors import Refused


class AuditError(Refused):
    """An audit question refused (unknown subject or tenant, a date out of range)."""
