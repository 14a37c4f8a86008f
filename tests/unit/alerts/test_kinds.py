"""Rule kinds: contract tests every registered kind gets by existing, then known-answer tests per kind."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from cityops.alerts import kinds as K
from cityops.alerts.kinds import KINDS, REQUIRED, RuleKind, build, haversine_km
from cityops.alerts.sources import SourceRegistry, sign
from cityops.alerts.spec import RuleSpec
from cityops.engine.context import Context, Decoded
from cityops.engine.state import StateStore
from cityops.engine.windows import Windows
from cityops.streams.models import CardTap, HealthCardEvent, RoadReading
from cityops.types import RuleContext
from tests.workcount import calls

SH = ZoneInfo("Asia/Shanghai")
DAY0 = datetime(2024, 5, 6, tzinfo=SH).timestamp()  # a Monday, 00:00 local
LAT, LON = 31.78, 119.95  # central Changzhou
KM_PER_DEG_LON = haversine_km(LAT, 0.0, LAT, 1.0)


# ------------------------------------------------------------------------------------------ test doubles
@dataclass
class Sig:
    rule: str
    entity: dict[str, str]
    ts: float
    active: bool
    value: float
    summary: str
    description: str


class Recorder:
    """Signals stand-in: records every reported condition."""

    def __init__(self) -> None:
        self.calls: list[Sig] = []

    def signal(self, rule: str, entity: dict[str, str], ts: float, *, active: bool, value: float = 0.0,
               summary: str = "", description: str = "") -> None:
        self.calls.append(Sig(rule, dict(entity), ts, active, value, summary, description))

    def fired(self) -> list[Sig]:
        return [c for c in self.calls if c.active]

    def clear(self) -> None:
        self.calls.clear()


def registry_dict() -> dict[str, Any]:
    return {
        "sources": {
            "gate-1": {"stream": "traffic.card-taps", "service_hours": [["06:00", "23:00"]], "max_gap_s": 600,
                       "lat": LAT, "lon": LON, "station": "S1"},
            "gate-2": {"stream": "traffic.card-taps", "service_hours": [["06:00", "23:00"]], "max_gap_s": 600,
                       "station": "S2"},
            "det-1": {"stream": "traffic.road-detectors", "max_gap_s": 300, "must_sign": True, "key": "00" * 32},
            "adhoc": {"stream": "health.card-events", "expected": False},
        },
        "stations": {"S2": {"lat": LAT, "lon": LON + 20 / KM_PER_DEG_LON}},
    }


def make_ctx(registry: SourceRegistry | None = None, **facts: Any) -> tuple[Context, Recorder]:
    """A context as the engine makes it; ``facts`` are RuleContext fields (engine_start_ts=...)."""
    store = StateStore(None)
    rec = Recorder()
    return Context(store, Windows(store.table("windows"), {}), rec, None, RuleContext(sources=registry, **facts)), rec


def spec(kind: str, name: str | None = None, **params: Any) -> RuleSpec:
    return RuleSpec(name=name or f"Test_{kind}", kind=kind, agent="test", params=params)


def written(table: Any, key: Any) -> Any:
    """A table entry as the next commit writes it (its codec's plain data)."""
    return table.codec.encode_values([key], [table[key]])[0]


def make(kind: str, name: str | None = None, **params: Any) -> RuleKind:
    return build(spec(kind, name, **{**KINDS[kind].example_params(), **params}))


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, SH)


def tap(ts: float, card: str, *, lat: float | None = None, lon: float | None = None, result: str = "ok",
        source: str = "gate-1", station: str | None = None, n: int = 0) -> Decoded:
    ev = CardTap(event_id=f"t-{card}-{ts}-{n}", ts=_dt(ts), source=source, card_id=card, mode="metro", line="1",
                 station=station, direction="in", result=result, lat=lat, lon=lon)
    return Decoded(ev.event_id, ts, source, b"", ev)


def health(ts: float, card: str, hospital: str, *, kind: str = "register", result: str = "ok") -> Decoded:
    ev = HealthCardEvent(event_id=f"h-{card}-{ts}-{hospital}", ts=_dt(ts), source=f"his-{hospital}", card_id=card,
                         hospital=hospital, kind=kind, result=result)
    return Decoded(ev.event_id, ts, ev.source, b"", ev)


def road(ts: float, segment: str) -> Decoded:
    ev = RoadReading(event_id=f"r-{segment}-{ts}", ts=_dt(ts), source="det-1", segment=segment, flow=10,
                     speed_kmh=42.0, occupancy=0.1, interval_s=60)
    return Decoded(ev.event_id, ts, "det-1", b"", ev)


def food(ts: float, i: int) -> Decoded:
    ev = SimpleNamespace(event_id=f"f-{i}", source="farm-1", lot=f"lot-{i}")
    return Decoded(ev.event_id, ts, "farm-1", b"", ev)


