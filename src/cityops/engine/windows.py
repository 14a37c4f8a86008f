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
