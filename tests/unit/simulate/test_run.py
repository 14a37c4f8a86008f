"""`cityops simulate` defaults: the simulated period ends by the wall clock, so no event is dated ahead of it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cityops.simulate.run import _event_ts, default_start, events

CST = timezone(timedelta(hours=8))


@pytest.mark.parametrize("hour", [0, 3, 6, 7, 12, 23])
@pytest.mark.parametrize("duration_s", [600.0, 3600.0, 86400.0, 3 * 86400.0])
def test_default_period_ends_by_the_wall_clock(hour: int, duration_s: float) -> None:
    now = datetime(2026, 11, 30, hour, 30, tzinfo=CST)
    start = default_start(duration_s, now)
    assert (start.hour, start.minute) == (6, 0)  # the simulated day still starts in the morning
    assert start.timestamp() + duration_s <= now.timestamp()
    assert start.timestamp() + duration_s > now.timestamp() - 86400  # the latest such morning


def test_no_simulated_event_is_dated_after_now() -> None:
    now = datetime.now(CST)
    start = default_start(1800.0, now)
    it, _ = events(seed=3, start=start, duration_s=1800.0, rate=20, streams={"traffic", "health", "food"},
                   incidents=False)
    newest = max(datetime.fromisoformat(_event_ts(t, v)).timestamp() for t, v in it)
    assert newest <= now.timestamp()