def is_plain(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return True
    if isinstance(x, (list, tuple)):
        return all(is_plain(v) for v in x)
    if isinstance(x, dict):
        return all(is_plain(k) and is_plain(v) for k, v in x.items())
    return False


def drive(rule: RuleKind, ctx: Context, n: int, t0: float = DAY0 + 8 * 3600, step: float = 7.0) -> float:
    """Exercise every hook with ``n`` distinct entities of every sort; returns the last event time."""
    rnd = random.Random(7)
    ts = t0
    for i in range(n):
        ts = t0 + i * step
        # Many cards seen once or twice (state must not keep them), a few busy ones (conditions must fire).
        for card in (f"card-{i % (n // 2 or 1)}", f"hot-{i % 7}"):
            lat, lon = LAT + rnd.uniform(-0.2, 0.2), LON + rnd.uniform(-0.2, 0.2)
            for j in range(2):
                rule.on_event("traffic.card-taps", tap(ts + j, card, lat=lat, lon=lon + j * 0.3,
                                                       result="declined" if i % 2 else "ok", n=j), ctx)
            rule.on_event("traffic.card-taps", tap(ts, card, source="gate-2", station="S2", result="declined"),
                          ctx)
            rule.on_event("health.card-events", health(ts, card, f"H{i % 3}"), ctx)
            rule.on_event("health.card-events", health(ts, card, f"H{i % 5}", kind="consult"), ctx)
        rule.on_event("traffic.road-detectors", road(ts, f"seg-{i % 40}"), ctx)
        rule.on_event("food.trace-events", food(ts, i), ctx)
        rule.on_window("metro_line", {"line": f"L{i % 20}"}, {"taps_in": float(i % 17)}, ts, ctx)
        rule.on_window("road_segment", {"segment": f"seg-{i % 20}"}, {"speed_kmh": 40.0}, ts, ctx)
        for k, outcome in enumerate(K.OUTCOMES):
            src = ("gate-1", "gate-2", "det-1", f"stranger-{i}", None)[(i + k) % 5]
            rule.on_quality(K.STREAMS[(i + k) % 4], outcome, ts, src, ctx)
        rule.on_tampering("traffic.card-taps", f"e-{i}", f"src-{i % 9}", ts, ctx)
        rule.on_rejected_source("traffic.card-taps", f"stranger-{i}", "untrusted_source", ts, ctx)
        rule.on_rejected_source("traffic.road-detectors", "det-1", "bad_signature", ts, ctx)
        if i % 30 == 0:
            rule.on_tick(ts, ctx)
    return ts


# ----------------------------------------------------------------------------------- contract, every kind
ALL = sorted(KINDS)


def test_registry_is_populated() -> None:
    assert {"impossible_travel", "declined_burst", "concurrent_use", "registration_hoarding", "tampering",
            "untrusted_source", "bad_signature", "kpi_anomaly", "source_silent", "invalid_share"} <= set(KINDS)


def test_unknown_kind_names_rule() -> None:
    with pytest.raises(ValueError, match="Nope.*no_such_kind"):
        build(RuleSpec(name="Nope", kind="no_such_kind", agent="a"))


@pytest.mark.parametrize("kind", ALL)
def test_constructs_from_minimal_spec(kind: str) -> None:
    rule = make(kind)
    assert isinstance(rule, KINDS[kind]) and rule.kind == kind
    assert set(rule.params) == set(KINDS[kind].params_schema)
    for name, (_, default) in KINDS[kind].params_schema.items():
        if default is not REQUIRED and name not in KINDS[kind].example_params():
            assert rule.params[name] == default
    assert rule.horizon_s >= 0


@pytest.mark.parametrize("kind", ALL)
def test_unknown_param_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match=r"Test_\w+.*'no_such_param'"):
        make(kind, no_such_param=1)


@pytest.mark.parametrize("kind", ALL)
def test_required_and_mistyped_params_rejected(kind: str) -> None:
    cls = KINDS[kind]
    example = cls.example_params()
    for name, (_, default) in cls.params_schema.items():
        if default is REQUIRED:
            params = {k: v for k, v in example.items() if k != name}
            with pytest.raises(ValueError, match=f"'{name}'.*required"):
                build(spec(kind, **params))
        with pytest.raises(ValueError, match=f"Test_{kind}.*'{name}'"):
            build(spec(kind, **{**example, name: object()}))


@pytest.mark.parametrize("kind", ALL)
def test_hooks_do_not_crash_on_empty_context(kind: str) -> None:
    rule = make(kind)
    ctx, rec = make_ctx()
    drive(rule, ctx, 20)
    rule.on_tick(DAY0 + 86400, ctx)
    ctx2, _ = make_ctx(SourceRegistry.from_dict(registry_dict()), engine_start_ts=DAY0)
    drive(rule, ctx2, 20)
    rule.on_tick(DAY0 + 86400, ctx2)
    base = RuleKind(spec(kind))  # the base hooks are all no-ops
    drive(base, make_ctx()[0], 3)  # (own store: a table has one declared shape, the kind's)


@pytest.mark.parametrize("kind", ALL)
def test_signals_are_well_formed(kind: str) -> None:
    rule = make(kind)
    ctx, rec = make_ctx(SourceRegistry.from_dict(registry_dict()), engine_start_ts=DAY0)
    last = drive(rule, ctx, 200)
    rule.on_tick(last + 3600, ctx)
    for c in rec.calls:
        assert c.rule == rule.name
        assert c.entity and all(isinstance(k, str) and isinstance(v, str) for k, v in c.entity.items())
        assert math.isfinite(c.ts) and math.isfinite(c.value)
        if rule.one_shot:
            assert c.active


