"""The dealer's privacy policy: an ordered list of chapters, and its version id.

PRODUCT.md, "Domain": the dealer moves chapters up/down, edits title/body/active, deletes
and adds chapters; the portal shows the active chapters in order; every published state
has a version id (content hash) so proof of consent can name the exact text shown.

The fold is lenient (an event naming an unknown chapter changes nothing, a move past the
end moves to the end) so a projector never stops on a stored event; commands are checked
before they are appended with :func:`policy_problem`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from schemas.events import (
    Chapter,
    Event,
    PolicyChapterActiveSet,
    PolicyChapterAdded,
    PolicyChapterDeleted,
    PolicyChapterEdited,
    PolicyChapterMoved,
    TenantCreated,
)

__all__ = [
    "POLICY_EVENTS",
    "Policy",
    "active_chapters",
    "apply_policy",
    "fold_policy",
    "next_chapter_id",
    "policy_problem",
    "policy_version",
]

Policy = tuple[Chapter, ...]
"""The full ordered chapter list (active and inactive)."""

POLICY_EVENTS: Final = (
    TenantCreated,
    PolicyChapterAdded,
    PolicyChapterEdited,
    PolicyChapterActiveSet,
    PolicyChapterMoved,
    PolicyChapterDeleted,
)

_encoder: Final = msgspec.json.Encoder()


def active_chapters(chapters: Iterable[Chapter]) -> Policy:
    """The chapters the portal shows: the active ones, in order."""
    return tuple(c for c in chapters if c.active)


def policy_version(chapters: Iterable[Chapter]) -> str:
    """Version id of what the customer sees: ``"pv-"`` + first 16 hex chars of the
    sha256 of the active chapters' (title, body) in order.

    Inactive chapters, chapter ids and the position of inactive chapters do not count:
    the id changes iff the visible text or its order changes.
    """
    visible = [[c.title, c.body] for c in chapters if c.active]
    return "pv-" + hashlib.sha256(_encoder.encode(visible)).hexdigest()[:16]


def _index(chapters: Sequence[Chapter], chapter_id: str) -> int:
    for i, c in enumerate(chapters):
        if c.chapter_id == chapter_id:
            return i
    return -1


def apply_policy(chapters: Policy, event: Event) -> Policy:
    """The chapter list after one event; events that are not policy events change nothing."""
    if isinstance(event, TenantCreated):
        return tuple(event.chapters)
    if isinstance(event, PolicyChapterAdded):
        i = _index(chapters, event.chapter.chapter_id)
        if i >= 0:  # re-delivered or duplicate id: replace in place
            return chapters[:i] + (event.chapter,) + chapters[i + 1 :]
        return chapters + (event.chapter,)
    if isinstance(event, PolicyChapterEdited):
        i = _index(chapters, event.chapter_id)
        if i < 0:
            return chapters
        edited = Chapter(chapter_id=event.chapter_id, title=event.title, body=event.body, active=event.active)
        return chapters[:i] + (edited,) + chapters[i + 1 :]
    if isinstance(event, PolicyChapterActiveSet):
        i = _index(chapters, event.chapter_id)
        if i < 0 or chapters[i].active == event.active:
            return chapters
        changed = msgspec.structs.replace(chapters[i], active=event.active)
        return chapters[:i] + (changed,) + chapters[i + 1 :]
    if isinstance(event, PolicyChapterMoved):
        i = _index(chapters, event.chapter_id)
        if i < 0:
            return chapters
        rest = chapters[:i] + chapters[i + 1 :]
        to = min(event.to_index, len(rest))
        return rest[:to] + (chapters[i],) + rest[to:]
    if isinstance(event, PolicyChapterDeleted):
        i = _index(chapters, event.chapter_id)
        if i < 0:
            return chapters
        return chapters[:i] + chapters[i + 1 :]
    return chapters


def fold_policy(events: Iterable[Event]) -> Policy:
    """The chapter list after a sequence of (tenant) events."""
    chapters: Policy = ()
    for event in events:
        chapters = apply_policy(chapters, event)
    return chapters


def policy_problem(chapters: Sequence[Chapter], event: Event) -> str | None:
    """Why a policy command may not be appended to this chapter list, or None if it may.

    For the command side: an unknown chapter id, a duplicate id, a move out of range, or
    an empty title.
    """
    if isinstance(event, PolicyChapterAdded):
        if _index(chapters, event.chapter.chapter_id) >= 0:
            return f"chapter {event.chapter.chapter_id!r} already exists"
        if not event.chapter.title.strip():
            return "a chapter needs a title"
        return None
    if isinstance(event, (PolicyChapterEdited, PolicyChapterActiveSet, PolicyChapterMoved, PolicyChapterDeleted)):
        if _index(chapters, event.chapter_id) < 0:
            return f"no chapter {event.chapter_id!r}"
        if isinstance(event, PolicyChapterEdited) and not event.title.strip():
            return "a chapter needs a title"
        if isinstance(event, PolicyChapterMoved) and event.to_index >= len(chapters):
            return f"to_index must be below {len(chapters)}"
    return None


def next_chapter_id(chapters: Iterable[Chapter]) -> str:
    """An id in the seed's style one above the highest ``cNN`` id given (``"c11"`` after
    ``"c01".."c10"``). Pass every chapter id the tenant ever used (e.g. from its events)
    if a deleted chapter's id must never come back."""
    highest = 0
    for c in chapters:
        if c.chapter_id[:1] == "c" and c.chapter_id[1:].isdigit():
            highest = max(highest, int(c.chapter_id[1:]))
    return f"c{highest + 1:02d}"
