"""Calendar months, the ledger day and the term matrix (PRODUCT.md, "Domain")."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.terms import (
    ALL_CELLS,
    DEFAULT_TERMS,
    TermMatrix,
    add_months,
    apply_term_edit,
    cell_key,
    ledger_day,
    split_cell_key,
    term_end,
    terms_from_cells,
)
from schemas.events import TermCell, TermMatrixEdited
from tests.consent_builders import day

try:
    AMSTERDAM: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo("Europe/Amsterdam")
except zoneinfo.ZoneInfoNotFoundError:  # no tz database on this host
    AMSTERDAM = None


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ("2024-01-31", 1, "2024-02-29"),  # leap year: clamps to the 29th
        ("2023-01-31", 1, "2023-02-28"),
        ("2024-02-29", 12, "2025-02-28"),  # leap day + a year
        ("2024-02-29", 48, "2028-02-29"),
        ("2024-03-31", 1, "2024-04-30"),
        ("2024-08-31", 18, "2026-02-28"),
        ("2024-01-15", 0, "2024-01-15"),
        ("2024-12-15", 1, "2025-01-15"),
        ("2024-11-30", 3, "2025-02-28"),
        ("2024-05-31", -3, "2024-02-29"),
        ("2024-01-31", 120, "2034-01-31"),
    ],
)
def test_add_months_counts_calendar_months_and_clamps_to_the_month_end(start: str, months: int, expected: str) -> None:
    assert add_months(day(start), months) == day(expected)


def test_a_term_end_is_the_first_date_the_term_no_longer_covers() -> None:
    end = term_end(day("2024-01-31"), 1)
    assert end == day("2024-02-29")
    # covered iff D < end
    assert day("2024-02-28") < end
    assert not day("2024-02-29") < end


@given(st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2090, 12, 31)), st.integers(0, 120))
def test_add_months_lands_in_the_right_month_and_never_later_than_the_same_day(d: dt.date, n: int) -> None:
    result = add_months(d, n)
    assert (result.year * 12 + result.month) - (d.year * 12 + d.month) == n
    assert result.day <= d.day
    assert result.day == d.day or (result + dt.timedelta(days=1)).day == 1  # clamped only at month end


@pytest.mark.parametrize(
    ("recorded_at", "expected"),
    [
        ("2024-03-01T22:59:59+00:00", "2024-03-01"),  # winter: UTC+1
        ("2024-03-01T23:00:00+00:00", "2024-03-02"),
        ("2024-07-01T21:59:59+00:00", "2024-07-01"),  # summer: UTC+2
        ("2024-07-01T22:00:00+00:00", "2024-07-02"),
        ("2024-03-31T00:59:59+00:00", "2024-03-31"),  # the night summer time starts
        ("2024-10-26T22:30:00+00:00", "2024-10-27"),  # the night summer time ends
        ("2024-03-01T12:00:00", "2024-03-01"),  # naive = UTC
    ],
)
def test_the_ledger_day_is_the_dutch_calendar_date(recorded_at: str, expected: str) -> None:
    assert ledger_day(dt.datetime.fromisoformat(recorded_at)) == day(expected)


@pytest.mark.skipif(AMSTERDAM is None, reason="no tz database")
@given(
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2037, 12, 31), timezones=st.just(dt.timezone.utc)
    )
)
def test_the_ledger_day_agrees_with_the_tz_database_for_amsterdam(moment: dt.datetime) -> None:
    assert ledger_day(moment) == moment.astimezone(AMSTERDAM).date()


@pytest.mark.parametrize(
    ("category", "channel", "months"),
    [
        ("aftersales_service", "email", 48),
        ("aftersales_service", "sms", 48),
        ("aftersales_service", "app", 48),
        ("aftersales_service", "post", 48),
        ("aftersales_service", "phone", 48),
        ("newsletter", "email", 18),
        ("newsletter", "sms", 18),
        ("newsletter", "app", 18),
        ("newsletter", "post", 48),
        ("newsletter", "phone", 48),
        ("sales_campaign", "email", 18),
        ("sales_campaign", "phone", 48),
        ("aftersales_campaign", "app", 18),
        ("aftersales_campaign", "post", 48),
        ("prospect", "email", 3),
        ("prospect", "post", 3),
        ("prospect", "phone", 3),
    ],
)
def test_the_default_terms_follow_the_seed_table(category: str, channel: str, months: int) -> None:
    assert DEFAULT_TERMS.get(category, channel) == months


def test_the_default_terms_have_all_25_cells_and_no_evidence() -> None:
    assert len(DEFAULT_TERMS.months) == 25 == len(ALL_CELLS)
    assert DEFAULT_TERMS.set_by == {}
    assert DEFAULT_TERMS.evidence("newsletter", "email") is None


def test_a_matrix_built_from_cells_cites_the_event_for_every_cell() -> None:
    matrix = terms_from_cells(DEFAULT_TERMS.cells(), "ev-created")
    assert matrix.months == DEFAULT_TERMS.months
    assert set(matrix.set_by.values()) == {"ev-created"}
    assert len(matrix.set_by) == 25


def test_a_cell_that_was_never_set_counts_as_zero_months() -> None:
    matrix = terms_from_cells([TermCell(category="newsletter", channel="email", months=12)], "ev")
    assert matrix.get("newsletter", "email") == 12
    assert matrix.get("newsletter", "post") == 0
    assert TermMatrix().get("prospect", "post") == 0


def test_a_term_edit_changes_only_its_cells_and_cites_the_edit() -> None:
    base = terms_from_cells(DEFAULT_TERMS.cells(), "ev-created")
    edited = apply_term_edit(
        base,
        TermMatrixEdited(cells=[TermCell(category="newsletter", channel="email", months=6)]),
        "ev-edit",
    )
    assert edited.get("newsletter", "email") == 6
    assert edited.evidence("newsletter", "email") == "ev-edit"
    assert edited.get("newsletter", "sms") == 18
    assert edited.evidence("newsletter", "sms") == "ev-created"
    assert base.get("newsletter", "email") == 18  # the original is untouched


def test_a_term_matrix_round_trips_through_json() -> None:
    matrix = terms_from_cells(DEFAULT_TERMS.cells(), "ev")
    assert msgspec.json.decode(msgspec.json.encode(matrix), type=TermMatrix) == matrix


def test_cell_keys_read_category_colon_channel() -> None:
    assert cell_key("newsletter", "email") == "newsletter:email"
    assert split_cell_key("newsletter:email") == ("newsletter", "email")
