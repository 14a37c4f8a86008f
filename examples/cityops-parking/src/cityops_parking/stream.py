"""The ``parking.lot-occupancy`` stream: its typed event (the contract), decoding, and the ``parking_occupancy`` KPI."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from cityops.types import Context, Decoded, Fields, JsonStream, Kpi

__all__ = ["OCCUPANCY", "TOPIC", "LotOccupancy", "LotOccupancyStream", "occupancy_fields"]

TOPIC = "parking.lot-occupancy"

NonEmpty = Annotated[str, Meta(min_length=1, max_length=256)]
# RFC 3339 with an explicit offset; checked by cityops (JsonStream), which accepts exactly what the format does.
EventTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Count = Annotated[int, Meta(ge=0, le=1_000_000)]
Sig = Annotated[str, Meta(pattern="^[0-9a-fA-F]{64}$", min_length=64, max_length=64)]


class LotOccupancy(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """parking.lot-occupancy: one report of a car park's gate controller (one-card parking)."""

    event_id: NonEmpty
    ts: EventTime
    source: NonEmpty
    lot: NonEmpty
    capacity: Annotated[int, Meta(ge=1, le=1_000_000)]
    occupied: Count
    entries: Count = 0
    exits: Count = 0
    sig: Sig | None = None


def occupancy_fields(acc: list[Any]) -> Fields | None:
    """The point of one lot's window: reports, mean and max occupancy ratio (occupied / capacity), entries, exits.

    The ratio is the report's ``occupied / capacity``; it may exceed 1 (controllers count cars parked on
    aisles); the mean is over the window's reports, unweighted. Rounded to 5 decimals.
    """
    reports, ratio_sum, ratio_max, entries, exits = acc
    if not reports:
        return None
    return {"reports": reports, "occupancy_mean": round(ratio_sum / reports, 5),
            "occupancy_max": round(ratio_max, 5), "entries": entries, "exits": exits}


OCCUPANCY = Kpi(
    "parking_occupancy", ("lot",), lambda: [0, 0.0, 0.0, 0, 0], occupancy_fields,
    doc={"reports": "gate-controller reports in the window",
         "occupancy_mean": "mean of occupied / capacity over the reports",
         "occupancy_max": "highest occupied / capacity of a report",
         "entries": "sum of entries", "exits": "sum of exits"},
    slots=("reports", "ratio_sum", "ratio_max", "entries", "exits"),
)


class LotOccupancyStream(JsonStream):
    """Decodes reports (one JSON object or an array of them; each element judged on its own) and fills the KPI."""

    model = LotOccupancy
    kpis = {OCCUPANCY.measurement: OCCUPANCY}

    def apply(self, ev: Decoded, ctx: Context) -> None:
        r: LotOccupancy = ev.event
        acc = ctx.windows.acc(OCCUPANCY, (r.lot,), ev.ts)
        ratio = r.occupied / r.capacity
        acc[0] += 1
        acc[1] += ratio
        if ratio > acc[2]:
            acc[2] = ratio
        acc[3] += r.entries
        acc[4] += r.exits
