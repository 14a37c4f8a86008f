"""`cityops demo`'s KPI lines: only minutes every stream they come from has completed (its /healthz
watermark past the minute's end by the allowed lateness), so a shown value is the one InfluxDB keeps."""

from __future__ import annotations

from datetime import datetime

from cityops.demo import complete_until, kpi_streams, last_complete_wall_minute, query_kpis
from cityops.localproc import ManagedProcess
from cityops.units import CITY_TZ
from tests.conftest import influx_write

T = datetime(2026, 11, 25, 7, 3, tzinfo=CITY_TZ).timestamp()  # a minute start
TAPS, ROAD, HEALTH, FOOD = "traffic.card-taps", "traffic.road-detectors", "health.card-events", "food.trace-events"


def healthz(taps: float) -> dict[str, float]:
    """/healthz watermarks as the tester saw them: the food stream ~677 s ahead of the taps."""
    return {TAPS: taps, ROAD: taps + 5, HEALTH: taps + 30, FOOD: taps + 677}


def test_cut_off_is_the_slowest_streams_watermark_less_lateness_and_window() -> None:
    wm = healthz(T + 60 + 600 + 40)  # the taps' watermark 40 s past the end of 07:03 + the lateness
    # The taps KPI: 07:03 is complete (its end + 600 s is behind the taps' watermark), 07:04 is not.
    assert complete_until(wm, [TAPS], 600, 60) == T + 40
    # Not the newest stream's (the food stream's): that cut-off was 677 s ahead and showed open minutes.
    assert complete_until(wm, [FOOD], 600, 60) == T + 40 + 677
    assert complete_until(wm, [TAPS, FOOD, ROAD], 600, 60) == T + 40  # several streams: the slowest
    # A stream without a watermark yet: nothing of it is known complete.
    assert complete_until({FOOD: T}, [TAPS], 600, 60) is None
    assert complete_until(None, [TAPS], 600, 60) is None
    assert complete_until({TAPS: None}, [TAPS], 600, 60) is None
    # Each shown family comes from its own stream.
    streams = kpi_streams()
    assert (streams["traffic_ridership"], streams["traffic_road"], streams["health_service"],
            streams["food_chain"]) == (TAPS, ROAD, HEALTH, FOOD)


def test_stream_quality_shows_the_last_complete_wall_clock_minute() -> None:
    assert last_complete_wall_minute(T + 30, 60) == T - 60  # 07:03 is in progress: 07:02
    assert last_complete_wall_minute(T + 2, 60) == T - 120  # 07:02 ended 2 s ago: not yet closed and written
    assert last_complete_wall_minute(T + 11, 60) == T - 60


def write(influx: ManagedProcess, lines: list[str]) -> None:
    influx_write(influx, lines)


def test_shown_minutes_are_complete_ones_from_influxdb(influx: ManagedProcess) -> None:
    # The worker writes open windows as they fill: 07:03 and 07:04 are there, only 07:03 is complete.
    t = int(T)
    write(influx, [
        f'traffic_ridership,mode=metro,line=1 taps_in=63i {t}',
        f'traffic_ridership,mode=metro,line=1 taps_in=1i {t + 60}',
        f'traffic_road,segment=a speed_kmh=40 {t}', f'traffic_road,segment=b speed_kmh=50 {t}',
        f'traffic_road,segment=a speed_kmh=10 {t + 60}',
        f'stream_quality,stream={TAPS} accepted=5i,invalid=0i,duplicates=0i,late=0i {t}',
        f'stream_quality,stream={TAPS} accepted=1i,invalid=0i,duplicates=0i,late=0i {t + 60}',
    ])
    k = query_kpis(influx.url, healthz(T + 60 + 600 + 40), lateness_s=600, window_s=60, now=T + 90)
    assert k.error is None
    assert k.metro == (t, [("1", 63.0)])
    assert k.road == (t, 45.0, 2)
    assert k.quality[0] == t and k.quality[1]["accepted"] == 5  # 07:04 still in progress at 07:04:30
    # Before any watermark: no minute shown at all (the old cut-off came from the food stream's time).
    k = query_kpis(influx.url, {FOOD: T + 3600}, lateness_s=600, window_s=60, now=T + 90)
    assert k.metro == (None, []) and k.road[0] is None
