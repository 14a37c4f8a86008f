"""The JSON event streams (card taps, road detectors, health-card events): decoding and their KPIs."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from cityops.engine.context import Context, Decoded, Rejected
from cityops.engine.windows import Fields, Kpi
from cityops.streams import jsontext
from cityops.streams.models import CardTap, HealthCardEvent, RoadReading
from cityops.streams.times import event_time, event_time_text


def _reason(exc: Exception) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.flow`"; keep it, it names field and rule.
    text = str(exc)
    return text if text else type(exc).__name__


def _located(exc: Exception, where: str) -> str:
    """msgspec's reason with its path rooted at the element (``$[3].flow``); the element itself if it has none."""
    text = _reason(exc)
    head, sep, tail = text.rpartition(" - at `$")
    if sep:
        return f"{head} - at `{where}{tail}"
    return f"{text} - at `{where}`"


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


def _int_fields(model: type[msgspec.Struct]) -> tuple[str, ...]:
    """Names of a model's integer fields (plain or optional)."""
    out = []
    for f in msgspec.inspect.type_info(model).fields:  # type: ignore[attr-defined]
        t = f.type
        kinds = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
        if any(isinstance(k, msgspec.inspect.IntType) for k in kinds):
            out.append(f.encode_name)
    return tuple(out)


class _CheckedTime:
    """``ts`` as the element-by-element path checks it: in field order, with the other fields."""


def _check_time(typ: type, value: Any) -> Any:
    if typ is _CheckedTime:
        event_time_text(value)  # raises TypeError/ValueError, worded as msgspec words datetime errors
        return _CheckedTime()
    raise NotImplementedError(f"no decoder for {typ!r}")


def _checking_model(model: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """``model`` with ``ts`` checked in place: msgspec then reports a message's first error in field order,
    as it did while ``ts`` was decoded as a datetime (the same dead-letter reason for the same input)."""
    fields = []
    for f in msgspec.structs.fields(model):
        typ = _CheckedTime if f.name == "ts" else f.type
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, typ, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, typ, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, typ))
    return msgspec.defstruct(f"{model.__name__}Check", fields, kw_only=True, forbid_unknown_fields=False)


def _pointed(results: list[Decoded | Rejected]) -> list[Decoded | Rejected]:
    """Batch results, each rejected element with its JSON Pointer ("/3") in the message."""
    for r in results:
        if type(r) is Rejected and r.index is not None:
            r.path = f"/{r.index}"
    return results