@pytest.mark.parametrize("kind", ALL)
def test_state_is_declared_plain_data_and_namespaced(kind: str) -> None:
    """Every entry is written as plain data by the kind's codec and read back equal (no pickle)."""
    rule = make(kind, name="A")
    other = make(kind, name="B")
    ctx, _ = make_ctx(SourceRegistry.from_dict(registry_dict()), engine_start_ts=DAY0)
    drive(rule, ctx, 200)
    for name, table in ctx.store.tables.items():
        assert name in ("windows", "rule:A"), name  # only its own namespace
        if name == "rule:A":
            assert table.codec is type(rule).state_codec() and table.codec.shape == f"rule:{kind}"
        for key, value in table.items():
            assert is_plain(key), (name, key)
            raw = msgspec.msgpack.encode(table.codec.encode_values([key], [value])[0])
            assert is_plain(msgspec.msgpack.decode(raw)), (name, key, value)
            back = table.codec.decode(name, key, raw, table.codec.version)
            # (a live object in memory, e.g. a KpiDetector, is compared by what it writes)
            assert table.codec.encode_values([key], [back]) == table.codec.encode_values([key], [value])
    assert len(other.table(ctx)) == 0


@pytest.mark.parametrize("kind", ALL)
def test_state_bounded_after_long_sweep(kind: str) -> None:
    rule = make(kind)
    reg = SourceRegistry.from_dict(registry_dict())
    ctx, _ = make_ctx(reg, engine_start_ts=DAY0)
    last = drive(rule, ctx, 1200)
    if rule.horizon_s > 0:
        assert len(rule.table(ctx)) > 0  # the drive did build state
    later = last + max(rule.horizon_s, rule.open_stale_s) + rule.sweep_every_s + 1
    rule.on_tick(later, ctx)
    rule.on_tick(later + max(rule.sweep_every_s, rule.spec.resolve_after_s) + 1, ctx)
    # Whatever is left is bounded by the registry (source_silent), never by the entities seen.
    assert len(rule.table(ctx)) <= 2 * len(reg) + 2, list(rule.table(ctx).items())[:5]


# ------------------------------------------------------------------------------------- impossible travel
def east(km: float) -> float:
    return LON + km / KM_PER_DEG_LON


@pytest.mark.parametrize(
    ("km", "dt", "fires"),
    [(15.0, 120.0, True), (15.0, 1200.0, False), (0.5, 10.0, False), (15.0, 0.0, True)],
)
def test_impossible_travel(km: float, dt: float, fires: bool) -> None:
    rule = make("impossible_travel")
    ctx, rec = make_ctx()
    t = DAY0 + 9 * 3600
    rule.on_event("traffic.card-taps", tap(t, "abc", lat=LAT, lon=LON), ctx)
    rule.on_event("traffic.card-taps", tap(t + dt, "abc", lat=LAT, lon=east(km), n=1), ctx)
    fired = rec.fired()
    assert bool(fired) is fires
    if fires:
        (s,) = fired
        assert s.entity == {"card": "abc"} and s.ts == t + dt
        assert s.value == pytest.approx(km / max(dt, 1.0) * 3600, rel=1e-3)


def test_impossible_travel_thresholds_are_configuration_and_station_fallback() -> None:
    ctx, rec = make_ctx(SourceRegistry.from_dict(registry_dict()))
    strict = make("impossible_travel", max_speed_kmh=30)
    t = DAY0 + 9 * 3600
    # gate-1 has coordinates; gate-2 has none, its station S2 sits 20 km east.
    strict.on_event("traffic.card-taps", tap(t, "abc", source="gate-1"), ctx)
    strict.on_event("traffic.card-taps", tap(t + 1800, "abc", source="gate-2", station="S2"), ctx)
    (s,) = rec.fired()
    assert s.value == pytest.approx(40.0, rel=1e-2)
    rec.clear()
    make("impossible_travel").on_event("traffic.card-taps", tap(t + 1800, "abc", source="gate-2"), ctx)
    assert not rec.fired()  # default 150 km/h, and a separate rule's state


def test_impossible_travel_ignores_taps_without_location() -> None:
    rule = make("impossible_travel")
    ctx, rec = make_ctx()
    t = DAY0 + 9 * 3600
    rule.on_event("traffic.card-taps", tap(t, "abc", lat=LAT, lon=LON), ctx)
    rule.on_event("traffic.card-taps", tap(t + 10, "abc", source="bus-9"), ctx)
    rule.on_event("traffic.card-taps", tap(t + 20, "abc", lat=LAT, lon=LON, n=2), ctx)
    assert not rec.calls


# ------------------------------------------------------------------------------------------ declined burst
@pytest.mark.parametrize(("n", "fires"), [(4, False), (5, True)])
def test_declined_burst(n: int, fires: bool) -> None:
    rule = make("declined_burst")
    ctx, rec = make_ctx()
    t = DAY0 + 9 * 3600
    for i in range(n):
        rule.on_event("traffic.card-taps", tap(t + i * 110, "abc", result="declined", n=i), ctx)
    rule.on_event("traffic.card-taps", tap(t + 50, "abc", result="ok"), ctx)
    rule.on_event("traffic.card-taps", tap(t + 60, "other", result="declined"), ctx)
    fired = rec.fired()
    assert bool(fired) is fires
    if fires:
        assert fired[-1].entity == {"card": "abc"} and fired[-1].value == 5


