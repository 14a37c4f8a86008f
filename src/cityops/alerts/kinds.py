"""Rule kinds: the code behind each alert rule, registered by kind name; a rule itself is configuration.

A rule (``RuleSpec``: name, kind, params, ...) is evaluated by an instance of the ``RuleKind`` subclass
registered under its kind, so a new rule of an existing kind needs no code. Kinds only *report conditions*
(``ctx.signals.signal(..., active=...)`` at event time); the alert lifecycle (pending/firing/resolved,
``for_s``, ``resolve_after_s``) lives in ``cityops.alerts.lifecycle``.

Hooks the engine calls (each a no-op by default):
    on_event(stream, ev, ctx)                       an accepted event
    on_window(measurement, tags, fields, window_start, ctx)  a KPI window closed by watermark
    on_quality(stream, outcome, ts, source, ctx)    every event outcome (accepted|invalid|duplicate|late|
                                                    untrusted|bad_signature)
    on_quality_many(stream, outcome, items, ctx)    the same for a run of events of one outcome, in order:
                                                    items = [(ts, source), ...] (default: on_quality each)
    on_tick(now_ts, ctx)                            the engine's event-time watermark moved
    on_tampering(stream, event_id, source, ts, ctx) an event_id arrived again with different content
    on_rejected_source(stream, source, reason, ts, ctx)  'untrusted_source' | 'bad_signature' (dead-lettered)
                                                    | 'untrusted_source_observed' (an unlisted source's
                                                    event let through: CITYOPS_UNKNOWN_SOURCES=observe)

State: each rule keeps its per-entity state in ``ctx.store.table(f"rule:{name}", codec)`` as plain data, so
two rules of the same kind never share it and it survives a crash exactly; ``on_tick`` evicts entries older
than the kind's ``horizon_s`` (event time) on the rule's *retention clock*: the rules' clock, never past the
clock of the rule's own stream (``retention_stream``; see ``cityops.engine.clocks``), so another stream, or an
event dated far ahead, cannot expire it. A tick costs the state a rule holds, never the event time it crosses. The codec (shape ``rule:<kind>``) is derived from the kind:
``Condition`` for the entities ``report`` keeps open, and the kind's ``entry_type`` (or
``entry_type_of(key)``) for its own entries, with ``entry_v0`` reading them from the pickled format (see
``cityops.engine.codec``). The engine's facts come typed in ``ctx.rule`` (``cityops.types.RuleContext``):
``sources`` (the ``SourceRegistry``, needed by ``source_silent`` and used by ``impossible_travel`` for taps
without coordinates), ``engine_start_ts`` (silence of never-heard sources counts from it),
``stream_clocks`` and ``kpi_stream``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cityops.alerts.detector import KpiDetector
from cityops.alerts.sources import DEFAULT_TZ, SourceRegistry
from cityops.alerts.spec import RuleSpec
from cityops.engine.codec import Codec, StateFormatError, StateStruct
from cityops.engine.context import Context, Decoded
from cityops.engine.state import Table
from cityops.units import CITY_TZ_NAME

__all__ = [
    "KINDS", "REQUIRED", "RuleKind", "register", "build", "state_table",
    "haversine_km", "STREAMS", "OUTCOMES",
]


STREAMS = ("traffic.card-taps", "traffic.road-detectors", "health.card-events", "food.trace-events")
OUTCOMES = ("accepted", "invalid", "duplicate", "late", "untrusted", "bad_signature")

_OPEN = "__open__"  # table keys (_OPEN, *entity items): entities whose condition was reported active


class Condition(StateStruct, kw_only=True, gc=False):
    """An entity whose two-way condition was reported: active since/at ``ts``, or recovering since ``ts``."""

    active: bool
    ts: float  # event time, epoch s: last active report, or start of the recovery


def _is_open(key: Any) -> bool:
    return isinstance(key, tuple) and bool(key) and key[0] == _OPEN


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # params_schema default of a parameter that has none

KINDS: dict[str, type[RuleKind]] = {}


def state_table(rule: str) -> str:
    """The name of the state table of the rule called ``rule`` (its alertname)."""
    return f"rule:{rule}"


def register(name: str) -> Callable[[type[RuleKind]], type[RuleKind]]:
    """Class decorator: make ``cls`` the code of rule kind ``name``."""

    def deco(cls: type[RuleKind]) -> type[RuleKind]:
        if name in KINDS and KINDS[name] is not cls:
            raise ValueError(f"rule kind {name!r} registered twice ({KINDS[name].__name__}, {cls.__name__})")
        cls.kind = name
        KINDS[name] = cls
        return cls

    return deco


def build(spec: RuleSpec, kinds: Mapping[str, type[RuleKind]] | None = None) -> RuleKind:
    """The evaluator of ``spec``; ValueError naming the rule if its kind or params are wrong.

    ``kinds``: kind name -> class (default ``KINDS``, the built-in ones; the worker passes every loaded
    plugin's, ``cityops.plugins.PluginSet.rule_kinds``).
    """
    kinds = KINDS if kinds is None else kinds
    cls = kinds.get(spec.kind)
    if cls is None:
        where = f"{spec.source}.kind" if spec.source else f"rule {spec.name!r}"
        raise ValueError(f"{where}: unknown kind {spec.kind!r}; known kinds: {', '.join(sorted(kinds))}")
    return cls(spec)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two WGS84 points (degrees)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def _type_ok(value: Any, typ: Any) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    for t in types:
        if t is None or t is type(None):
            if value is None:
                return True
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, t):
            return True
    return False


def _type_name(typ: Any) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join("null" if t in (None, type(None)) else t.__name__ for t in types)


class RuleKind:
    """Base of all rule kinds: validated params, a namespaced state table, no-op hooks, bounded state.

    Subclasses set ``params_schema`` (param -> (type or tuple of types, default or REQUIRED)), may
    check ranges in ``check()``, and evict their own entries in ``expired()``.
    ``one_shot``: each active signal is one occurrence (the lifecycle resolves it after a quiet time);
    otherwise the kind reports the condition both ways (active, then inactive until it resolves).
    """

    kind: ClassVar[str] = ""
    params_schema: ClassVar[dict[str, tuple[Any, Any]]] = {}
    # The msgspec type of the kind's own state entries (None: it keeps none besides open conditions).
    entry_type: ClassVar[Any] = None
    one_shot: ClassVar[bool] = False
    min_sweep_every_s: ClassVar[float] = 300.0
    # (key, entry in memory) -> the entry as written, for a kind that keeps live objects in its table (its
    # entry_type is then what this returns); None: entries are written as they are.
    entry_out: ClassVar[Callable[[Any, Any], Any] | None] = None
    # The engine hooks a kind implements (declared subscriptions: events of its streams, quality
    # outcomes, tampering, rejected sources); derived from the methods a subclass overrides.
    subscriptions: ClassVar[frozenset[str]] = frozenset()
    _HOOKS: ClassVar[tuple[str, ...]] = ("on_event", "on_quality", "on_tampering", "on_rejected_source")

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.subscriptions = frozenset(h for h in RuleKind._HOOKS if getattr(cls, h) is not getattr(RuleKind, h))

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = self._validate(dict(spec.params))
        self._last_sweep: float | None = None
        self._table: tuple[Any, Table[Any, Any]] | None = None  # (store, its table of this rule)
        self.check()

    # -- configuration -----------------------------------------------------------------------------
    @classmethod
    def example_params(cls) -> dict[str, Any]:
        """Smallest params that construct this kind (values for REQUIRED params); used by contract tests."""
        return {}

    def _validate(self, params: dict[str, Any]) -> dict[str, Any]:
        schema = self.params_schema
        for key in params:
            if key not in schema:
                raise self.error(key, f"unknown parameter; known: {', '.join(sorted(schema)) or 'none'}")
        out: dict[str, Any] = {}
        for key, (typ, default) in schema.items():
            if key in params:
                value = params[key]
                if not _type_ok(value, typ):
                    raise self.error(key, f"expected {_type_name(typ)}, got {value!r}")
                types = typ if isinstance(typ, tuple) else (typ,)
                numeric = float in types and isinstance(value, int) and not isinstance(value, bool)
                out[key] = float(value) if numeric else value
            elif default is REQUIRED:
                raise self.error(key, "required")
            else:
                out[key] = copy.deepcopy(default)  # a list/dict default is never shared between rules
        return out

    def error(self, param: str, message: str) -> ValueError:
        """The error of one param: ``FILE: rules[i] (Alert).params.PARAM: why`` for a rule from a manifest
        (``RuleSpec.source``), like every other manifest error; else naming the rule and its kind."""
        if self.spec.source:
            return ValueError(f"{self.spec.source}.params.{param}: {message}")
        return ValueError(f"rule {self.name!r} (kind {self.kind!r}) param {param!r}: {message}")

    def check(self) -> None:
        """Range checks of ``self.params``; raise ``self.error(param, why)``."""

    def _positive(self, *names: str) -> None:
        for n in names:
            if not self.params[n] > 0:
                raise self.error(n, f"must be > 0, got {self.params[n]!r}")

    @property
    def horizon_s(self) -> float:
        """Event-time seconds an entity's state is kept after its last update (0 = the kind keeps none)."""
        return 0.0

    @property
    def sweep_every_s(self) -> float:
        """Event-time seconds between sweeps: entries live at most horizon_s + this."""
        return max(self.min_sweep_every_s, self.horizon_s / 4.0)

    @property
    def open_stale_s(self) -> float:
        """An entity reported active but not reported on for this long is reported recovered."""
        return max(self.spec.resolve_after_s, 3600.0)

    # -- state ---------------------------------------------------------------------------------------
    @classmethod
    def entry_type_of(cls, key: Any) -> Any:
        """The declared type of the kind's entry at ``key`` (not an open condition)."""
        if cls.entry_type is None:
            raise StateFormatError(f"rule kind {cls.kind!r} keeps no state under key {key!r}")
        return cls.entry_type

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        """The kind's entry at ``key`` as the pickled format held it (plain data) -> its version-1 shape."""
        return plain

    @classmethod
    def state_codec(cls) -> Codec:
        """The codec of this kind's rule tables (one per kind, built once)."""
        codec = cls.__dict__.get("_codec")
        if codec is None:
            def type_of(key: Any) -> Any:
                return Condition if _is_open(key) else cls.entry_type_of(key)

            def v0(key: Any, plain: Any) -> Any:
                if _is_open(key):
                    return {"active": plain[0], "ts": plain[1]}  # format 0: (active, ts)
                return cls.entry_v0(key, plain)

            out = cls.entry_out
            to_plain = None if out is None else (lambda key, value: value if _is_open(key) else out(key, value))
            codec = Codec(f"rule:{cls.kind}", by_key=type_of, migrations={0: v0}, to_plain=to_plain)
            cls._codec = codec  # type: ignore[attr-defined]
        return codec

    def table(self, ctx: Context) -> Table[Any, Any]:
        # Called for most events: keep the table of the store last asked for (a store never replaces
        # its Table objects, a restore refills them in place).
        cached = self._table
        if cached is not None and cached[0] is ctx.store:
            return cached[1]
        table = ctx.store.table(state_table(self.spec.name), self.state_codec())
        self._table = (ctx.store, table)
        return table

    def restore(self, ctx: Context) -> None:
        """Declare the rule's table now: its restored state is checked at start-up, not at the first event."""
        self.table(ctx)

    def registry(self, ctx: Context) -> SourceRegistry | None:
        reg = ctx.rule.sources
        return reg if isinstance(reg, SourceRegistry) else None

    def signal(
        self, ctx: Context, entity: dict[str, str], ts: float, *, active: bool, value: float = 0.0,
        summary: str = "", description: str = "",
    ) -> None:
        ctx.signals.signal(
            self.name, entity, ts, active=active, value=value, summary=summary, description=description
        )

    def report(
        self, ctx: Context, entity: dict[str, str], ts: float, *, active: bool, value: float = 0.0,
        summary: str = "", description: str = "",
    ) -> None:
        """Report a two-way condition: active always; inactive only for entities reported active before,
        repeated until it has held ``resolve_after_s`` (so the lifecycle sees the recovery complete)."""
        table = self.table(ctx)
        key = (_OPEN, *sorted(entity.items()))
        if active:
            table[key] = Condition(active=True, ts=ts)
        else:
            st = table.get(key)
            if st is None:
                return
            if st.active:
                table[key] = Condition(active=False, ts=ts)
                since = ts
            else:
                since = st.ts
            if ts - since >= self.spec.resolve_after_s:
                del table[key]
        self.signal(ctx, entity, ts, active=active, value=value, summary=summary, description=description)

    def sweep(self, now_ts: float, ctx: Context) -> None:
        """Evict expired entity state; close open entities nobody reported on for ``open_stale_s``."""
        table = self.table(ctx)
        stale = self.open_stale_s
        for key, value in list(table.items()):
            if _is_open(key):
                active, ts = value.active, value.ts
                entity = dict(key[1:])
                if active and now_ts - ts > stale:
                    # Its source of updates went away while active (a series stopped): recover, do not fire forever.
                    table[key] = Condition(active=False, ts=now_ts)
                    self.signal(ctx, entity, now_ts, active=False, description="no update within horizon")
                elif not active and now_ts - ts >= self.spec.resolve_after_s:
                    del table[key]
                    self.signal(ctx, entity, now_ts, active=False)
            elif self.expired(key, value, now_ts, ctx):
                del table[key]

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        """Whether a (non-open) entry may be dropped at watermark ``now_ts``."""
        return False

    # -- hooks -------------------------------------------------------------------------------------------
    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        """An accepted event of ``stream``."""

    def on_window(
        self, measurement: str, tags: dict[str, str], fields: dict[str, Any], window_start: float, ctx: Context
    ) -> None:
        """A KPI window (epoch-s start) closed by watermark."""

    def on_quality(self, stream: str, outcome: str, ts: float, source: str | None, ctx: Context) -> None:
        """Every event outcome; ``ts`` = event time if known, else the stream's watermark."""

    def on_quality_many(self, stream: str, outcome: str, items: list[tuple[float, str | None]], ctx: Context) -> None:
        """``on_quality`` for consecutive events of one outcome (a message's accepted events), in order."""
        for ts, source in items:
            self.on_quality(stream, outcome, ts, source, ctx)

    def retention_stream(self, ctx: Context) -> str | None:
        """The stream whose clock this rule's state is expired on (None: the rules' clock alone)."""
        stream = self.params.get("stream")
        return stream if isinstance(stream, str) else None

    def retention_clock(self, now_ts: float, ctx: Context) -> float | None:
        """Event time this rule's state is expired on: the rules' clock, but never past its own stream's clock.

        State retention for a stream is measured on that stream's own clock (``ctx.rule.stream_clocks``, its
        watermark): a stream read behind, or another stream's events dated far ahead, cannot expire it.
        None: the stream has no clock yet (nothing expires).
        """
        stream = self.retention_stream(ctx)
        clocks = ctx.rule.stream_clocks
        if stream is None or clocks is None:
            return now_ts
        own = clocks.get(stream)
        return None if own is None else min(now_ts, own)

    def on_tick(self, now_ts: float, ctx: Context) -> None:
        """The rules' clock is ``now_ts``; sweeps state every ``sweep_every_s`` of the retention clock.

        One sweep whatever the jump of the clock: its cost is the rule's state, not the time crossed.
        """
        at = self.retention_clock(now_ts, ctx)
        if at is None:
            return
        last = self._last_sweep
        if last is None or at - last >= self.sweep_every_s:
            self._last_sweep = at
            self.sweep(at, ctx)

    def on_tampering(self, stream: str, event_id: str, source: str, ts: float, ctx: Context) -> None:
        """An ``event_id`` seen before arrived with different content."""

    def on_rejected_source(self, stream: str, source: str, reason: str, ts: float, ctx: Context) -> None:
        """An event was dead-lettered because its source is unlisted or its signature does not verify."""


def _stream_ok(params: dict[str, Any], stream: str) -> bool:
    want = params.get("stream")
    return want is None or want == stream


# ---------------------------------------------------------------------------------------------------- cards
class LastTap(StateStruct, kw_only=True, gc=False):
    """impossible_travel: a card's latest tap with a location."""

    ts: float  # event time, epoch s
    lat: float
    lon: float
    source: str


@register("impossible_travel")
class ImpossibleTravel(RuleKind):
    """One card's consecutive taps imply travel faster than ``max_speed_kmh`` over more than ``min_km``.

    Tap location: the tap's lat/lon, else the source registry's reader or station location; taps with
    no location are skipped. Value: the implied speed in km/h. Entity: {"card": pseudonym}.
    """

    params_schema = {
        "max_speed_kmh": (float, 150.0),
        "min_km": (float, 1.0),
        "stream": (str, "traffic.card-taps"),
        "horizon_s": (float, 6 * 3600.0),  # a card's last tap is forgotten after this (by then any trip is possible)
    }
    one_shot = True
    entry_type = LastTap

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        ts, lat, lon, source = plain  # format 0: (ts, lat, lon, source)
        return {"ts": ts, "lat": lat, "lon": lon, "source": source}

    def check(self) -> None:
        self._positive("max_speed_kmh", "horizon_s")
        if self.params["min_km"] < 0:
            raise self.error("min_km", "must be >= 0")

    @property
    def horizon_s(self) -> float:
        return float(self.params["horizon_s"])

    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        if stream != self.params["stream"]:
            return
        e = ev.event
        card = getattr(e, "card_id", None)
        if not card:
            return
        lat, lon = getattr(e, "lat", None), getattr(e, "lon", None)
        if lat is None or lon is None:
            reg = self.registry(ctx)
            loc = reg.location(ev.source, getattr(e, "station", None)) if reg is not None else None
            if loc is None:
                return
            lat, lon = loc
        table = self.table(ctx)
        prev = table.get(card)
        if prev is not None:
            pts, plat, plon, psrc = prev.ts, prev.lat, prev.lon, prev.source
            km = haversine_km(plat, plon, lat, lon)
            if km > self.params["min_km"]:
                dt = abs(ev.ts - pts)
                # Taps in the same second at far-apart readers: as fast as anything we can measure.
                speed = km / max(dt, 1.0) * 3600.0
                if speed > self.params["max_speed_kmh"]:
                    # Evident at the later of the two taps, whichever was read first (partitions).
                    self.signal(
                        ctx, {"card": card}, max(ev.ts, pts), active=True, value=round(speed, 1),
                        summary=f"card travelled {km:.1f} km in {dt:.0f} s ({speed:.0f} km/h)",
                        description=f"from {psrc} to {ev.source}; limit {self.params['max_speed_kmh']:g} km/h",
                    )
        if prev is None or ev.ts >= prev.ts:
            table[card] = LastTap(ts=ev.ts, lat=float(lat), lon=float(lon), source=ev.source)

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        return now_ts - value.ts > self.horizon_s


@register("declined_burst")
class DeclinedBurst(RuleKind):
    """At least ``count`` taps of one card with result ``result`` within ``window_s``. Value: the count."""

    params_schema = {
        "count": (int, 5),
        "window_s": (float, 600.0),
        "stream": (str, "traffic.card-taps"),
        "result": (str, "declined"),
    }
    one_shot = True
    entry_type = list[float]  # a card's recent tap times with that result, event time epoch s, ascending

    def check(self) -> None:
        self._positive("count", "window_s")

    @property
    def horizon_s(self) -> float:
        return float(self.params["window_s"])

    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        if stream != self.params["stream"]:
            return
        e = ev.event
        card = getattr(e, "card_id", None)
        if not card or getattr(e, "result", None) != self.params["result"]:
            return
        window = self.params["window_s"]
        table = self.table(ctx)
        times = list(table.get(card, ()))
        times.append(ev.ts)
        newest = max(times)
        times = sorted(t for t in times if t > newest - window)
        # Bounded: more than `count` inside the window tells nothing more.
        times = times[-self.params["count"] * 2 :]
        table[card] = times
        # The burst is complete at the event time of the count-th tap inside one window, whatever order
        # the taps were read in (a card's taps can sit on different partitions).
        count = self.params["count"]
        done_at = None
        for i in range(count - 1, len(times)):
            if times[i] - times[i - count + 1] < window:
                done_at = times[i]
                break
        if done_at is not None:
            n = sum(1 for t in times if done_at - window < t <= done_at)
            self.signal(
                ctx, {"card": card}, done_at, active=True, value=float(n),
                summary=f"{n} {self.params['result']} taps within {window / 60:g} min",
                description=f"last at {ev.source}",
            )

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        return not value or now_ts - max(value) > self.horizon_s


# --------------------------------------------------------------------------------------------- health cards
@register("concurrent_use")
class ConcurrentUse(RuleKind):
    """One card's ``event_kind`` events at >= ``min_hospitals`` different hospitals within ``window_s``.

    Only events with result "ok" count. Value: number of hospitals. Entity: {"card": pseudonym}.
    """

    params_schema = {
        "window_s": (float, 1800.0),
        "min_hospitals": (int, 2),
        "stream": (str, "health.card-events"),
        "event_kind": (str, "register"),
    }
    one_shot = True
    entry_type = dict[str, float]  # a card's latest event time per hospital

    def check(self) -> None:
        self._positive("window_s")
        if self.params["min_hospitals"] < 2:
            raise self.error("min_hospitals", "must be >= 2")

    @property
    def horizon_s(self) -> float:
        return float(self.params["window_s"])

    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        if stream != self.params["stream"]:
            return
        e = ev.event
        card, hospital = getattr(e, "card_id", None), getattr(e, "hospital", None)
        if not card or not hospital or getattr(e, "kind", None) != self.params["event_kind"]:
            return
        if getattr(e, "result", "ok") != "ok":
            return
        window = self.params["window_s"]
        table = self.table(ctx)
        # Latest time per hospital: bounded by the number of hospitals, not of registrations.
        seen: dict[str, float] = dict(table.get(card, {}))
        seen[hospital] = max(seen.get(hospital, ev.ts), ev.ts)
        newest = max(seen.values())
        seen = {h: t for h, t in seen.items() if t > newest - window}
        table[card] = seen
        near = sorted(h for h, t in seen.items() if abs(t - ev.ts) < window)
        if len(near) >= self.params["min_hospitals"]:
            # Evident at the latest of the registrations involved, whichever was read first (partitions).
            at = max(seen[h] for h in near)
            self.signal(
                ctx, {"card": card}, at, active=True, value=float(len(near)),
                summary=f"card used at {len(near)} hospitals within {window / 60:g} min",
                description="hospitals: " + ", ".join(near),
            )

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        return not value or now_ts - max(value.values()) > self.horizon_s


class DayCount(StateStruct, kw_only=True):
    """registration_hoarding: one card's events on one local calendar day."""

    count: int
    day_end: float  # end of the day, epoch s
    times: list[float] = []  # the earliest max_per_day + 1 event times, ascending


@register("registration_hoarding")
class RegistrationHoarding(RuleKind):
    """One card makes more than ``max_per_day`` ``event_kind`` events (result ok) in a calendar day in ``tz``.

    Value: the day's count so far. Entity: {"card": pseudonym}.
    """

    params_schema = {
        "max_per_day": (int, 6),
        "tz": (str, CITY_TZ_NAME),
        "stream": (str, "health.card-events"),
        "event_kind": (str, "register"),
        "grace_s": (float, 3600.0),  # late events of a day still count this long after it ended
    }
    one_shot = True
    entry_type = DayCount

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        # format 0: (count, day end, times); older states lacked the times
        return {"count": plain[0], "day_end": plain[1], "times": plain[2] if len(plain) > 2 else []}

    def check(self) -> None:
        self._positive("max_per_day")
        if self.params["grace_s"] < 0:
            raise self.error("grace_s", "must be >= 0")
        try:
            self._tz = ZoneInfo(self.params["tz"])
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.error("tz", f"unknown time zone {self.params['tz']!r}") from exc

    @property
    def horizon_s(self) -> float:
        return 86400.0

    def _day(self, ts: float) -> tuple[str, float]:
        local = datetime.fromtimestamp(ts, self._tz)
        day = local.date()
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), self._tz).timestamp()
        return day.isoformat(), end

    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        if stream != self.params["stream"]:
            return
        e = ev.event
        card = getattr(e, "card_id", None)
        if not card or getattr(e, "kind", None) != self.params["event_kind"]:
            return
        if getattr(e, "result", "ok") != "ok":
            return
        day, end = self._day(ev.ts)
        table = self.table(ctx)
        key = (card, day)
        limit = self.params["max_per_day"]
        old = table.get(key)
        count = (old.count if old is not None else 0) + 1
        # The earliest limit+1 registration times: the day's limit was passed at the (limit+1)-th of them
        # in event time, whatever order partitions delivered them in.
        times = sorted([*(old.times if old is not None else ()), ev.ts])[: limit + 1]
        table[key] = DayCount(count=count, day_end=end, times=times)
        if count > limit:
            self.signal(
                ctx, {"card": card}, times[limit] if len(times) > limit else ev.ts, active=True,
                value=float(count),
                summary=f"{count} registrations on {day} (limit {self.params['max_per_day']})",
                description=f"latest at {getattr(e, 'hospital', '?')}",
            )

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        return now_ts > value.day_end + self.params["grace_s"]


