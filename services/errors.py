"""The project's one error family.

Every error the services raise on purpose derives from :class:`LedgerError` and carries what
an answer to the user needs, in plain words: the HTTP ``status``, the stable ``error`` id
(documented per operation in ``/v1/openapi.json``), the ``field`` to fix and the ``message``.
The errors are translated into answers in one place per surface:

- the JSON API: the error middleware of the composition root (:mod:`services.api.app`), which
  turns any ``LedgerError`` into an ``ErrorBody`` with its status; no route translates;
- the portal's HTML pages: the portal's error middleware (:mod:`services.api.portal`);
- the CLI: each command prints the message and exits 2 for a :class:`Refused` request.

:class:`Refused` is a request that cannot be carried out as asked (4xx); its subclasses say
where it was refused: ``ApiError`` at the HTTP edge (key, headers, body, path),
``CommandRejected`` by a ledger command, ``AuditError`` by an audit question. The store's
errors (``services.ledger.errors``), the importer's and the portal's derive from
``LedgerError`` as well and set their status and id as class attributes.

This module imports nothing of the project, so every service and the CLI can import it.
``consent/`` and ``schemas/`` do not (they sit below services); the one error of the pure
rules, ``consent.errors.OutOfOrderEvent``, is a bug signal, never a user's error.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["LedgerError", "Refused"]


class LedgerError(Exception):
    """Base of every error the project raises on purpose.

    Class attributes give the default answer; an instance may set its own. ``message`` is
    what the user reads (by default the exception's text); ``log_event``, when set, is the
    event the HTTP layer logs with the exception's text (for errors whose text must not be
    shown, such as a driver's message)."""

    status: int = 500
    error: str = "internal_error"
    field: str | None = None
    log_event: ClassVar[str | None] = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}
        self.current_version: int | None = None
        self.position: int | None = None


class Refused(LedgerError):
    """A request that cannot be carried out as asked: an answer with a 4xx ``status``, an
    ``error`` id, the ``field`` to fix and a ``message`` in plain words."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None, *,
                 headers: dict[str, str] | None = None, current_version: int | None = None,
                 position: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.field = field
        self.headers = dict(headers or {})
        self.current_version = current_version
        self.position = position
