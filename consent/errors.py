"""Errors raised by the consent folds."""

from __future__ import annotations

__all__ = ["OutOfOrderEvent"]


class OutOfOrderEvent(ValueError):
    """An event skips versions of its stream (an event in between was not applied).

    A broken invariant of the caller, never a user's error, and consent/ cannot import
    services/ (the layering): so it is not in the project's error family (services/errors.py)."""
