"""The compliance warning as a message type: one note on a dealer's term matrix
(``TermWarnings.warnings`` in schemas/eligibility.py, the portal's opt-in page).

Only the shape lives here; which warnings apply on a date is the pure rule in
``consent/warnings.py``.

Note: the class is named ``ComplianceWarning`` (``Warning`` is an alias) so that it does not
hide Python's built-in ``Warning`` where it is imported; it is a data record, not a Python
warning.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.vocabulary import Category, Channel

__all__ = ["ComplianceWarning", "Warning"]


class ComplianceWarning(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    category: Category | None
    channel: Channel | None
    severity: Literal["warning", "info"]
    message_nl: str
    message_en: str


Warning = ComplianceWarning  # noqa: A001 - the name the brief uses; see the module docstring
