"""The JSON event streams (card taps, road detectors, health-card events): decoding and their KPIs."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import orjson

from cityops.engine.context import Context, Decoded, Rejected
from cityops.engine.windows import Fields, Kpi
from cityops.streams.models import CardTap, HealthCardEvent, RoadReading


def _reason(exc: Exception) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.flow`"; keep it, it names field and rule.
    text = str(exc)
    return text if text else type(exc).__name__


class Pseudonymizer:
    """Keyed hash of card numbers (BLAKE2b-MAC, 80 bits, hex): stable per key, not reversible without it."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.blake2b(key, digest_size=32).digest()
        self._cache: dict[str, str] = {}

    def __call__(self, card_id: str) -> str:
        got = self._cache.get(card_id)
        if got is None:
            got = "p-" + hashlib.blake2b(card_id.encode(), key=self._key, digest_size=10).hexdigest()
            if len(self._cache) > 500_000:  # bound memory; hashing again is cheap
                self._cache.clear()
            self._cache[card_id] = got
        return got


class JsonStream:
    """A stream whose message value is one JSON event object or a JSON array of them."""

    model: type[msgspec.Struct]
    kpis: dict[str, Kpi]

    def __init__(self, name: str, topic: str, pseudonymize: Pseudonymizer | None = None) -> None:
        self.name = name
        self.topic = topic
        self.pseudonymize = pseudonymize
        self._one = msgspec.json.Decoder(self.model)
        self._many = msgspec.json.Decoder(list[self.model])  # type: ignore[name-defined]
        self._enc = msgspec.json.Encoder()

    def decode(self, raw: bytes) -> list[Decoded | Rejected]:
        if not raw:
            return [Rejected("empty message")]
        first = raw.lstrip()[:1]
        # Fast path: the whole message decodes straight into typed events. Only when it fails do we go
        # element by element, so one bad element of a batch rejects only itself.
        try:
            if first == b"[":
                events = self._many.decode(raw)
            else:
                events = [self._one.decode(raw)]
        except msgspec.ValidationError as exc:  # (a subclass of DecodeError: test it first)
            return self._decode_slow(raw, exc)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return [Rejected(f"malformed JSON: {_reason(exc)}")]
        if not events:
            return [Rejected("empty batch: JSON array with no events")]
        return [self._accept(ev, i) for i, ev in enumerate(events)]

    def _decode_slow(self, raw: bytes, exc: Exception) -> list[Decoded | Rejected]:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            return [Rejected(f"malformed JSON: {err}")]
        if isinstance(doc, dict):
            return [Rejected(f"contract: {_reason(exc)}", 0, doc)]
        if not isinstance(doc, list):
            return [Rejected(f"contract: message must be a JSON object or array of objects, got {type(doc).__name__}")]
        if not doc:
            return [Rejected("empty batch: JSON array with no events")]
        out: list[Decoded | Rejected] = []
        for i, element in enumerate(doc):
            try:
                ev = msgspec.convert(element, self.model, strict=True)
            except msgspec.ValidationError as err:
                out.append(Rejected(f"contract: {_reason(err).replace('$', f'$[{i}]', 1)}", i, element))
                continue
            out.append(self._accept(ev, i))
        return out

    def _accept(self, ev: Any, index: int) -> Decoded:
        digest = hashlib.blake2b(self._enc.encode(ev), digest_size=8).digest()
        if self.pseudonymize is not None and hasattr(ev, "card_id"):
            ev.card_id = self.pseudonymize(ev.card_id)
        return Decoded(ev.event_id, ev.ts.timestamp(), ev.source, digest, ev, index)

    def apply(self, ev: Decoded, ctx: Context) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# --- traffic.card-taps ----------------------------------------------------------------------------------

def _ridership_fields(a: list[Any]) -> Fields:
    return {"taps_in": a[0], "taps_out": a[1], "declined": a[2], "revenue_cny": round(a[3], 2), "errors": a[4]}


RIDERSHIP = Kpi(
    "traffic_ridership", ("mode", "line"), lambda: [0, 0, 0, 0.0, 0], _ridership_fields,
    doc={"taps_in": "taps with direction=in, result=ok", "taps_out": "direction=out, result=ok",
         "declined": "result=declined", "revenue_cny": "sum of fare_cny over result=ok",
         "errors": "result=error (reader or back-end fault)"},
    slots=("taps_in", "taps_out", "declined", "revenue_cny", "errors"),
)


