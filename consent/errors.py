"""Errors raised by the consent folds."""

from __future__ import annotations

__all__ = ["OutOfOrderEvent"]


class OutOfOrderEvent(ValueError):
    """An event skips versions of its stream (an event in between was not applied)."""
