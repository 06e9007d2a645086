"""Answers of the dealer's reach, lapse and change routes (``/v1``), version 1.

API types only (not topic messages): the OpenAPI document is generated from them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from schemas.vocabulary import SLUG_PATTERN, Category, Channel


class ReachSource(msgspec.Struct, frozen=True, kw_only=True):
    """Eligible subjects of one data source: ``cells[category][channel]`` holds one count
    per date of :attr:`ReachReport.dates` (today, +30, +90 days)."""

    source: str
    subjects: int
    cells: dict[str, dict[str, list[int]]]


class ReachReport(msgspec.Struct, frozen=True, kw_only=True):
    """How many subjects may get a message per (category, channel) on each date, per data
    source and in total, from the projector's read model evaluated with the eligibility
    rule. ``subjects``: subjects that are not erased."""

    tenant_id: str
    on: dt.date
    dates: list[dt.date]
    terms_version: int
    subjects: int
    total: dict[str, dict[str, list[int]]]
    sources: list[ReachSource]


class LapseEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A subject that is eligible for (category, channel) on the list's day and no longer
    on ``lapses_on`` (the first such day), with the basis it loses and the ``requires_*``
    flags of that day's decision: what a message sent before ``lapses_on`` must do."""

    source: str
    customer_ref: str
    category: str
    channel: str
    lapses_on: dt.date
    basis: str | None
    reason_after: str
    # the requires_* flags of today's decision: what a message sent before lapses_on must do
    requires_disclosure: bool = False
    requires_postfilter_check: bool = False
    requires_objection_offer: bool = False


class LapseList(msgspec.Struct, frozen=True, kw_only=True):
    """Who is eligible on ``on`` and loses it by ``until`` (inclusive), per cell."""

    tenant_id: str
    on: dt.date
    until: dt.date
    days: int
    count: int
    lapses: list[LapseEntry]


class MailingExport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A campaign's mailing list: who may get (category, channel) on send_date."""

    category: Category
    channel: Channel
    send_date: dt.date
    source: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
