"""Typed models of the stream contracts in streams/<topic>/schema.json (a test holds the two equal)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

NonEmpty = Annotated[str, Meta(min_length=1, max_length=256)]

# RFC 3339 with an explicit offset (JSON Schema `format: date-time`), kept as text by msgspec and checked by
# cityops.streams.times (JsonStream), which accepts exactly what the format accepts: msgspec's own
# datetime rejects leap seconds and lets through forms RFC 3339 does not allow (a space, "+0800").
EventTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
NonNegative = Annotated[float, Meta(ge=0, le=1e12)]
Lat = Annotated[float, Meta(ge=-90, le=90)]
Lon = Annotated[float, Meta(ge=-180, le=180)]
# The lengths as well as the pattern: Python's `$` also matches before a trailing newline, ECMA-262's
# (JSON Schema's) does not; with the length fixed at 64 both read the contract the same way.
Sig = Annotated[str, Meta(pattern="^[0-9a-fA-F]{64}$", min_length=64, max_length=64)]


class CardTap(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """traffic.card-taps: one tap of a one-card at a metro gate, bus, bike dock, coach gate or car park."""

    event_id: NonEmpty
    ts: EventTime
    source: NonEmpty
    card_id: NonEmpty
    mode: Literal["metro", "bus", "bike", "coach", "parking"]
    line: NonEmpty
    station: NonEmpty | None = None
    direction: Literal["in", "out"]
    fare_cny: NonNegative = 0.0
    result: Literal["ok", "declined", "error"] = "ok"
    lat: Lat | None = None
    lon: Lon | None = None
    sig: Sig | None = None


class RoadReading(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """traffic.road-detectors: one interval of a road segment's loop or video detector."""

    event_id: NonEmpty
    ts: EventTime
    source: NonEmpty
    segment: NonEmpty
    flow: Annotated[int, Meta(ge=0, le=1_000_000)]
    speed_kmh: Annotated[float, Meta(ge=0, le=400)]
    occupancy: Annotated[float, Meta(ge=0, le=1)]
    interval_s: Annotated[int, Meta(gt=0, le=86400)]
    sig: Sig | None = None


class HealthCardEvent(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """health.card-events: one step of a patient's visit, identified by the resident health card."""

    event_id: NonEmpty
    ts: EventTime
    source: NonEmpty
    card_id: NonEmpty
    hospital: NonEmpty
    department: NonEmpty | None = None
    kind: Literal["register", "consult", "pay", "dispense", "lab", "imaging"]
    channel: Literal["kiosk", "app", "window", "other"] | None = None
    wait_s: NonNegative | None = None
    amount_cny: NonNegative | None = None
    result: Literal["ok", "failed"] = "ok"
    sig: Sig | None = None


MODELS: dict[str, type[msgspec.Struct]] = {
    "traffic.card-taps": CardTap,
    "traffic.road-detectors": RoadReading,
    "health.card-events": HealthCardEvent,
}