# ------------------------------------------------------------------------------------------------ security
@register("tampering")
class Tampering(RuleKind):
    """An ``event_id`` arrived again with different content. Entity {"source", "stream"}; value 1."""

    params_schema = {"stream": ((str, None), None)}
    one_shot = True

    def on_tampering(self, stream: str, event_id: str, source: str, ts: float, ctx: Context) -> None:
        if not _stream_ok(self.params, stream):
            return
        self.signal(
            ctx, {"source": str(source), "stream": stream}, ts, active=True, value=1.0,
            summary=f"event {event_id} re-sent with different content",
            description=f"event_id={event_id} stream={stream}",
        )


class _RejectedSource(RuleKind):
    # reason code the engine reports -> what happened to the event (the kind's summary)
    reasons: ClassVar[dict[str, str]] = {}
    params_schema = {"stream": ((str, None), None)}
    one_shot = True

    def on_rejected_source(self, stream: str, source: str, reason: str, ts: float, ctx: Context) -> None:
        what = self.reasons.get(reason)
        if what is None or not _stream_ok(self.params, stream):
            return
        self.signal(
            ctx, {"source": str(source), "stream": stream}, ts, active=True, value=1.0,
            summary=what, description=f"source={source} stream={stream}",
        )


@register("untrusted_source")
class UntrustedSource(_RejectedSource):
    """An event from a source the registry does not list (for that stream): dead-lettered
    (CITYOPS_UNKNOWN_SOURCES=enforce) or processed and counted (observe). One alert per source and stream."""

    reasons = {"untrusted_source": "event dead-lettered: untrusted source",
               "untrusted_source_observed": "event processed: source not in the registry (observe mode)"}