def test_declined_burst_needs_them_within_the_window() -> None:
    rule = make("declined_burst")
    ctx, rec = make_ctx()
    for i in range(8):  # one every 3 minutes: at most 4 in any 10 minutes
        rule.on_event("traffic.card-taps", tap(DAY0 + i * 180, "abc", result="declined", n=i), ctx)
    assert not rec.calls


# ------------------------------------------------------------------------------------------ concurrent use
@pytest.mark.parametrize(("gap_min", "fires"), [(20, True), (40, False)])
def test_concurrent_use(gap_min: int, fires: bool) -> None:
    rule = make("concurrent_use")
    ctx, rec = make_ctx()
    t = DAY0 + 9 * 3600
    rule.on_event("health.card-events", health(t, "abc", "H1"), ctx)
    rule.on_event("health.card-events", health(t + 300, "abc", "H1", kind="consult"), ctx)
    rule.on_event("health.card-events", health(t + gap_min * 60, "abc", "H2"), ctx)
    fired = rec.fired()
    assert bool(fired) is fires
    if fires:
        assert fired[0].entity == {"card": "abc"} and fired[0].value == 2


def test_concurrent_use_same_hospital_or_other_card_is_fine() -> None:
    rule = make("concurrent_use")
    ctx, rec = make_ctx()
    t = DAY0 + 9 * 3600
    rule.on_event("health.card-events", health(t, "abc", "H1"), ctx)
    rule.on_event("health.card-events", health(t + 60, "abc", "H1"), ctx)
    rule.on_event("health.card-events", health(t + 120, "xyz", "H2"), ctx)
    rule.on_event("health.card-events", health(t + 180, "abc", "H3", result="failed"), ctx)
    assert not rec.calls


# ----------------------------------------------------------------------------------- registration hoarding
def test_hoarding_seventh_registration_same_day() -> None:
    rule = make("registration_hoarding")
    ctx, rec = make_ctx()
    # 07:00..08:30 local crosses UTC midnight (08:00 local): still one calendar day in Asia/Shanghai.
    for i in range(7):
        rule.on_event("health.card-events", health(DAY0 + 7 * 3600 + i * 900, "abc", f"H{i % 3}"), ctx)
        assert bool(rec.fired()) is (i == 6)
    (s,) = rec.fired()
    assert s.entity == {"card": "abc"} and s.value == 7


def test_hoarding_not_across_local_midnight() -> None:
    rule = make("registration_hoarding")
    ctx, rec = make_ctx()
    for i in range(4):
        rule.on_event("health.card-events", health(DAY0 + 86400 - 3600 + i * 600, "abc", "H1"), ctx)
    for i in range(3):
        rule.on_event("health.card-events", health(DAY0 + 86400 + 600 + i * 600, "abc", "H2"), ctx)
    rule.on_event("health.card-events", health(DAY0 + 86400 + 3000, "abc", "H2", kind="consult"), ctx)
    assert not rec.calls


def test_hoarding_bad_tz_rejected() -> None:
    with pytest.raises(ValueError, match="'tz'"):
        make("registration_hoarding", tz="Mars/Olympus")


# ------------------------------------------------------------------------------------------- security
def test_tampering_and_rejected_sources() -> None:
    ctx, rec = make_ctx()
    tamper, untrusted, badsig = make("tampering"), make("untrusted_source"), make("bad_signature")
    for r in (tamper, untrusted, badsig):
        r.on_tampering("traffic.card-taps", "e-1", "gate-1", DAY0, ctx)
        r.on_rejected_source("traffic.card-taps", "evil", "untrusted_source", DAY0 + 1, ctx)
        r.on_rejected_source("traffic.road-detectors", "det-1", "bad_signature", DAY0 + 2, ctx)
    got = {(c.rule, tuple(sorted(c.entity.items())), c.value) for c in rec.calls}
    assert got == {
        ("Test_tampering", (("source", "gate-1"), ("stream", "traffic.card-taps")), 1.0),
        ("Test_untrusted_source", (("source", "evil"), ("stream", "traffic.card-taps")), 1.0),
        ("Test_bad_signature", (("source", "det-1"), ("stream", "traffic.road-detectors")), 1.0),
    }


def test_signature_check_feeds_bad_signature_rule() -> None:
    reg = SourceRegistry.from_dict(registry_dict())
    key = bytes.fromhex("00" * 32)
    ev = {"event_id": "r-1", "source": "det-1", "segment": "s", "speed_kmh": 40.5, "flow": 3}
    good = {**ev, "sig": sign(key, ev)}
    assert reg.check("traffic.road-detectors", "det-1", good) is None
    forged = {**good, "speed_kmh": 80.0}
    reason = reg.check("traffic.road-detectors", "det-1", forged)
    assert reason == "bad_signature"
    assert reg.check("traffic.road-detectors", "nobody", good) == "untrusted_source"
    ctx, rec = make_ctx(reg)
    rule = make("bad_signature", stream="traffic.road-detectors")
    rule.on_rejected_source("traffic.road-detectors", "det-1", reason, DAY0, ctx)
    rule.on_rejected_source("traffic.card-taps", "gate-1", reason, DAY0, ctx)  # other stream: not this rule's
    assert [c.entity for c in rec.fired()] == [{"source": "det-1", "stream": "traffic.road-detectors"}]


