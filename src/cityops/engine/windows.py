"""Event-time tumbling windows for KPIs: accumulators kept in a durable table, turned into points on flush."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cityops.engine.state import Table

Fields = dict[str, float | int]


@dataclass(frozen=True)
class Kpi:
    """One InfluxDB measurement computed per window.

    ``new`` makes an empty accumulator (a list, mutated in place by the stream code);
    ``fields`` turns an accumulator into the point's fields (None or {} = no point yet).
    ``clock`` is "event" (windows by event time) or "processing" (windows by wall-clock arrival).
    """

    measurement: str
    tags: tuple[str, ...]
    new: Callable[[], list[Any]]
    fields: Callable[[list[Any]], Fields | None]
    clock: str = "event"
    doc: dict[str, str] = field(default_factory=dict)


WindowKey = tuple[str, tuple[str, ...], int]  # (measurement, tag values, window start epoch s)

# The instants InfluxDB can store: signed 64-bit nanoseconds since the epoch, less one at each end
# (InfluxDB's models.MinNanoTime / MaxNanoTime): 1677-09-21T00:12:43.145224194Z .. 2262-04-11T23:47:16.854775806Z.
INFLUX_MIN_NS = -9_223_372_036_854_775_806
INFLUX_MAX_NS = 9_223_372_036_854_775_806
INFLUX_RANGE = "1677-09-21T00:12:43.145224194Z..2262-04-11T23:47:16.854775806Z"


def outside_storable(ts: float, width_s: int = 60) -> str | None:
    """Why an event at ``ts`` (epoch s) cannot be stored, or None when it can.

    A KPI point's time is its window's start (``width_s`` seconds wide), so the whole window, start and
    end, must lie within InfluxDB's range, not only the event time: a window start below the minimum would
    be refused by InfluxDB after the event was counted.
    """
    start = int(ts // width_s) * width_s
    end = start + width_s
    if start * 1_000_000_000 < INFLUX_MIN_NS or end * 1_000_000_000 > INFLUX_MAX_NS:
        return (f"event time outside InfluxDB's range: ts={ts!r} (window {start}..{end} epoch s) "
                f"not within {INFLUX_RANGE}")
    return None


class Windows:
    """Accumulators per (measurement, tag values, window start), aligned to UTC multiples of ``width_s``."""

    def __init__(self, table: Table[WindowKey, list[Any]], kpis: dict[str, Kpi], width_s: int = 60,
                 reopen: Callable[[WindowKey], list[Any] | None] | None = None) -> None:
        self.table = table
        self.kpis = kpis
        self.width_s = width_s
        self.reopen = reopen

    def acc(self, kpi: Kpi, tags: tuple[str, ...], ts: float) -> list[Any]:
        """The accumulator of the window holding event time ``ts`` (epoch seconds), marked as changed."""
        start = int(ts // self.width_s) * self.width_s
        key = (kpi.measurement, tags, start)
        table = self.table
        acc = table.data.get(key)
        if acc is None:
            acc = self.reopen(key) if self.reopen is not None else None
            if acc is None:
                acc = kpi.new()
            table.data[key] = acc
        table.dirty.add(key)
        return acc

    def point(self, key: WindowKey) -> tuple[str, dict[str, str], Fields, int] | None:
        """(measurement, tags, fields, window start) for a stored window, or None if it has no fields."""
        acc = self.table.data.get(key)
        if acc is None:
            return None
        kpi = self.kpis[key[0]]
        fields = kpi.fields(acc)
        if not fields:
            return None
        return key[0], dict(zip(kpi.tags, key[1])), fields, key[2]