@register("bad_signature")
class BadSignature(_RejectedSource):
    """An event from a must-sign source whose ``sig`` does not verify; the event was dead-lettered."""

    reasons = {"bad_signature": "event dead-lettered: bad signature"}


# ---------------------------------------------------------------------------------------------- anomalies
@register("kpi_anomaly")
class KpiAnomaly(RuleKind):
    """One detector per series of ``measurement``.``field``, fed once per closed window.

    Series: the window's values of ``tags`` (None = all its tags); ``match`` keeps only windows whose
    tags equal it. Every series runs ``KpiDetector`` (the detector ``cityops nab-detect`` scores);
    ``detector``: its arguments, e.g. ``{"noise": "poisson", "min_expected": 5}`` for count fields;
    ``channels`` (any of "art", "cad", "seasonal", "range", "profile") defaults to art, seasonal and profile,
    the configuration ``cityops nab-detect`` scores ("cad", CAD OSE, is opt-in: see KpiDetector).
    ``model``: "kpi" (the default: channels as configured), or a preset kept for older manifests,
    "profile" (channels [profile]) or "seasonal" (channels [seasonal, range]), which overrides
    ``detector.channels``. ``calendar``: "weekdays" (default) gives the profile separate weekday and
    weekend profiles in ``timezone``'s local time (detector ``weekend``/``utc_offset_s``); "none" does not.
    ``min_history``: points learned before any alert
    (None = 2880 when the seasonal channel is on, 30 otherwise). Entity: the series tags + "direction"
    (high|low), so a spike and a collapse are separate alerts. Value: the KPI value.
    """

    params_schema = {
        "measurement": (str, REQUIRED),
        "field": (str, REQUIRED),
        "tags": ((list, None), None),
        "match": (dict, {}),
        "model": (str, "kpi"),
        "sensitivity": (float, 1.0),
        "min_history": ((int, None), None),
        "horizon_s": (float, 8 * 86400.0),  # a series silent this long is forgotten
        "stale_s": (float, 3600.0),  # an open alert of a series without windows this long is recovered
        "detector": (dict, {}),
        # City KPIs follow the local calendar: weekdays and weekends get profiles of their own.
        "calendar": (str, "weekdays"),  # "weekdays" (weekday/weekend profiles) | "none"
        "timezone": (str, DEFAULT_TZ),  # the city's: where its days begin
    }
    # ("det", series) -> the series' KpiDetector.to_state(): named fields, versioned by the detector itself.
    # In memory the entry is the live KpiDetector (a restored entry: its state, until the series' next
    # window); it is written by to_state once per commit that follows a change, not once per window.
    entry_type = dict[str, Any]
    entry_out = staticmethod(lambda key, value: value.to_state() if isinstance(value, KpiDetector) else value)

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        sub = plain.get("state") if isinstance(plain, dict) else None
        err = sub.get("err") if isinstance(sub, dict) else None
        if isinstance(err, list):  # format 0 kept the skill tracker as [err_s, err_p, err_n]
            sub["err"] = {"err_s": err[0], "err_p": err[1], "err_n": err[2]}
        return plain

    @classmethod
    def example_params(cls) -> dict[str, Any]:
        return {"measurement": "metro_line", "field": "taps_in"}

    def check(self) -> None:
        self._positive("sensitivity", "horizon_s", "stale_s")
        if self.params["model"] not in self._MODELS:
            raise self.error("model", f"expected one of {', '.join(sorted(self._MODELS))}, got {self.params['model']!r}")
        if self.params["min_history"] is not None and self.params["min_history"] < 1:
            raise self.error("min_history", "must be >= 1")
        if self.params["tags"] is not None and not all(isinstance(t, str) for t in self.params["tags"]):
            raise self.error("tags", "expected a list of tag names")
        if self.params["calendar"] not in ("weekdays", "none"):
            raise self.error("calendar", f"expected 'weekdays' or 'none', got {self.params['calendar']!r}")
        try:
            ZoneInfo(self.params["timezone"])
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise self.error("timezone", f"unknown time zone {self.params['timezone']!r}") from None
        try:
            self._new()
        except (TypeError, ValueError) as exc:
            raise self.error("detector", str(exc)) from exc

    @property
    def horizon_s(self) -> float:
        return float(self.params["horizon_s"])

    @property
    def sweep_every_s(self) -> float:
        return self.min_sweep_every_s  # few series, and stale alerts must not wait days for a sweep

    def retention_stream(self, ctx: Context) -> str | None:
        """The stream the rule's measurement is computed from (``ctx.rule.kpi_stream``), if known."""
        stream = ctx.rule.kpi_stream.get(self.params["measurement"])
        return stream if isinstance(stream, str) else None

    @property
    def open_stale_s(self) -> float:
        return max(self.spec.resolve_after_s, float(self.params["stale_s"]))

    # model -> the channels it forces (None: as configured in ``detector``)
    _MODELS: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "kpi": None, "profile": ("profile",), "seasonal": ("seasonal", "range"),
    }

    def _new(self) -> KpiDetector:
        kw = dict(self.params["detector"])
        forced = self._MODELS[self.params["model"]]
        if forced is not None:
            kw["channels"] = forced
        chans = kw.get("channels", KpiDetector.DEFAULT_CHANNELS)
        hist = self.params["min_history"]
        if hist is None:
            # The seasonal channel needs two days of points before its own flags count: its bins for the
            # first hours are learned while its level is still settling, and for a day after warm-up it
            # would judge against them. The profile channel judges only times of day seen a day
            # before anyway, so 30 points are enough for it.
            hist = 2880 if "seasonal" in ([chans] if isinstance(chans, str) else list(chans)) else 30
            kw.setdefault("profile_warmup_pts", 30)
        kw.setdefault("warmup_pts", hist)
        for k, v in self.calendar_kwargs().items():
            kw.setdefault(k, v)
        return KpiDetector(sensitivity=self.params["sensitivity"], **kw)

    def calendar_kwargs(self) -> dict[str, Any]:
        """The detector arguments ``calendar`` and ``timezone`` stand for (also used by `nab-detect --rule`)."""
        if self.params["calendar"] != "weekdays":
            return {}
        # A fixed offset (the zone's standard one): Chinese cities have no daylight saving time.
        off = ZoneInfo(self.params["timezone"]).utcoffset(datetime(2026, 1, 1))
        return {"weekend": True, "utc_offset_s": off.total_seconds() if off is not None else 0.0}

    def _detector(self, table: Table[Any, Any], key: Any) -> KpiDetector:
        stored = table.get(key)
        if stored is None:
            return self._new()
        if isinstance(stored, KpiDetector):
            det = stored
        else:
            try:
                det = KpiDetector.from_state(stored)  # also adopts a SeasonalDetector/ProfileDetector state
            except (TypeError, ValueError, KeyError):
                return self._new()
        # State of other channels (the rule's model or channels were switched): start over rather than keep it.
        return det if det.channels == self._channels else self._new()

    @functools.cached_property
    def _channels(self) -> tuple[str, ...]:
        """The detector channels this rule's configuration runs."""
        forced = self._MODELS[self.params["model"]]
        chans = forced if forced is not None else self.params["detector"].get("channels", KpiDetector.DEFAULT_CHANNELS)
        chans = (chans,) if isinstance(chans, str) else chans
        return tuple(dict.fromkeys(chans))

    def on_window(
        self, measurement: str, tags: dict[str, str], fields: dict[str, Any], window_start: float, ctx: Context
    ) -> None:
        p = self.params
        if measurement != p["measurement"]:
            return
        for k, v in p["match"].items():
            if tags.get(k) != v:
                return
        value = fields.get(p["field"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        names = p["tags"] if p["tags"] is not None else sorted(tags)
        series = tuple((k, str(tags.get(k, ""))) for k in names)
        key = ("det", series)
        table = self.table(ctx)
        det = self._detector(table, key)
        if det.last_ts is not None and float(window_start) <= det.last_ts:
            # A window judged already (or older than one judged), delivered again: a detector learns
            # in time order, and repeats of one odd value are not a persistent run.
            return
        score, direction, anomalous = det.update(float(window_start), float(value))
        table[key] = det  # marks it changed: the commit writes det.to_state()
        base = dict(series)
        for d in ("high", "low"):
            active = anomalous and d == direction
            self.report(
                ctx, {**base, "direction": d}, float(window_start), active=active, value=float(value),
                summary=(f"{p['measurement']}.{p['field']} unusually {d}: {value:g}" if active else ""),
                description=(f"score={score:.3f}" if active else ""),
            )

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        if isinstance(value, KpiDetector):
            last = value.last_ts
        else:
            st = value["state"]
            # KpiDetector state: one sub-state per enabled channel; a legacy detector state: flat.
            subs = [x for x in (st.get("seasonal"), st.get("profile"), st.get("art"), st.get("cad"))
                    if isinstance(x, dict)] or [st]
            seen = [x["last_ts"] for x in subs if x.get("last_ts") is not None]
            last = max(seen) if seen else None
        return last is None or now_ts - last > self.horizon_s


# ----------------------------------------------------------------------------------- silence and quality
class Silence(StateStruct, kw_only=True, gc=False):
    """source_silent: a candidate silence of a source, event time epoch s."""

    begin: float
    end: float


@register("source_silent")
class SourceSilent(RuleKind):
    """An expected source (source registry) sends nothing for longer than its ``max_gap_s`` while in service.

    Silence counts from the latest of: its last event (any outcome), the start of its current service
    window, the engine's start, so a source never heard from is caught too. Evaluated on ticks at most
    every ``check_every_s``. Entity {"source", "stream"}; value: seconds of silence. Needs
    ``ctx.rule.sources``; without a registry the rule does nothing.
    """

    params_schema = {
        "stream": ((str, None), None),
        "max_gap_s": ((float, None), None),  # overrides every source's own max_gap_s
        "check_every_s": (float, 60.0),
    }

    @classmethod
    def entry_type_of(cls, key: Any) -> Any:
        # ("seen", source) -> last event time; ("gaps", source) -> candidate silences; ("start",) -> time
        # the rule first ran (epoch s)
        kind = key[0] if isinstance(key, tuple) and key else None
        if kind == "gaps":
            return list[Silence]
        if kind in ("seen", "start"):
            return float
        raise StateFormatError(f"rule kind 'source_silent' keeps no state under key {key!r}")

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        if key[0] == "gaps":  # format 0: [[begin, end], ...]
            return [{"begin": b, "end": e} for b, e in plain]
        return plain

    def check(self) -> None:
        self._positive("check_every_s")
        if self.params["max_gap_s"] is not None:
            self._positive("max_gap_s")

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)
        self._last_check: float | None = None

    def on_quality(self, stream: str, outcome: str, ts: float, source: str | None, ctx: Context) -> None:
        self.on_quality_many(stream, outcome, [(ts, source)], ctx)

    def on_quality_many(self, stream: str, outcome: str, items: list[tuple[float, str | None]], ctx: Context) -> None:
        if not _stream_ok(self.params, stream):
            return
        reg = self.registry(ctx)
        if reg is None:
            return
        table = self.table(ctx)
        want = self.params["stream"]
        for ts, source in items:
            if source is None or source not in reg:  # unlisted names must not grow our state
                continue
            key = ("seen", source)
            last = table.get(key)
            info = reg.get(source)
            if info is not None and info.expected and (want is None or want == info.stream):
                self._track_gaps(source, info, last, ts, table, reg)
            if last is None or ts > last:
                table[key] = ts

    def _track_gaps(self, source: str, info: Any, last: float | None, ts: float, table: Table[Any, Any],
                    reg: SourceRegistry) -> None:
        """Remember silences seen in arrival order; ticks confirm them once every partition is past.

        When event time is read much faster than it passed (a backlog, a replay), a whole silence can fall
        between two ticks; ticks alone would never see it. A silence is a candidate until the rules' clock
        (the slowest partition) passes its end: an event read later from a lagging partition can still
        fall inside it and split it.
        """
        gap = self.params["max_gap_s"] or info.max_gap_s
        gkey = ("gaps", source)
        gaps: list[Silence] = table.get(gkey) or []
        changed = False
        for g in list(gaps):
            if g.begin < ts < g.end:  # an event inside a candidate silence: it was not silent then
                gaps.remove(g)
                gaps.extend([x for x in (Silence(begin=g.begin, end=ts), Silence(begin=ts, end=g.end))
                             if x.end - x.begin > gap])
                changed = True
        if last is not None and ts - last > gap:  # begin >= last: shorter gaps need no service hours
            svc = reg.service_start(source, ts)
            begin = max(last, svc) if svc is not None else last
            if ts - begin > gap and len(gaps) < 16:
                gaps.append(Silence(begin=begin, end=ts))
                changed = True
        if changed:
            table[gkey] = sorted(gaps, key=lambda g: (g.begin, g.end))

    def _confirm_gaps(self, now_ts: float, ctx: Context) -> None:
        table = self.table(ctx)
        for key in [k for k in table.keys() if isinstance(k, tuple) and k and k[0] == "gaps"]:
            gaps = table.get(key) or []
            keep = []
            source = key[1]
            info = self.registry(ctx).get(source) if self.registry(ctx) is not None else None
            clock = now_ts
            if info is not None and ctx.rule.stream_clocks is not None:
                clock = ctx.rule.stream_clocks.get(info.stream, float("-inf"))
            for g in gaps:
                begin, end = g.begin, g.end
                if end > min(now_ts, clock) or info is None:
                    keep.append(g)
                    continue
                gap = self.params["max_gap_s"] or info.max_gap_s
                if not self.registry(ctx).in_service(source, begin + gap):
                    continue  # service ended before the gap was exceeded: closing time, not silence
                entity = {"source": source, "stream": info.stream}
                silence = end - begin
                self.report(ctx, entity, begin + gap, active=True, value=round(silence, 1),
                            summary=f"no events from {source} for {silence / 60:.0f} min",
                            description=f"allowed gap {gap:g} s; silent from {begin:.0f} to {end:.0f}")
                self.report(ctx, entity, end, active=False, value=0.0)
            if keep != gaps:
                if keep:
                    table[key] = keep
                else:
                    del table[key]

    def on_tick(self, now_ts: float, ctx: Context) -> None:
        if self.registry(ctx) is not None:
            self._confirm_gaps(now_ts, ctx)
        self._check_sources(now_ts, ctx)
        super().on_tick(now_ts, ctx)

    def _check_sources(self, now_ts: float, ctx: Context) -> None:
        reg = self.registry(ctx)
        if reg is None:
            return
        table = self.table(ctx)
        start = ctx.rule.engine_start_ts
        if start is None:
            start = table.get(("start",))
            if start is None:
                start = table[("start",)] = now_ts
        if self._last_check is not None and 0 <= now_ts - self._last_check < self.params["check_every_s"]:
            return
        self._last_check = now_ts
        want = self.params["stream"]
        for sid in reg.expected():
            info = reg.get(sid)
            if info is None or (want is not None and info.stream != want):
                continue
            entity = {"source": sid, "stream": info.stream}
            # The source's own stream clock: a stream being read behind the others is not silent.
            at = now_ts
            if ctx.rule.stream_clocks is not None:
                at = min(now_ts, ctx.rule.stream_clocks.get(info.stream, float("-inf")))
                if at == float("-inf"):
                    continue  # its stream is not being read yet: no verdict
            if not reg.in_service(sid, at):
                self.report(ctx, entity, at, active=False)
                continue
            gap = self.params["max_gap_s"] or info.max_gap_s
            ref = float(start)
            last = table.get(("seen", sid))
            if last is not None:
                ref = max(ref, last)
            svc = reg.service_start(sid, at)
            if svc is not None:
                ref = max(ref, svc)
            silence = at - ref
            active = silence > gap
            self.report(
                ctx, entity, at, active=active, value=round(silence, 1),
                summary=(f"no events from {sid} for {silence / 60:.0f} min" if active else ""),
                description=(f"allowed gap {gap:g} s; last event at {last}" if active else ""),
            )

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        if key[0] in ("seen", "gaps"):
            reg = self.registry(ctx)
            return reg is not None and key[1] not in reg
        return False


class BucketCounts(StateStruct, kw_only=True, gc=False):
    """invalid_share: events of one bucket."""

    accepted: int = 0
    bad: int = 0  # events with one of the rule's bad_outcomes


class ShareState(StateStruct, kw_only=True):
    """invalid_share: one stream's buckets (start, epoch s -> counts) and how far it was judged."""

    buckets: dict[float, BucketCounts] = {}
    done: float | None = None  # end of the last window judged
    first: float  # start of the earliest bucket seen


@register("invalid_share")
class InvalidShare(RuleKind):
    """A stream's share of ``bad_outcomes`` among (accepted + bad) exceeds ``max_share`` over ``window_s``.

    Counted in ``bucket_s`` buckets of event time; on ticks, every trailing window that ends at a bucket
    boundary the rules' clock has passed is judged, in order, once a whole window of history exists; no
    verdict below ``min_events``. Entity {"stream"}; value: the share.
    """

    params_schema = {
        "max_share": (float, 0.05),
        "window_s": (float, 300.0),
        "min_events": (int, 20),
        "bucket_s": (float, 10.0),
        "stream": ((str, None), None),
        "bad_outcomes": (list, ["invalid"]),
    }
    entry_type = ShareState  # keyed by stream

    @classmethod
    def entry_v0(cls, key: Any, plain: Any) -> Any:
        buckets = {b: {"accepted": c[0], "bad": c[1]} for b, c in plain["buckets"].items()}  # format 0: [good, bad]
        return {"buckets": buckets, "done": plain["done"], "first": plain["first"]}

    def check(self) -> None:
        self._positive("window_s", "bucket_s")
        if not 0 <= self.params["max_share"] < 1:
            raise self.error("max_share", "must be in [0, 1)")
        if self.params["min_events"] < 1:
            raise self.error("min_events", "must be >= 1")
        bad = self.params["bad_outcomes"]
        if not bad or any(o not in OUTCOMES or o == "accepted" for o in bad):
            raise self.error("bad_outcomes", f"expected a non-empty list of {', '.join(OUTCOMES[1:])}")
        if self.params["window_s"] < self.params["bucket_s"]:
            raise self.error("window_s", "must be >= bucket_s")

    def __init__(self, spec: RuleSpec) -> None:
        super().__init__(spec)

    @property
    def horizon_s(self) -> float:
        return float(self.params["window_s"])

    def _bucket(self, ts: float) -> float:
        b = self.params["bucket_s"]
        return math.floor(ts / b) * b

    def on_quality(self, stream: str, outcome: str, ts: float, source: str | None, ctx: Context) -> None:
        self.on_quality_many(stream, outcome, [(ts, source)], ctx)

    def on_quality_many(self, stream: str, outcome: str, items: list[tuple[float, str | None]], ctx: Context) -> None:
        if not _stream_ok(self.params, stream) or not items:
            return
        if outcome == "accepted":
            good = True
        elif outcome in self.params["bad_outcomes"]:
            good = False
        else:
            return
        table = self.table(ctx)
        state = table.get(stream)
        if state is None:
            state = ShareState(first=self._bucket(items[0][0]))
        size = self.params["bucket_s"]
        window = self.params["window_s"]
        buckets = state.buckets
        changed = False
        for ts, _source in items:
            b = math.floor(ts / size) * size
            if b < state.first and state.done is None:
                state.first = b  # read out of order: history starts at the earliest event seen
            done = state.done
            if done is not None and b < done - window:
                continue  # older than any window still to be judged
            counts = buckets.get(b)
            if counts is None:
                counts = buckets[b] = BucketCounts()
            if good:
                counts.accepted += 1
            else:
                counts.bad += 1
            changed = True
        if changed or table.get(stream) is None:
            table[stream] = state  # also marks the in-place change

    def _judge(self, stream: str, buckets: dict[float, BucketCounts], end: float, ctx: Context) -> None:
        size = self.params["bucket_s"]
        good = bad = 0
        # Bucket keys are whole multiples of bucket_s: look the window's buckets up directly.
        k = end - size * math.ceil(self.params["window_s"] / size)
        while k < end:
            counts = buckets.get(k)
            if counts is not None:
                good += counts.accepted
                bad += counts.bad
            k += size
        total = good + bad
        share = bad / total if total else 0.0
        active = total >= self.params["min_events"] and share > self.params["max_share"]
        self.report(
            ctx, {"stream": stream}, end, active=active, value=round(share, 4),
            summary=(f"{share:.1%} of {stream} events rejected over {self.params['window_s'] / 60:g} min"
                     if active else ""),
            description=(f"{bad} of {total} events" if active else ""),
        )

    def _ends(self, buckets: dict[float, BucketCounts], done: float, limit: float) -> list[float]:
        """Window ends in (done, limit] whose verdict can differ from the last one, in order.

        Every window holding a counted bucket, the first window after each bucket leaves it (where a verdict
        turns inactive), one window ``resolve_after_s`` later (where an open alert's recovery completes), and
        the window at ``limit``. Empty stretches between are skipped: their verdicts (no events, inactive) repeat
        the first one after the data. The cost is the buckets held times the window's buckets, whatever the
        span of time the clock crossed.
        """
        size = self.params["bucket_s"]
        n = math.ceil(self.params["window_s"] / size)
        after = math.ceil(self.spec.resolve_after_s / size) * size
        ends: set[float] = {limit}
        for b in buckets:
            if b + n * size + size <= done:
                continue  # every window holding it was judged
            # Windows holding bucket b end at b + size ... b + n * size (the grid _judge looks buckets up on).
            for k in range(1, n + 1):
                e = b + k * size
                if done < e <= limit:
                    ends.add(e)
            for e in (b + (n + 1) * size, b + (n + 1) * size + after):
                if done < e <= limit:
                    ends.add(e)
        return sorted(ends)

    def on_tick(self, now_ts: float, ctx: Context) -> None:
        """Judge the trailing windows that end at a bucket boundary the clock has passed, in order.

        The clock is the slowest partition's, so each judged window holds all of its events whatever
        order partitions were read in: the verdict and its time are the same in every run. A clock that jumps
        (an old event first, then live ones) costs the windows that hold data, not the time between them.
        """
        table = self.table(ctx)
        size = self.params["bucket_s"]
        clocks = ctx.rule.stream_clocks or {}
        for stream in sorted(k for k in table.keys() if isinstance(k, str)):
            # Each stream on its own clock (its slowest partition): a stream read later than the others
            # is judged when its own data is in, not when another stream's clock says so.
            clock = clocks.get(stream) if ctx.rule.stream_clocks is not None else now_ts
            if clock is None:
                continue  # the stream's partitions have not all been read yet: wait
            limit = self._bucket(min(now_ts, clock))
            state = table.get(stream)
            buckets = state.buckets
            end = state.done
            if end is None:
                # The first window judged is the first one with a whole window of history behind it.
                end = state.first + self.params["window_s"] - size
            if end + size > limit:
                continue
            # Every window with data, in order, even after a long jump of the clock: a partition read ahead may
            # have filled buckets far behind the clock, and those windows must still be judged.
            for e in self._ends(buckets, end, limit):
                self._judge(stream, buckets, e, ctx)
            state.done = limit
            lo = limit - self.params["window_s"]
            state.buckets = {k: v for k, v in buckets.items() if k >= lo}
            table[stream] = state
        super().on_tick(now_ts, ctx)

    def expired(self, key: Any, value: Any, now_ts: float, ctx: Context) -> bool:
        if isinstance(key, str):
            return not value.buckets and (value.done or 0) < now_ts - self.params["window_s"]
        return False