# -------------------------------------------------------------------------------------------- kpi anomaly
def daily(ts: float, line: int) -> float:
    h = ((ts - DAY0) % 86400) / 3600
    rush = math.exp(-((h - 8) ** 2) / 2) + math.exp(-((h - 18) ** 2) / 2)
    return (200 + 40 * line) * (0.2 + rush)  # smooth: the detector's own tests cover open/close steps


def test_kpi_anomaly_flags_collapse_after_learning_daily_pattern() -> None:
    rule = make("kpi_anomaly", measurement="metro_line", field="taps_in", tags=["line"])
    ctx, rec = make_ctx()
    rnd = random.Random(3)
    days = 4
    for i in range(days * 1440):
        ts = DAY0 + i * 60
        for line in (1, 2):
            v = daily(ts, line) * (1 + rnd.gauss(0, 0.03))
            rule.on_window("metro_line", {"line": str(line), "station": "x"}, {"taps_in": v, "n": 3}, ts, ctx)
        rule.on_window("road_segment", {"segment": "s"}, {"taps_in": 1e9}, ts, ctx)  # other measurement
    assert not rec.calls, rec.calls[:3]  # a learned rhythm is not an anomaly
    collapse = DAY0 + days * 86400 + 8 * 3600  # morning rush on day 5
    for i in range(-60, 30):
        ts = collapse + i * 60
        for line in (1, 2):
            v = daily(ts, line) * (1 + rnd.gauss(0, 0.03))
            if line == 1 and i >= 0:
                v *= 0.1  # line 1's gates stop counting
            rule.on_window("metro_line", {"line": str(line), "station": "x"}, {"taps_in": v}, ts, ctx)
    fired = rec.fired()
    assert fired and fired[0].entity == {"line": "1", "direction": "low"}
    assert collapse <= fired[0].ts <= collapse + 600
    assert all(c.entity["line"] == "1" and c.entity["direction"] == "low" for c in rec.calls)
    # Back to normal: the open "low" alert is reported inactive until it has held resolve_after_s.
    rec.clear()
    for i in range(30, 60):
        ts = collapse + i * 60
        rule.on_window("metro_line", {"line": "1"}, {"taps_in": daily(ts, 1)}, ts, ctx)
    assert rec.calls and not rec.fired()
    assert {c.entity["direction"] for c in rec.calls} == {"low"}
    assert rule.table(ctx).get(("__open__", ("direction", "low"), ("line", "1"))) is None


def test_kpi_anomaly_state_is_detector_state_and_survives_new_instance() -> None:
    from cityops.alerts.detector import KpiDetector

    ctx, _ = make_ctx()
    a = make("kpi_anomaly", name="R", min_history=10)
    for i in range(20):
        a.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0 + i % 3}, DAY0 + i * 60, ctx)
    state = a.table(ctx)[("det", (("line", "1"),))]
    assert KpiDetector.from_state(written(a.table(ctx), ("det", (("line", "1"),)))).n == 20
    b = make("kpi_anomaly", name="R", min_history=10)  # e.g. after a restart: reads the table, not a cache
    b.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0}, DAY0 + 20 * 60, ctx)
    assert KpiDetector.from_state(written(b.table(ctx), ("det", (("line", "1"),)))).n == 21


def test_kpi_anomaly_bad_detector_param_rejected() -> None:
    with pytest.raises(ValueError, match="'detector'"):
        make("kpi_anomaly", detector={"no_such_knob": 1})


# ------------------------------------------------------------------------------------------ source silent
def at(hh: int, mm: int = 0, day: int = 0) -> float:
    return DAY0 + day * 86400 + hh * 3600 + mm * 60


def test_source_silent() -> None:
    reg = SourceRegistry.from_dict(registry_dict())
    ctx, rec = make_ctx(reg, engine_start_ts=at(10))
    rule = make("source_silent")
    rule.on_quality("traffic.card-taps", "accepted", at(10, 0), "gate-1", ctx)
    rule.on_quality("traffic.card-taps", "invalid", at(10, 5), "gate-1", ctx)  # a broken event is still a sign
    rule.on_quality("traffic.card-taps", "accepted", at(10, 6), "stranger", ctx)
    rule.on_tick(at(10, 4), ctx)
    assert not rec.fired()
    rule.on_tick(at(10, 7), ctx)
    # det-1 (24 h, 5 min gap) never sent since the engine started at 10:00; the gates allow 10 min.
    assert {c.entity["source"] for c in rec.fired()} == {"det-1"}
    rec.clear()
    rule.on_tick(at(10, 14), ctx)
    assert {c.entity["source"] for c in rec.fired()} == {"det-1", "gate-2"}  # gate-2 never seen at all
    rec.clear()
    rule.on_tick(at(10, 20), ctx)
    fired = {c.entity["source"]: c for c in rec.fired()}
    assert set(fired) == {"gate-1", "gate-2", "det-1"}
    assert fired["gate-1"].value == pytest.approx(15 * 60)
    assert fired["gate-2"].entity == {"source": "gate-2", "stream": "traffic.card-taps"}
    rec.clear()
    rule.on_quality("traffic.card-taps", "accepted", at(10, 21), "gate-1", ctx)
    rule.on_tick(at(10, 22), ctx)
    state = {c.entity["source"]: c.active for c in rec.calls}
    assert state == {"gate-1": False, "gate-2": True, "det-1": True}