class JsonStream:
    """A stream whose message value is one JSON event object or a JSON array of them.

    ``decode`` accepts exactly the events the published contract (streams/<topic>/schema.json) accepts,
    and judges every element of a batch on its own: an element that breaks the contract, or any error
    while decoding it, dead-letters that element alone (its batch index and a ``$[i].field`` path in the
    reason). Only a message that is not JSON at all, or is neither an object nor an array, is rejected whole.
    """

    model: type[msgspec.Struct]
    kpis: dict[str, Kpi]

    def __init__(self, name: str, topic: str, pseudonymize: Pseudonymizer | None = None) -> None:
        self.name = name
        self.topic = topic
        self.pseudonymize = pseudonymize
        self._one = msgspec.json.Decoder(self.model)
        self._many = msgspec.json.Decoder(list[self.model])  # type: ignore[name-defined]
        self._checker = _checking_model(self.model)
        self._enc = msgspec.json.Encoder()
        self._ints = _int_fields(self.model)
        self._fields = frozenset(f.encode_name for f in msgspec.inspect.type_info(self.model).fields)  # type: ignore[attr-defined]

    def decode(self, raw: bytes) -> list[Decoded | Rejected]:
        if not raw:
            return [Rejected("empty message")]
        first = raw.lstrip()[:1]
        # Fast path: the whole message decodes straight into typed events. Only when it fails do we go
        # element by element, so one bad element of a batch rejects only itself.
        try:
            if first == b"[":
                events = self._many.decode(raw)
                batch = True
            else:
                events = [self._one.decode(raw)]
                batch = False
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # (ValidationError is a DecodeError)
            return self._decode_slow(raw, exc)
        if not events:
            return [Rejected("empty batch: JSON array with no events")]
        if not batch:
            return [self._accept(events[0], 0, "$")]
        return _pointed([self._accept(ev, i, f"$[{i}]") for i, ev in enumerate(events)])

    def _decode_slow(self, raw: bytes, exc: Exception) -> list[Decoded | Rejected]:
        try:
            doc, lenient = jsontext.loads(raw)
        except jsontext.MalformedJson as err:
            parts = jsontext.split_array(raw) if err.too_deep else None
            if not parts:
                return [Rejected(f"malformed JSON: {err}")]
            # A batch with an element nested deeper than JSON parsers go: each element is judged on its own.
            return _pointed([self._raw_element(part, i) for i, part in enumerate(parts)])
        if isinstance(doc, dict):
            return [self._element(doc, 0, "$", lenient)]
        if not isinstance(doc, list):
            return [Rejected(f"contract: message must be a JSON object or array of objects, got {type(doc).__name__}")]
        if not doc:
            return [Rejected("empty batch: JSON array with no events")]
        return _pointed([self._element(element, i, f"$[{i}]", lenient) for i, element in enumerate(doc)])

    def _raw_element(self, part: bytes, index: int) -> Decoded | Rejected:
        """One element of a batch, from its own text (see ``jsontext.split_array``)."""
        try:
            element, lenient = jsontext.loads(part)
        except jsontext.MalformedJson as err:
            why = ("nested deeper than JSON parsers go (orjson: 1024 levels)" if err.too_deep else str(err))
            return Rejected(f"malformed JSON at `$[{index}]`: {why}", index, None)
        return self._element(element, index, f"$[{index}]", lenient)

    def _element(self, element: Any, index: int, where: str, lenient: bool) -> Decoded | Rejected:
        """One element of a parsed message: its typed event, or why it breaks the contract."""
        try:
            if lenient:
                at = jsontext.lone_surrogate(element)
                if at is not None:
                    return Rejected(f"contract: lone surrogate in a string at `{jsontext.json_path(at, where)}`: "
                                    "not Unicode text (RFC 8259 section 8.2)", index, None)
                at = jsontext.beyond_double(element)
                if at and at[0] in self._fields:  # (in an unknown field it is ignored, as the contract says)
                    return Rejected(f"contract: number at `{jsontext.json_path(at, where)}` is beyond the range "
                                    "of a double (it reads as infinity)", index, element)
            if isinstance(element, dict) and self._ints:
                element = self._integral(element)
            ev = msgspec.convert(element, self.model, strict=True)
        except msgspec.ValidationError as err:
            try:  # the first error in field order, the event time checked as the other fields
                msgspec.convert(element, self._checker, strict=True, dec_hook=_check_time)
            except msgspec.ValidationError as first:
                err = first
            return Rejected(f"contract: {_located(err, where)}", index, element)
        except Exception as err:  # a decoder bug must not take the batch's other events with it
            return Rejected(f"decoder error at `{where}`: {type(err).__name__}: {err}", index, element)
        return self._accept(ev, index, where, element)

    def _integral(self, element: dict[str, Any]) -> dict[str, Any]:
        # JSON Schema's "integer" is a value, not a spelling: 60.0 and 6e1 are integers. msgspec's int
        # refuses any number written with a fraction or exponent, so such values are made ints first.
        for name in self._ints:
            v = element.get(name)
            if type(v) is float and v.is_integer():
                element = dict(element)
                element[name] = int(v)
        return element

    def _accept(self, ev: Any, index: int, where: str, element: Any = None) -> Decoded | Rejected:
        try:
            ts, ev.ts = event_time(ev.ts)  # the text made canonical: the digest's spelling of the time
        except (TypeError, ValueError) as err:
            return Rejected(f"contract: {err} - at `{where}.ts`", index,
                            element if element is not None else msgspec.to_builtins(ev))
        try:
            digest = hashlib.blake2b(self._enc.encode(ev), digest_size=8).digest()
            if self.pseudonymize is not None and hasattr(ev, "card_id"):
                ev.card_id = self.pseudonymize(ev.card_id)
        except Exception as err:  # a decoder bug must not take the batch's other events with it
            return Rejected(f"decoder error at `{where}`: {type(err).__name__}: {err}", index, None)
        return Decoded(ev.event_id, ts, ev.source, digest, ev, index)

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
