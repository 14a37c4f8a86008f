"""Event-time tumbling windows for KPIs: accumulators kept in a durable table, turned into points on flush."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cityops.engine.codec import Codec, StateFormatError, StateStruct
from cityops.engine.state import Table

Fields = dict[str, float | int]


@dataclass(frozen=True)
class Kpi:
    """One InfluxDB measurement computed per window.

    ``new`` makes an empty accumulator (a list, mutated in place by the stream code);
    ``fields`` turns an accumulator into the point's fields (None or {} = no point yet).
    ``clock`` is "event" (windows by event time) or "processing" (windows by wall-clock arrival).
    ``slots``: the name of each accumulator position, as durable state stores it (``WindowCodec``):
    a release may add a slot at the end (restored windows get ``new()``'s value for it); renaming or
    reordering slots needs a codec migration. ValueError if their number differs from ``new()``'s.
    """

    measurement: str
    tags: tuple[str, ...]
    new: Callable[[], list[Any]]
    fields: Callable[[list[Any]], Fields | None]
    clock: str = "event"
    doc: dict[str, str] = field(default_factory=dict)
    slots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.new())
        if len(self.slots) != n or len(set(self.slots)) != n:
            raise ValueError(f"Kpi {self.measurement!r}: slots {self.slots!r} must name each of the {n} "
                             "accumulator positions once")


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


class ClosedWindow(StateStruct, kw_only=True):
    """A window closed by watermark whose point is not yet confirmed written (``closed_windows``)."""

    tags: dict[str, str]
    fields: dict[str, Any]  # the point as computed at close
    acc: dict[str, Any]  # the accumulator by slot name, kept to reopen the window for a late event


class WindowCodec:
    """Codecs of the engine's window tables: accumulators are written as {slot name: value} by their Kpi.

    Shapes ``kpi_window`` (table ``windows``: key -> accumulator) and ``kpi_closed_window``
    (``closed_windows``: key -> ``ClosedWindow``, in memory (point, accumulator)). Version 0 (pickled
    lists) is read by slot position. StateFormatError for a window of a measurement no Kpi declares, or
    with a slot its Kpi does not have.
    """

    def __init__(self, kpis: dict[str, Kpi]) -> None:
        self.kpis = kpis
        self.windows = Codec("kpi_window", dict[str, Any], to_plain=self._named, from_plain=self._positional,
                             migrations={0: self._named})
        self.closed = Codec("kpi_closed_window", ClosedWindow, to_plain=self._closed_out,
                            from_plain=self._closed_in, migrations={0: self._closed_v0})

    def _kpi(self, key: WindowKey) -> Kpi:
        kpi = self.kpis.get(key[0])
        if kpi is None:
            raise StateFormatError(f"state holds windows of measurement {key[0]!r}, which this release does not "
                                   f"compute (known: {sorted(self.kpis)})")
        return kpi

    def _named(self, key: WindowKey, acc: list[Any]) -> dict[str, Any]:
        slots = self._kpi(key).slots
        if len(acc) != len(slots):
            raise StateFormatError(f"window {key!r} has {len(acc)} accumulator values, its Kpi {len(slots)}")
        return dict(zip(slots, acc))

    def _positional(self, key: WindowKey, named: dict[str, Any]) -> list[Any]:
        kpi = self._kpi(key)
        unknown = set(named) - set(kpi.slots)
        if unknown:
            raise StateFormatError(f"window {key!r} has accumulator slots {sorted(unknown)} that Kpi "
                                   f"{kpi.measurement!r} does not declare: written by another release")
        fresh = kpi.new()
        return [named[s] if s in named else fresh[i] for i, s in enumerate(kpi.slots)]

    def _closed_out(self, key: WindowKey, entry: tuple[Any, list[Any]]) -> ClosedWindow:
        point, acc = entry
        return ClosedWindow(tags=point[1], fields=point[2], acc=self._named(key, acc))

    def _closed_in(self, key: WindowKey, cw: ClosedWindow) -> tuple[Any, list[Any]]:
        return (key[0], cw.tags, cw.fields, key[2]), self._positional(key, cw.acc)

    def _closed_v0(self, key: WindowKey, plain: list[Any]) -> dict[str, Any]:
        point, acc = plain  # format 0: ((measurement, tags, fields, start), accumulator list)
        return {"tags": point[1], "fields": point[2], "acc": self._named(key, acc)}


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


class DiscardWindows(Windows):
    """Windows that keep nothing: what stream code writes while applying a late event (kept out of the KPIs)."""

    def __init__(self, kpis: dict[str, Kpi], width_s: int = 60) -> None:
        super().__init__(Table("discarded"), kpis, width_s)

    def acc(self, kpi: Kpi, tags: tuple[str, ...], ts: float) -> list[Any]:
        """A fresh accumulator, not stored."""
        return kpi.new()