def test_source_silent_respects_service_hours() -> None:
    reg = SourceRegistry.from_dict(registry_dict())
    ctx, rec = make_ctx(reg, engine_start_ts=at(0))
    rule = make("source_silent", stream="traffic.card-taps")
    rule.on_tick(at(5, 30), ctx)  # metro closed: no gate is expected
    assert not rec.calls
    rule.on_tick(at(6, 5), ctx)  # service began at 06:00: silence counts from there
    assert not rec.calls
    rule.on_tick(at(6, 11), ctx)
    assert {c.entity["source"] for c in rec.fired()} == {"gate-1", "gate-2"}
    rec.clear()
    rule.on_tick(at(23, 30), ctx)  # closed again: the open alerts recover, nothing new fires
    assert rec.calls and not rec.fired()


def test_source_silent_without_engine_start_counts_from_first_tick() -> None:
    reg = SourceRegistry.from_dict(registry_dict())
    ctx, rec = make_ctx(reg)
    rule = make("source_silent", stream="traffic.road-detectors")
    rule.on_tick(at(12), ctx)
    rule.on_tick(at(12, 4), ctx)
    assert not rec.calls
    rule.on_tick(at(12, 6), ctx)
    assert [c.entity for c in rec.fired()] == [{"source": "det-1", "stream": "traffic.road-detectors"}]


def test_source_silent_without_registry_is_inert() -> None:
    ctx, rec = make_ctx()
    rule = make("source_silent")
    rule.on_quality("traffic.card-taps", "accepted", at(10), "gate-1", ctx)
    rule.on_tick(at(20), ctx)
    assert not rec.calls and len(rule.table(ctx)) == 0


# ------------------------------------------------------------------------------------------ invalid share
def feed_share(rule: RuleKind, ctx: Context, start: float, minutes: int, per_min: int, bad: int,
               stream: str = "traffic.card-taps") -> None:
    for m in range(minutes):
        for i in range(per_min):
            outcome = "invalid" if i < bad else "accepted"
            rule.on_quality(stream, outcome, start + m * 60 + i * 60 / per_min, "gate-1", ctx)
            rule.on_quality(stream, "duplicate", start + m * 60, "gate-1", ctx)  # neither good nor bad


@pytest.mark.parametrize(("bad", "fires"), [(6, True), (4, False)])
def test_invalid_share(bad: int, fires: bool) -> None:
    rule = make("invalid_share")
    ctx, rec = make_ctx()
    feed_share(rule, ctx, at(9), 5, 100, bad)
    feed_share(rule, ctx, at(9), 5, 100, 0, stream="health.card-events")
    rule.on_tick(at(9, 5), ctx)
    fired = rec.fired()
    assert bool(fired) is fires
    if fires:
        # Judged once a whole window of history exists, at the tick: 6% of this one stream only.
        assert {(tuple(c.entity.items()), c.value) for c in fired} == {((("stream", "traffic.card-taps"),), 0.06)}
        assert fired[-1].ts == at(9, 5)
        rec.clear()
        feed_share(rule, ctx, at(9, 5), 6, 100, 0)  # clean again: it recovers
        rule.on_tick(at(9, 11), ctx)
        assert rec.calls and not rec.fired()


def test_invalid_share_needs_min_events() -> None:
    rule = make("invalid_share", min_events=20)
    ctx, rec = make_ctx()
    feed_share(rule, ctx, at(9), 5, 3, 1)  # 15 events, a third invalid
    rule.on_tick(at(9, 5), ctx)
    assert not rec.calls


def test_invalid_share_verdict_does_not_depend_on_arrival_order() -> None:
    """Partitions are read in any interleaving: judged on the slowest partition's clock, the same events
    give the same signals, at the same event times, whatever order they arrived in."""
    events = []
    rnd = random.Random(3)
    for i in range(600):  # 10 minutes, 1 event/s; in minute 6 a third of the events are invalid
        ts = at(9) + i
        bad = 360 <= i < 420 and i % 3 == 0
        events.append(("invalid" if bad else "accepted", ts))
    runs = []
    for order in (events, list(reversed(events)), rnd.sample(events, len(events))):
        rule = make("invalid_share")
        ctx, rec = make_ctx()
        for outcome, ts in order:
            rule.on_quality("traffic.card-taps", outcome, ts, "gate-1", ctx)
        rule.on_tick(at(9, 10), ctx)
        runs.append([(c.active, c.ts, c.value) for c in rec.calls])
    assert runs[0] == runs[1] == runs[2]
    fired = [r for r in runs[0] if r[0]]
    assert fired and at(9, 6) < fired[0][1] <= at(9, 7)  # within a minute of the bad data starting

def test_kpi_anomaly_open_alert_of_a_vanished_series_recovers() -> None:
    # The lifecycle under test needs a same-day spike; the profile model judges only times of day seen a day before.
    rule = make("kpi_anomaly", model="seasonal", min_history=30, stale_s=1800)
    ctx, rec = make_ctx()
    rnd = random.Random(5)
    for i in range(120):
        rule.on_window("metro_line", {"line": "9"}, {"taps_in": 100 + rnd.gauss(0, 2)}, DAY0 + i * 60, ctx)
    rule.on_window("metro_line", {"line": "9"}, {"taps_in": 1000.0}, DAY0 + 120 * 60, ctx)
    spike = rec.fired()[-1]
    assert spike.entity == {"line": "9", "direction": "high"} and spike.ts == DAY0 + 120 * 60
    rec.clear()
    rule.on_tick(DAY0 + 121 * 60, ctx)
    assert not rec.calls  # still open, not stale yet
    rule.on_tick(DAY0 + 120 * 60 + 1800 + 400, ctx)  # no window for 30+ min: the series is gone
    rule.on_tick(DAY0 + 120 * 60 + 1800 + 400 + 600, ctx)
    assert [c.active for c in rec.calls] == [False, False]
    assert not any(k[0] == "__open__" for k in rule.table(ctx).keys())