class CardTaps(JsonStream):
    model = CardTap
    kpis = {RIDERSHIP.measurement: RIDERSHIP}

    def apply(self, ev: Decoded, ctx: Context) -> None:
        t: CardTap = ev.event
        acc = ctx.windows.acc(RIDERSHIP, (t.mode, t.line), ev.ts)
        if t.result == "ok":
            acc[0 if t.direction == "in" else 1] += 1
            acc[3] += t.fare_cny
        elif t.result == "declined":
            acc[2] += 1
        else:
            acc[4] += 1


# --- traffic.road-detectors -----------------------------------------------------------------------------

def _road_fields(a: list[Any]) -> Fields:
    flow, speed_flow, speed_sum, occ_sum, n = a
    if n == 0:
        return {}
    speed = speed_flow / flow if flow > 0 else speed_sum / n
    return {"flow": flow, "speed_kmh": round(speed, 3), "occupancy": round(occ_sum / n, 5), "readings": n}


ROAD = Kpi(
    "traffic_road", ("segment",), lambda: [0, 0.0, 0.0, 0.0, 0], _road_fields,
    doc={"flow": "sum of flow", "speed_kmh": "flow-weighted mean speed (plain mean when flow sum is 0)",
         "occupancy": "mean occupancy", "readings": "detector readings in the window"},
    slots=("flow", "speed_x_flow", "speed_sum", "occupancy_sum", "readings"),
)


class RoadDetectors(JsonStream):
    model = RoadReading
    kpis = {ROAD.measurement: ROAD}

    def apply(self, ev: Decoded, ctx: Context) -> None:
        r: RoadReading = ev.event
        acc = ctx.windows.acc(ROAD, (r.segment,), ev.ts)
        acc[0] += r.flow
        acc[1] += r.speed_kmh * r.flow
        acc[2] += r.speed_kmh
        acc[3] += r.occupancy
        acc[4] += 1


# --- health.card-events ---------------------------------------------------------------------------------

def _health_fields(a: list[Any]) -> Fields:
    regs, pays, failed, wait_sum, wait_n, wait_max, events = a
    out: Fields = {"registrations": regs, "payments": pays, "failed": failed, "events": events}
    if wait_n:
        out["wait_s_mean"] = round(wait_sum / wait_n, 3)
        out["wait_s_max"] = wait_max
    return out


HEALTH = Kpi(
    "health_service", ("hospital",), lambda: [0, 0, 0, 0.0, 0, 0.0, 0], _health_fields,
    doc={"registrations": "kind=register, result=ok", "payments": "kind=pay, result=ok",
         "failed": "result=failed", "wait_s_mean": "mean wait_s over events that carry it",
         "wait_s_max": "max wait_s", "events": "all accepted events"},
    slots=("registrations", "payments", "failed", "wait_s_sum", "wait_n", "wait_s_max", "events"),
)


class HealthEvents(JsonStream):
    model = HealthCardEvent
    kpis = {HEALTH.measurement: HEALTH}

    def apply(self, ev: Decoded, ctx: Context) -> None:
        h: HealthCardEvent = ev.event
        acc = ctx.windows.acc(HEALTH, (h.hospital,), ev.ts)
        acc[6] += 1
        if h.result == "failed":
            acc[2] += 1
        elif h.kind == "register":
            acc[0] += 1
        elif h.kind == "pay":
            acc[1] += 1
        if h.wait_s is not None:
            acc[3] += h.wait_s
            acc[4] += 1
            if h.wait_s > acc[5]:
                acc[5] = h.wait_s


# --- stream_quality (processing-time windows) -----------------------------------------------------------

def _quality_fields(a: list[Any]) -> Fields:
    return {"accepted": a[0], "invalid": a[1], "duplicates": a[2], "late": a[3], "untrusted": a[4]}


QUALITY = Kpi(
    "stream_quality", ("stream",), lambda: [0, 0, 0, 0, 0], _quality_fields, clock="processing",
    doc={"accepted": "events in KPIs", "invalid": "events dead-lettered for breaking the contract (incl. `future`)",
         "duplicates": "event_id seen before (same content)", "late": "beyond allowed lateness",
         "untrusted": "unknown source or bad signature (dead-lettered)"},
    slots=("accepted", "invalid", "duplicates", "late", "untrusted"),
)
# `future` (dated beyond CITYOPS_MAX_FUTURE_S ahead of the wall clock) is dead-lettered like a contract violation.
QUALITY_INDEX = {"accepted": 0, "invalid": 1, "duplicate": 2, "late": 3, "untrusted": 4, "bad_signature": 4,
                 "tampered": 2, "future": 1}

STREAM_CLASSES: dict[str, type[JsonStream]] = {
    "traffic.card-taps": CardTaps,
    "traffic.road-detectors": RoadDetectors,
    "health.card-events": HealthEvents,
}
