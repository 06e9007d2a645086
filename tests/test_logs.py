"""Log line pieces: the timestamp has the form structlog's ISO UTC stamper writes, and
follows the clock across seconds although the date part is formatted once a second."""

from __future__ import annotations

import datetime as dt

import pytest

from services import logs
from services.logs import UtcTimestamp


def test_the_timestamp_is_iso_utc_with_microseconds_and_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = UtcTimestamp()
    seen = []
    for now in (1_700_000_000.5, 1_700_000_000.999999, 1_700_000_001.000001, 1_700_003_600.25):
        monkeypatch.setattr(logs.time, "time", lambda now=now: now)
        seen.append(stamp(None, "info", {})["timestamp"])
    assert seen == ["2023-11-14T22:13:20.500000Z", "2023-11-14T22:13:20.999999Z", "2023-11-14T22:13:21.000001Z",
                    "2023-11-14T23:13:20.250000Z"]
    parsed = dt.datetime.fromisoformat(seen[0].replace("Z", "+00:00"))
    assert parsed == dt.datetime.fromtimestamp(1_700_000_000.5, dt.timezone.utc)