def test_kpi_anomaly_counts_quiet_series_and_opening_hours_do_not_alert() -> None:
    """Poisson-aware profile (the manifest's ridership setting): a parking lot with a handful of cars
    a minute and a line that opens at 06:00 learn their day on day 1 and stay quiet on day 2, while
    the line's outage on day 2 alerts low within two windows."""
    rule = make("kpi_anomaly", measurement="r", field="taps_in", tags=["line"],
                detector={"channels": ["profile"], "noise": "poisson", "min_expected": 5.0})
    ctx, rec = make_ctx()
    rnd = random.Random(7)

    def draw(lam: float) -> int:
        return sum(rnd.random() < lam / 50 for _ in range(50))  # binomial ~ Poisson(lam)

    outage = DAY0 + 86400 + 10 * 3600
    for i in range(2 * 1440):
        ts = DAY0 + i * 60
        h = (i % 1440) / 60
        lot = 3.0 if 7 <= h < 22 else 0.5
        rule.on_window("r", {"line": "lot"}, {"taps_in": draw(lot)}, ts, ctx)
        if h >= 6:  # closed before 06:00: no window at all
            lam = 30.0 * (0.2 if outage <= ts < outage + 1200 else 1.0)
            rule.on_window("r", {"line": "L2"}, {"taps_in": draw(lam)}, ts, ctx)
    fired = rec.fired()
    assert fired and {tuple(c.entity.items()) for c in fired} == {(("line", "L2"), ("direction", "low"))}
    assert outage <= fired[0].ts <= outage + 120
    assert all(outage <= c.ts < outage + 1200 for c in fired)


def test_kpi_anomaly_state_of_another_model_is_replaced() -> None:
    from cityops.alerts.detector import KpiDetector

    ctx, _ = make_ctx()
    old = make("kpi_anomaly", name="R", model="seasonal", min_history=10)
    for i in range(5):
        old.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0}, DAY0 + i * 60, ctx)
    key = ("det", (("line", "1"),))
    det = KpiDetector.from_state(written(old.table(ctx), key))
    assert det.channels == ("seasonal", "range") and det.n == 5
    # The manifest moved the rule to the profile channel: same class, other channels, so start over.
    new = make("kpi_anomaly", name="R", detector={"channels": ["profile"]})
    new.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0}, DAY0 + 5 * 60, ctx)
    det = KpiDetector.from_state(written(new.table(ctx), key))
    assert det.channels == ("profile",) and det.n == 1


def test_kpi_anomaly_adopts_a_legacy_profile_state() -> None:
    """State written by the former ProfileDetector-based rule carries on under the same channels."""
    from cityops.alerts.detector import KpiDetector, ProfileDetector

    ctx, _ = make_ctx()
    key = ("det", (("line", "1"),))
    legacy = ProfileDetector(warmup_pts=30)
    for i in range(5):
        legacy.update(DAY0 + i * 60, 100.0)
    rule = make("kpi_anomaly", name="R", model="profile")
    rule.table(ctx)[key] = legacy.to_state()
    rule.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0}, DAY0 + 5 * 60, ctx)
    det = KpiDetector.from_state(written(rule.table(ctx), key))
    assert det.channels == ("profile",) and det.n == 6


def test_kpi_anomaly_judges_a_repeated_window_once() -> None:
    """The same window delivered again is not learned nor judged twice: repeats of one odd window
    must not pass for a persistent run."""
    from cityops.alerts.detector import KpiDetector

    ctx, rec = make_ctx()
    rule = make("kpi_anomaly", name="R", detector={"channels": ["profile"], "min_days": 0.0, "bin_s": 3600.0})
    rnd = random.Random(9)
    for i in range(100):
        rule.on_window("metro_line", {"line": "1"}, {"taps_in": 100 + rnd.gauss(0, 2)}, DAY0 + i * 60, ctx)
    odd = DAY0 + 100 * 60  # 01:40, an hour learned since 01:00
    for _ in range(4):
        rule.on_window("metro_line", {"line": "1"}, {"taps_in": 130.0}, odd, ctx)  # ~6 scales, once
    assert not rec.fired()
    det = KpiDetector.from_state(written(rule.table(ctx), ("det", (("line", "1"),))))
    assert det.last_ts == odd and abs(det._p.run) == 1


def test_kpi_anomaly_detector_state_expires_only_after_horizon() -> None:
    """The sweep reads the last point's time from the unified detector's per-channel state (a state
    that looked timeless would be swept at once and the series would never learn its day)."""
    ctx, _ = make_ctx()
    key = ("det", (("line", "1"),))
    for detector in ({"channels": ["profile"]}, {}, {"channels": ["seasonal", "range", "profile"]}):
        rule = make("kpi_anomaly", name="R", detector=detector, horizon_s=3600.0)
        rule.on_window("metro_line", {"line": "1"}, {"taps_in": 100.0}, DAY0, ctx)
        for state in (rule.table(ctx)[key], written(rule.table(ctx), key)):  # live, and as restored
            assert not rule.expired(key, state, DAY0 + 1800, ctx)
            assert rule.expired(key, state, DAY0 + 3601, ctx)


def test_kpi_anomaly_calendar_gives_local_weekday_and_weekend_profiles() -> None:
    det = make("kpi_anomaly")._new()
    assert det._p is not None and det._p.weekend and det._p.utc_offset_s == 8 * 3600  # Asia/Shanghai
    assert not make("kpi_anomaly", calendar="none")._new()._p.weekend
    assert make("kpi_anomaly", timezone="Europe/Berlin")._new()._p.utc_offset_s == 3600
    with pytest.raises(ValueError, match="calendar"):
        make("kpi_anomaly", calendar="lunar")
    with pytest.raises(ValueError, match="timezone"):
        make("kpi_anomaly", timezone="Mars/Olympus")


# ------------------------------------------------------------------- clock jumps (issue 14: bounded cost)
YEAR = 365.25 * 86400




def _jump_cost(kind: str, jump_s: float) -> tuple[int, RuleKind, Context, Recorder]:
    rule = make(kind)
    ctx, rec = make_ctx(SourceRegistry.from_dict(registry_dict()), engine_start_ts=DAY0 - 30 * YEAR)
    t0 = DAY0 - 30 * YEAR  # the first data is three decades old (a device whose clock is years behind)
    last = drive(rule, ctx, 40, t0=t0)
    rule.on_tick(last, ctx)
    rec.clear()
    return calls(lambda: rule.on_tick(last + jump_s, ctx)), rule, ctx, rec


@pytest.mark.parametrize("kind", ALL)
def test_a_clock_jump_of_decades_costs_what_an_hour_costs(kind: str) -> None:
    """Issue 14: the work of one tick is bounded by the state the rule holds, not by the time the clock crosses.

    Both rules hold the same state (same drive); one tick jumps an hour, the other three decades.
    """
    hour, _, _, _ = _jump_cost(kind, 3600.0)
    decades, rule, ctx, _ = _jump_cost(kind, 30 * YEAR)
    assert decades <= 2 * hour + 500, (kind, hour, decades)
    # A second tick after the jump finds nothing left to catch up on.
    again = calls(lambda: rule.on_tick(DAY0 + 60, ctx))
    assert again <= 2 * hour + 500, (kind, hour, again)


def test_invalid_share_visits_only_windows_with_data_after_a_jump() -> None:
    """The 41 s stall of issue 14: invalid_share walked every 10 s window of five years (15.8 M of them)."""
    rule = make("invalid_share", window_s=300.0, bucket_s=10.0, min_events=1, max_share=0.5)
    ctx, rec = make_ctx()
    old = DAY0 - 5 * YEAR
    rule.on_quality("traffic.card-taps", "accepted", old, "gate-1", ctx)  # one tap five years back
    judged: list[float] = []
    judge = rule._judge

    def counting(stream: str, buckets: Any, end: float, ctx: Context) -> None:
        judged.append(end)
        judge(stream, buckets, end, ctx)

    rule._judge = counting  # type: ignore[method-assign]
    rule.on_tick(DAY0, ctx)  # the clock jumps five years
    n = math.ceil(300.0 / 10.0)
    # The windows that hold the old tap (at most n), the first empty one after it, its recovery point, now.
    assert len(judged) <= n + 3, len(judged)
    assert judged == sorted(judged) and judged[-1] == DAY0
    # Live events then cost their own windows only.
    judged.clear()
    for i in range(30):
        rule.on_quality("traffic.card-taps", "invalid" if i % 3 else "accepted", DAY0 + i, "gate-1", ctx)
    rule.on_tick(DAY0 + 60, ctx)
    assert len(judged) == 6  # 10 s windows ending DAY0+10 ... DAY0+60
    assert any(c.active for c in rec.calls)  # two thirds invalid: the live windows are judged as before


def test_invalid_share_jump_decides_as_the_walk_did() -> None:
    """Skipping empty time changes no verdict: the same signals as judging every window, for an alert that
    fires, then recovers over a gap of a day."""
    def run(step: float | None) -> list[tuple[float, bool]]:
        rule = make("invalid_share", window_s=60.0, bucket_s=10.0, min_events=5, max_share=0.2)
        ctx, rec = make_ctx()
        for i in range(40):
            rule.on_quality("traffic.card-taps", "invalid" if i < 20 else "accepted", DAY0 + i, "gate-1", ctx)
        end = DAY0 + 86400
        if step is None:
            rule.on_tick(end, ctx)
        else:
            t = DAY0
            while t <= end:
                rule.on_tick(t, ctx)
                t += step
        return [(c.ts, c.active) for c in rec.calls]

    walked = run(10.0)
    jumped = run(None)
    assert any(a for _, a in jumped)
    # Every active verdict and the first recovery are the same, at the same event times.
    first_inactive = lambda calls: next(c for c in calls if not c[1])  # noqa: E731
    assert [c for c in walked if c[1]] == [c for c in jumped if c[1]]
    assert first_inactive(walked) == first_inactive(jumped)
