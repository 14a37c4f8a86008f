"""Deterministic, realistic event simulator for Changzhou: card taps, road detectors, health-card events.

``generate`` yields ``(topic, event)`` pairs in non-decreasing event time; ``generate_with_truth``
also injects the incident catalogue and returns its ground truth. Pure Python, no I/O, no wall
clock: the same arguments always give the same events. See ``docs/simulator.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Any

from cityops.simulate import city as C
from cityops.units import CITY_TZ

TZ = CITY_TZ  # cityops.units: the one definition
TOPIC_TAPS, TOPIC_ROAD, TOPIC_HEALTH = C.TOPIC_TAPS, C.TOPIC_ROAD, C.TOPIC_HEALTH
ALL_STREAMS: tuple[str, ...] = C.TOPICS

RULES: tuple[str, ...] = (
    "CardImpossibleTravel", "CardDeclinedBurst", "HealthCardConcurrentUse",
    "HealthCardRegistrationHoarding", "EventTampering", "UntrustedSource", "BadSignature",
    "SourceSilent", "DataQualityDegraded", "RidershipAnomaly", "RoadSpeedAnomaly", "WaitTimeAnomaly",
)

_MIN = 60_000  # ms
_DAY_MIN = 1440
# "SS.mmm+08:00" for every millisecond of a minute: a timestamp is then one dict hit + one concat.
_SECMS: list[str] = [f"{s:02d}.{ms:03d}+08:00" for s in range(60) for ms in range(1000)]
_M11 = 10**11
_PERM_A = 25_214_903_917  # odd and not a multiple of 5, so i -> i*A mod 10**11 is a bijection
# 19-digit card numbers: an 8-digit issuer/pool prefix + an 11-digit permuted serial. Incident cards
# use their own prefixes so they can never collide with a normal card.
_CARD_BASE = 21305190 * _M11
_PARK_CARD_BASE = 21305191 * _M11
_X_CARD_BASE = 21305199 * _M11
_HEALTH_CARD_BASE = 32040019 * _M11
_X_HEALTH_CARD_BASE = 32040099 * _M11


@dataclass(frozen=True)
class Incident:
    """Ground truth for one injected incident.

    ``start`` is the event time at which the condition first becomes detectable; ``end`` is when
    the injected condition stops (equal to ``start`` for point incidents).
    """

    rule: str
    entity: dict[str, str]
    start: datetime
    description: str
    end: datetime | None = None


# --- signing -------------------------------------------------------------------------------------------
def canonical_bytes(ev: dict[str, Any]) -> bytes:
    """Canonical JSON of an event without ``sig``: sorted keys, no whitespace, UTF-8."""
    body = {k: v for k, v in ev.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(ev: dict[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 of ``canonical_bytes(ev)`` with ``key``."""
    return hmac.new(key, canonical_bytes(ev), hashlib.sha256).hexdigest()


def verify(ev: dict[str, Any], key: bytes) -> bool:
    """True when ``ev["sig"]`` is the correct signature for ``key``."""
    sig = ev.get("sig")
    return isinstance(sig, str) and hmac.compare_digest(sig, sign(ev, key))


# --- diurnal profiles (local time; value at HH:MM knots, linear in between, 0 outside) ------------------
def _profile(knots: list[tuple[float, float]], outside: float | None = 0.0) -> list[float]:
    out = []
    for m in range(_DAY_MIN):
        h = m / 60
        if h < knots[0][0] or h >= knots[-1][0]:
            out.append(knots[0][1] if outside is None and h < knots[0][0]
                       else knots[-1][1] if outside is None else outside)
            continue
        for (h0, v0), (h1, v1) in zip(knots, knots[1:]):
            if h0 <= h < h1:
                out.append(v0 + (v1 - v0) * (h - h0) / (h1 - h0))
                break
    return out


def _per_min(daily: float, shape: list[float]) -> list[float]:
    s = sum(shape)
    return [daily * w / s for w in shape]


_METRO_SHAPE = _profile([(6, 1.0), (7, 6.0), (8, 10.0), (9, 6.5), (10, 4.5), (11, 4.3), (12, 4.3),
                         (13, 4.3), (14, 4.3), (15, 4.8), (16, 6.0), (17, 9.0), (18, 8.5), (19, 5.5),
                         (20, 4.5), (21, 3.0), (22, 1.5), (23, 0.0)])
_BUS_SHAPE = _profile([(5.5, 0.5), (6, 3.0), (7, 8.0), (8, 9.0), (9, 6.0), (10, 5.0), (12, 4.5),
                       (14, 4.5), (15, 5.0), (16, 6.0), (17, 8.0), (18, 7.0), (19, 4.5), (20, 3.0),
                       (21, 1.5), (22, 0.0)])
_BIKE_SHAPE = _profile([(6, 0.5), (7, 6.0), (8, 9.0), (9, 5.0), (10, 3.5), (16, 4.0), (17, 8.0),
                        (18, 7.0), (19, 4.0), (20, 3.0), (21, 1.5), (22, 0.0)])
_COACH_SHAPE = _profile([(6, 1.0), (7, 4.0), (8, 5.0), (10, 4.5), (12, 3.5), (14, 4.5), (16, 4.0),
                         (17, 3.0), (18, 1.5), (19, 0.0)])
_PARK_SHAPE = _profile([(0, 0.3), (5, 0.3), (6, 1.0), (7, 4.0), (8, 7.0), (9, 8.0), (10, 7.0),
                        (12, 5.0), (13, 6.0), (16, 5.5), (18, 5.0), (19, 4.0), (21, 2.0), (22, 1.2),
                        (23, 0.6), (24, 0.3)])
_HEALTH_SHAPE = _profile([(7, 8.0), (8, 14.0), (9, 12.0), (10, 9.0), (11, 5.0), (12, 2.5), (13, 5.0),
                          (14, 6.0), (15, 4.5), (16, 3.0), (17, 1.5), (17.5, 0.0)])
# Road volume/capacity ratio by time of day (24 h; never zero).
_ROAD_VC = _profile([(0, 0.10), (1, 0.07), (2, 0.05), (4, 0.06), (5, 0.15), (6, 0.40), (7, 0.80),
                     (8, 0.90), (9, 0.70), (10, 0.60), (12, 0.55), (14, 0.60), (16, 0.70), (17, 0.88),
                     (18, 0.85), (19, 0.60), (20, 0.45), (21, 0.35), (22, 0.25), (23, 0.15),
                     (24, 0.10)])
# Outpatient base queue wait in seconds: grows through the morning, eases after lunch.
_WAIT_BASE = _profile([(7, 300.0), (8, 900.0), (9, 1500.0), (10, 1800.0), (11, 1300.0), (12, 700.0),
                       (13, 500.0), (14, 800.0), (15, 700.0), (16, 450.0), (17, 250.0), (18, 150.0)],
                      outside=None)

METRO_PER_MIN = _per_min(C.METRO_TRIPS_PER_DAY, _METRO_SHAPE)
BUS_PER_MIN = _per_min(C.BUS_BOARDINGS_PER_DAY, _BUS_SHAPE)
BIKE_PER_MIN = _per_min(C.BIKE_TRIPS_PER_DAY, _BIKE_SHAPE)
COACH_PER_MIN = _per_min(C.COACH_BOARDINGS_PER_DAY, _COACH_SHAPE)
PARK_PER_MIN = _per_min(C.PARKING_ENTRIES_PER_DAY, _PARK_SHAPE)
VISITS_PER_MIN = _per_min(C.OUTPATIENT_VISITS_PER_DAY, _HEALTH_SHAPE)
_SECOND_REG_P = 0.08
_EV_PER_VISIT = 4 + 2 * _SECOND_REG_P


# Saturdays and Sundays (local time) against a weekday, per source of activity: fewer commuters (metro,
# bus, bike, lighter road traffic), more shoppers and intercity travellers (parking, coach), outpatient
# clinics on reduced hours with shorter queues. Estimates, applied to the weekday shapes above.
WEEKEND_FACTOR: dict[str, float] = {"metro": 0.75, "bus": 0.7, "bike": 0.8, "coach": 1.25, "park": 1.15,
                                    "road": 0.75, "health": 0.45, "wait": 0.6}
_WEEKDAY_FACTOR: dict[str, float] = dict.fromkeys(WEEKEND_FACTOR, 1.0)


def _day_factor(minute: int) -> dict[str, float]:
    """The volume factors of the local day holding epoch minute ``minute`` (1970-01-01 was a Thursday)."""
    day = (minute + C.UTC_OFFSET_MIN) // _DAY_MIN
    return WEEKEND_FACTOR if (day + 3) % 7 >= 5 else _WEEKDAY_FACTOR


def _lag(arr: list[float], minutes: int) -> list[float]:
    return [arr[(m - minutes) % _DAY_MIN] for m in range(_DAY_MIN)]


def _sum(*arrs: list[float]) -> list[float]:
    return [sum(x) for x in zip(*arrs)]


# Expected events per minute of day by *event time* (before scaling): later steps of a trip, stay or
# visit are lagged by their typical delay, so `rate` holds for windows that are not whole days.
TAPS_EV_PER_MIN = _sum(METRO_PER_MIN, _lag(METRO_PER_MIN, 25), BUS_PER_MIN, BIKE_PER_MIN,
                       _lag(BIKE_PER_MIN, 20), COACH_PER_MIN, PARK_PER_MIN, _lag(PARK_PER_MIN, 150))
HEALTH_EV_PER_MIN = _sum(*(_lag([v * w for v in VISITS_PER_MIN], d) for d, w in
                           ((3, 1 + _SECOND_REG_P), (45, 1 + _SECOND_REG_P), (75, 1.0), (95, 1.0))))


def _table(weights: list[float], size: int = 4096) -> list[int]:
    """Index table for O(1) weighted choice (largest-remainder apportionment, no RNG)."""
    tot = sum(weights)
    raw = [w / tot * size for w in weights]
    cnt = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (cnt[i] - raw[i], i))[: size - sum(cnt)]:
        cnt[i] += 1
    return [i for i, c in enumerate(cnt) for _ in range(c)]


# --- metro network --------------------------------------------------------------------------------------
def _metro_tables() -> tuple[list[tuple[Any, ...]], dict[int, list[tuple[Any, ...]]]]:
    sts = C.METRO_STATIONS
    pos: list[float] = []
    for line in (C.METRO_L1, C.METRO_L2):
        idx = [i for i, s in enumerate(sts) if s.line == line]
        cum = [0.0]
        for a, b in zip(idx, idx[1:]):
            cum.append(cum[-1] + C.haversine_km(sts[a].lat, sts[a].lon, sts[b].lat, sts[b].lon))
        scale = C.METRO_LINE_KM[line] / cum[-1]  # the alignment curves; coordinates are straight
        pos.extend(c * scale for c in cum)
    xchg = {s.line: i for i, s in enumerate(sts) if s.name == C.METRO_INTERCHANGE}
    ids = [C.metro_station_id(s) for s in sts]
    pairs: list[tuple[Any, ...]] = []
    weights: list[float] = []
    for o, so in enumerate(sts):
        for d, sd in enumerate(sts):
            if so.name == sd.name:
                continue
            if so.line == sd.line:
                km, transfer = abs(pos[o] - pos[d]), 0
            else:
                km = abs(pos[o] - pos[xchg[so.line]]) + abs(pos[xchg[sd.line]] - pos[d])
                transfer = 4 * _MIN
            fare = next(f for lim, f in C.METRO_FARE_BANDS if km <= lim)
            ride = int(km / C.METRO_AVG_SPEED_KMH * 3_600_000) + transfer
            pairs.append((ids[o], so.line, so.name, so.lat, so.lon, ids[d], sd.line, sd.name, sd.lat,
                          sd.lon, fare, ride, o, d))
            weights.append(so.weight * sd.weight / (1.0 + km / 8.0))  # gravity model
    table = [pairs[i] for i in _table(weights, 16384)]
    by_origin: dict[int, list[tuple[Any, ...]]] = {}
    for p in table:
        by_origin.setdefault(p[12], []).append(p)
    return table, by_origin


METRO_OD, METRO_OD_BY_ORIGIN = _metro_tables()
_STATION_IDX = {(s.line, s.name): i for i, s in enumerate(C.METRO_STATIONS)}


def _bus_tables() -> tuple[list[tuple[Any, ...]], list[int]]:
    routes = []
    for r, (route, a, b, stops, vehicles, fare, _w) in enumerate(C.BUS_ROUTES, start=1):
        (la0, lo0), (la1, lo1) = C.PLACES[a], C.PLACES[b]
        stop_list = []
        for k in range(stops):
            f = k / (stops - 1)
            bend = 0.004 * math.sin(math.pi * f)  # routes are not straight lines
            stop_list.append((f"{route}第{k + 1}站", round(la0 + (la1 - la0) * f + bend, 5),
                              round(lo0 + (lo1 - lo0) * f - bend, 5)))
        period_min = 2 * (stops - 1) * C.BUS_STOP_SPACING_MIN
        routes.append((route, fare, stop_list, [C.bus_vehicle_id(r, v + 1) for v in range(vehicles)],
                       period_min))
    return routes, _table([r[6] for r in C.BUS_ROUTES], 1024)


BUS_ROUTES, _BUS_TABLE = _bus_tables()


def _bike_tables() -> list[tuple[str, list[tuple[str, str, float, float]]]]:
    out = []
    for a_no, (area, _la, _lo, docks, _w) in enumerate(C.BIKE_AREAS, start=1):
        lst = []
        for d in range(1, docks + 1):
            s = C.SOURCES[C.bike_dock_id(a_no, d)]
            lst.append((s.source_id, f"{area}{d}号点", s.lat or 0.0, s.lon or 0.0))
        out.append((area, lst))
    return out


BIKE_AREAS = _bike_tables()
_BIKE_TABLE = _table([a[4] for a in C.BIKE_AREAS], 1024)
_COACH_GATES = [(C.coach_gate_id(c, g), name) for c, (name, _la, _lo, n) in
                enumerate(C.COACH_STATIONS, start=1) for g in range(1, n + 1)]
_COACH_KEYS = {sid: C.signing_key(sid) for sid, _ in _COACH_GATES}
_COACH_TABLE = _table([3.0 if "c1" in sid else 2.0 for sid, _ in _COACH_GATES], 1024)
_COACH_ROUTE_TABLE = _table([w for _r, _f, w in C.COACH_ROUTES], 1024)
_PARK_TABLE = _table([w for _l, _p, w in C.PARKING_LOTS], 1024)
_HOSP = [(name, code, qf, depts, C.hospital_sources(code)) for name, code, _la, _lo, _s, qf, depts
         in C.HOSPITALS]
_HOSP_TABLE = _table([h[4] for h in C.HOSPITALS], 4096)
_HOSP_IDX = {h[0]: i for i, h in enumerate(_HOSP)}


def _road_detectors() -> list[tuple[Any, ...]]:
    rnd = random.Random("cityops-road-layout")  # fixed layout, independent of the run seed
    out = []
    for s_no, seg in enumerate(C.ROAD_SEGMENTS, start=1):
        factor = 0.85 + 0.25 * rnd.random()
        lanes = seg.lanes / C.ROAD_GROUPS_PER_DIRECTION
        for d in C.road_directions(seg):
            for g in range(1, C.ROAD_GROUPS_PER_DIRECTION + 1):
                out.append((C.road_detector_id(s_no, d, g), seg.segment, seg.road, seg.free_kmh,
                            lanes * C.ROAD_LANE_CAPACITY_VEH_H, factor * (0.95 + 0.1 * rnd.random()),
                            rnd.random()))
    return out


ROAD_DETECTORS = _road_detectors()


def _poisson(rnd: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        lim, k, p = math.exp(-lam), 0, rnd.random()
        while p > lim:
            k += 1
            p *= rnd.random()
        return k
    return max(0, int(rnd.gauss(lam, math.sqrt(lam)) + 0.5))


def _to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=TZ)
    return int(round(dt.timestamp() * 1000))


def _to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, TZ)


def _hm(s: str) -> int:
    h, m = s.split(":")
    return int(h) * 60 + int(m)


# Incident catalogue: (rule, stream, duration in minutes, allowed local window in minutes of day).
_CATALOGUE: tuple[tuple[str, str, int, tuple[int, int]], ...] = (
    ("CardImpossibleTravel", TOPIC_TAPS, 2, (7 * 60, 21 * 60 + 30)),
    ("RoadSpeedAnomaly", TOPIC_ROAD, 20, (0, _DAY_MIN)),
    ("HealthCardConcurrentUse", TOPIC_HEALTH, 12, (8 * 60, 17 * 60)),
    ("CardDeclinedBurst", TOPIC_TAPS, 6, (7 * 60, 21 * 60 + 30)),
    ("DataQualityDegraded", TOPIC_ROAD, 8, (0, _DAY_MIN)),
    ("WaitTimeAnomaly", TOPIC_HEALTH, 30, (8 * 60, 16 * 60 + 30)),
    ("EventTampering", TOPIC_TAPS, 1, (7 * 60, 21 * 60 + 30)),
    ("HealthCardRegistrationHoarding", TOPIC_HEALTH, 22, (8 * 60, 16 * 60 + 30)),
    ("UntrustedSource", TOPIC_TAPS, 1, (7 * 60, 21 * 60 + 30)),
    ("RidershipAnomaly", TOPIC_TAPS, 20, (9 * 60, 20 * 60)),
    ("BadSignature", TOPIC_TAPS, 1, (7 * 60, 18 * 60)),
    ("SourceSilent", TOPIC_TAPS, 20, (10 * 60, 20 * 60)),
)
INCIDENT_GAP_S = 15 * 60
SILENT_STATION = (C.METRO_L1, "新区公园")
OUTAGE_LINE = C.METRO_L2
CRASH_SEGMENT = "通江大道-2"
DQ_ROADS = ("延陵西路", "中吴大道", "龙城大道", "晋陵路")  # one vendor's detectors: ~1/4 of all
WAIT_HOSPITAL = "常州市第二人民医院"
ROGUE_SOURCE = "cz-metro-l1-s31"


class _Sim:
    """One simulation run; ``run()`` is the event generator."""

    def __init__(self, seed: int, start: datetime, duration_s: float, rate: float | None,
                 streams: Collection[str], incidents: bool, warmup_s: float) -> None:
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 events/s or None, got {rate}")
        unknown = set(streams) - set(ALL_STREAMS)
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}; choose from {ALL_STREAMS}")
        self.seed = seed
        self.sel = tuple(s for s in ALL_STREAMS if s in streams)  # fixed order, sets are unordered
        self.t0 = _to_ms(start)
        self.t1 = self.t0 + int(round(duration_s * 1000))
        self.run_tag = hashlib.sha256(f"{seed}|{self.t0}".encode()).hexdigest()[:8]
        self.rngs = {n: random.Random(f"{seed}:{n}") for n in
                     ("metro", "bus", "bike", "coach", "park", "road", "health", "keep")}
        self.taps, self.road, self.health = (t in self.sel for t in ALL_STREAMS)
        self.wf = _day_factor(self.t0 // _MIN)  # this minute's weekday/weekend volume factors
        self._scale(rate)
        # Pool sizes guarantee a card is reused only hours (trips) or >1 day (health) later, so
        # normal traffic never implies impossible travel or multi-hospital registration.
        daily_trips = (C.METRO_TRIPS_PER_DAY + C.BUS_BOARDINGS_PER_DAY + C.BIKE_TRIPS_PER_DAY
                       + C.COACH_BOARDINGS_PER_DAY)
        self.n_cards = int(self.k * daily_trips * 0.4) + 20_000
        self.n_park = int(self.k * C.PARKING_ENTRIES_PER_DAY) + 5_000
        self.n_health = int(self.k * C.OUTPATIENT_VISITS_PER_DAY * 1.5) + 10_000
        self.card_off = random.Random(f"{seed}:cards").randrange(_M11)
        self.cc = self.pc = self.hc = 0
        self.seq = 0
        self.xseq = 0
        self.buckets: dict[int, list[tuple[int, tuple[str, dict[str, Any]]]]] = {}
        # minute prefixes "YYYY-MM-DDTHH:MM:" from the window start to 2 days past its end
        # (trips, parking stays and hospital visits end within hours).
        self.mb = self.t0 // _MIN
        self.pf: list[str] = [_to_dt(mi * _MIN).strftime("%Y-%m-%dT%H:%M:") for mi in
                              range(self.mb, self.t1 // _MIN + 2 * _DAY_MIN + 1)]
        self.m = 0
        self.cur: list[tuple[int, tuple[str, dict[str, Any]]]] = []
        self.last_emit: dict[str, int] = {}
        # incident modifiers: (start ms, end ms, target)
        self.outage: tuple[int, int, str] | None = None
        self.silence: tuple[int, int, str] | None = None
        self.crash: tuple[int, int, str] | None = None
        self.dq: tuple[int, int, frozenset[str]] | None = None
        self.slow: tuple[int, int, int] | None = None
        self.truth: list[Incident] = []
        self._monitored = self._keepalive_sources()
        if incidents:
            self._schedule(warmup_s)

    # -- scaling -----------------------------------------------------------------------------------
    def _scale(self, rate: float | None) -> None:
        base_other = 0.0
        m = self.t0 // _MIN
        while m * _MIN < self.t1:
            a, b = max(m * _MIN, self.t0), min((m + 1) * _MIN, self.t1)
            mod = (m + C.UTC_OFFSET_MIN) % _DAY_MIN
            per = (TAPS_EV_PER_MIN[mod] if self.taps else 0.0) + (
                HEALTH_EV_PER_MIN[mod] if self.health else 0.0)
            base_other += per * (b - a) / _MIN
            m += 1
        n_det = len(ROAD_DETECTORS) if self.road else 0
        dur_min = (self.t1 - self.t0) / _MIN
        base_road = n_det * dur_min
        self.road_interval_s = C.ROAD_DETECTOR_INTERVAL_S
        self.k = 1.0
        if rate is None:
            return
        want = rate * dur_min * 60
        total = base_other + base_road
        k = want / total if total > 0 else 1.0
        if self.road:
            self.road_interval_s = max(1, min(300, round(C.ROAD_DETECTOR_INTERVAL_S / k)))
        road_events = n_det * dur_min * 60 / self.road_interval_s
        self.k = max(0.0, (want - road_events) / base_other) if base_other > 0 else k

    # -- small helpers --------------------------------------------------------------------------------
    def _ts(self, t: int) -> str:
        return self.pf[t // _MIN - self.mb] + _SECMS[t % _MIN]

    def _put(self, t: int, item: tuple[int, tuple[str, dict[str, Any]]]) -> None:
        mi = t // _MIN
        if mi == self.m:
            self.cur.append(item)
        else:
            b = self.buckets.get(mi)
            if b is None:
                b = self.buckets[mi] = []
            b.append(item)

    def _card(self) -> str:
        c = self.cc
        self.cc = c + 1
        return str(_CARD_BASE + ((c % self.n_cards) * _PERM_A + self.card_off) % _M11)

    def _xid(self, src: str) -> str:
        self.xseq += 1
        return f"{src}:{self.run_tag}:x{self.xseq}"

    # -- card taps ----------------------------------------------------------------------------------------
    def _metro_trip(self, t: int, od: tuple[Any, ...], rnd: random.Random,
                    card: str | None = None) -> None:
        (src_i, line_i, st_i, la_i, lo_i, src_o, line_o, st_o, la_o, lo_o, fare, ride, _o, _d) = od
        if card is None:
            card = self._card()
        seq = self.seq
        tag = self.run_tag
        pf, mb, sm = self.pf, self.mb, _SECMS
        t0 = self.t0  # during the pre-roll only events inside the window are built
        if rnd.random() < 0.004 and t >= t0:  # a declined first tap (low balance); rider retries
            self._put(t, (t, (TOPIC_TAPS, {
                "event_id": f"{src_i}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                "source": src_i, "card_id": card, "mode": "metro", "line": line_i, "station": st_i,
                "direction": "in", "fare_cny": 0.0, "result": "declined", "lat": la_i,
                "lon": lo_i})))
            seq += 1
            t += 20_000 + int(rnd.random() * 60_000)
        if t >= t0:
            item = (t, (TOPIC_TAPS, {
                "event_id": f"{src_i}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                "source": src_i, "card_id": card, "mode": "metro", "line": line_i, "station": st_i,
                "direction": "in", "fare_cny": 0.0, "result": "ok", "lat": la_i, "lon": lo_i}))
            if t // 60000 == self.m:
                self.cur.append(item)
            else:
                self._put(t, item)
        t2 = t + ride + 60_000 + int(rnd.random() * 420_000) + int(rnd.random() * 120_000)
        if t2 < t0 or t2 >= self.t1:  # outside the window: never yielded, so never built
            self.seq = seq + 2
            return
        mi = t2 // 60000
        item = (t2, (TOPIC_TAPS, {
            "event_id": f"{src_o}:{tag}:{seq + 1}", "ts": pf[mi - mb] + sm[t2 % 60000],
            "source": src_o, "card_id": card, "mode": "metro", "line": line_o, "station": st_o,
            "direction": "out", "fare_cny": fare, "result": "ok", "lat": la_o, "lon": lo_o}))
        bk = self.buckets.get(mi)
        if bk is None:
            bk = self.buckets[mi] = []
        bk.append(item)  # always a later minute: the ride takes > 1 min
        self.seq = seq + 2

    def _metro_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["metro"]
        n = _poisson(rnd, METRO_PER_MIN[mod] * self.k * self.wf["metro"] * (b - a) / _MIN)
        rr, span, od_t, nod = rnd.random, b - a, METRO_OD, len(METRO_OD)
        out = self.outage
        for _ in range(n):
            t = a + int(rr() * span)
            od = od_t[int(rr() * nod)]
            if out is not None and od[1] == out[2] and out[0] <= t < out[1] and rr() >= 0.2:
                continue  # line outage: only ~20% of tap-ins still happen
            self._metro_trip(t, od, rnd)

    def _bus_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["bus"]
        rr = rnd.random
        n = _poisson(rnd, BUS_PER_MIN[mod] * self.k * self.wf["bus"] * (b - a) / _MIN)
        span, tab, ntab, routes, tag, cur = b - a, _BUS_TABLE, len(_BUS_TABLE), BUS_ROUTES, \
            self.run_tag, self.cur
        pf, mb, sm = self.pf, self.mb, _SECMS
        seq, cc, ncards, off = self.seq, self.cc, self.n_cards, self.card_off
        for _ in range(n):
            t = a + int(rr() * span)
            route, fare, stops, vehicles, period = routes[tab[int(rr() * ntab)]]
            nv = len(vehicles)
            v = int(rr() * nv)
            # each vehicle shuttles along its route, so its taps move along the stops plausibly
            x = (t / _MIN / period + v / nv) % 1.0
            last = len(stops) - 1
            c = x * 2 * last
            stop, la, lo = stops[int(c) if c < last else int(2 * last - c)]
            src = vehicles[v]
            r = rr()
            cur.append((t, (TOPIC_TAPS, {
                "event_id": f"{src}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                "source": src, "card_id": str(_CARD_BASE + ((cc % ncards) * _PERM_A + off) % _M11),
                "mode": "bus", "line": route, "station": stop, "direction": "in", "fare_cny": fare,
                "result": "ok" if r > 0.005 else ("declined" if r > 0.001 else "error"),
                "lat": la, "lon": lo})))
            seq += 1
            cc += 1
        self.seq, self.cc = seq, cc

    def _bike_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["bike"]
        rr = rnd.random
        n = _poisson(rnd, BIKE_PER_MIN[mod] * self.k * self.wf["bike"] * (b - a) / _MIN)
        span, tag, t0 = b - a, self.run_tag, self.t0
        pf, mb, sm = self.pf, self.mb, _SECMS
        for _ in range(n):
            t = a + int(rr() * span)
            area, docks = BIKE_AREAS[_BIKE_TABLE[int(rr() * 1024)]]
            so, no, lao, loo = docks[int(rr() * len(docks))]
            sd, nd, lad, lod = docks[int(rr() * len(docks))]
            # >= 6 min for <= 2.8 km inside an area: never faster than a fast cyclist
            dur = 360_000 + int(rr() * rr() * 3_000_000)
            card = self._card()
            seq = self.seq
            self.seq = seq + 2
            t2 = t + dur
            if t2 < t0 or t2 >= self.t1:
                if t >= t0:  # a ride that ends after the window: only the unlock is visible
                    self.cur.append((t, (TOPIC_TAPS, {
                        "event_id": f"{so}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                        "source": so, "card_id": card, "mode": "bike", "line": area,
                        "station": no, "direction": "in", "fare_cny": 0.0, "result": "ok",
                        "lat": lao, "lon": loo})))
                continue
            if t >= t0:
                self.cur.append((t, (TOPIC_TAPS, {
                    "event_id": f"{so}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                    "source": so, "card_id": card, "mode": "bike", "line": area, "station": no,
                    "direction": "in", "fare_cny": 0.0, "result": "ok", "lat": lao, "lon": loo})))
            self._put(t2, (t2, (TOPIC_TAPS, {
                "event_id": f"{sd}:{tag}:{seq + 1}", "ts": pf[t2 // 60000 - mb] + sm[t2 % 60000],
                "source": sd, "card_id": card,
                "mode": "bike", "line": area, "station": nd, "direction": "out",
                "fare_cny": 0.0 if dur <= 3_600_000 else 1.0, "result": "ok", "lat": lad,
                "lon": lod})))

    def _coach_event(self, t: int, gate: str, station: str, route: str, fare: float, card: str,
                     event_id: str, key: bytes | None) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_id": event_id, "ts": self._ts(t), "source": gate, "card_id": card, "mode": "coach",
            "line": route, "station": station, "direction": "in", "fare_cny": fare, "result": "ok"}
        ev["sig"] = sign(ev, key) if key is not None else ""
        return ev

    def _coach_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["coach"]
        rr = rnd.random
        n = _poisson(rnd, COACH_PER_MIN[mod] * self.k * self.wf["coach"] * (b - a) / _MIN)
        for _ in range(n):
            t = a + int(rr() * (b - a))
            gate, station = _COACH_GATES[_COACH_TABLE[int(rr() * 1024)]]
            route, fare, _w = C.COACH_ROUTES[_COACH_ROUTE_TABLE[int(rr() * 1024)]]
            ev = self._coach_event(t, gate, station, route, fare, self._card(),
                                   f"{gate}:{self.run_tag}:{self.seq}", _COACH_KEYS[gate])
            self.seq += 1
            self.cur.append((t, (TOPIC_TAPS, ev)))

    def _park_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["park"]
        rr = rnd.random
        n = _poisson(rnd, PARK_PER_MIN[mod] * self.k * self.wf["park"] * (b - a) / _MIN)
        ts, tag = self._ts, self.run_tag
        for _ in range(n):
            t = a + int(rr() * (b - a))
            p = _PARK_TABLE[int(rr() * 1024)]
            lot = C.PARKING_LOTS[p][0]
            src = C.parking_gate_id(p + 1)
            c = self.pc
            self.pc = c + 1
            card = str(_PARK_CARD_BASE + ((c % self.n_park) * _PERM_A + self.card_off) % _M11)
            stay = 600_000 + int(rr() * rr() * 8 * 3_600_000)
            hours = stay / 3_600_000
            fare = 0.0 if hours <= 0.5 else float(min(30, math.ceil(hours)
                                                      * C.PARKING_RATE_CNY_PER_H))
            seq = self.seq
            self.seq = seq + 2
            t2 = t + stay
            if t2 < self.t0:
                continue
            if t >= self.t0:
                self.cur.append((t, (TOPIC_TAPS, {
                    "event_id": f"{src}:{tag}:{seq}", "ts": ts(t), "source": src, "card_id": card,
                    "mode": "parking", "line": lot, "direction": "in", "fare_cny": 0.0,
                    "result": "ok"})))
            if t2 < self.t1:
                self._put(t2, (t2, (TOPIC_TAPS, {
                    "event_id": f"{src}:{tag}:{seq + 1}", "ts": ts(t2), "source": src,
                    "card_id": card, "mode": "parking", "line": lot, "direction": "out",
                    "fare_cny": fare, "result": "ok"})))

    # -- road detectors --------------------------------------------------------------------------------
    def _road_minute(self, a: int, b: int, mod: int) -> None:
        rr = self.rngs["road"].random
        isec = self.road_interval_s
        iv = isec * 1000
        vc = _ROAD_VC[mod] * self.wf["road"]
        per = iv / 3_600_000
        tag, cur = self.run_tag, self.cur
        pf, mb, sm = self.pf, self.mb, _SECMS
        crash, dq = self.crash, self.dq
        seq = self.seq
        for src, seg, _road, free, cap, factor, phase in ROAD_DETECTORS:
            ph = int(phase * iv)
            t = ph + ((a - ph + iv - 1) // iv) * iv
            while t < b:
                x = vc * factor * (0.94 + 0.12 * rr())
                flow = int(cap * x * per + rr())
                speed = free / (1.0 + x ** 4) * (0.92 + 0.16 * rr())
                occ = 0.02 + 0.55 * x * x
                if crash is not None and seg == crash[2] and crash[0] <= t < crash[1]:
                    speed, occ, flow = 8.0 + 4.0 * rr(), 0.6 + 0.15 * rr(), int(flow * 0.35)
                ev: dict[str, Any] = {
                    "event_id": f"{src}:{tag}:{seq}", "ts": pf[t // 60000 - mb] + sm[t % 60000],
                    "source": src, "segment": seg,
                    "flow": flow, "speed_kmh": round(speed, 1), "occupancy": round(occ, 3),
                    "interval_s": isec}
                if dq is not None and src in dq[2] and dq[0] <= t < dq[1]:
                    bug = seq % 3  # firmware bug: wrong types and out-of-range values
                    if bug == 0:
                        ev["speed_kmh"] = f"{speed:.1f}"
                    elif bug == 1:
                        ev["flow"] = -1 - flow
                    else:
                        ev["occupancy"] = round(1.5 + occ, 3)
                cur.append((t, (TOPIC_ROAD, ev)))
                seq += 1
                t += iv
        self.seq = seq

    # -- health ----------------------------------------------------------------------------------------
    def _wait(self, t: int, hi: int, share: float, rr: Any) -> int:
        mod = (t // _MIN + C.UTC_OFFSET_MIN) % _DAY_MIN
        return int(_WAIT_BASE[mod] * _day_factor(t // _MIN)["wait"] * _HOSP[hi][2] * share * (0.6 + 0.8 * rr()))

    def _hcard(self) -> str:
        c = self.hc
        self.hc = c + 1
        return str(_HEALTH_CARD_BASE + ((c % self.n_health) * _PERM_A + self.card_off) % _M11)

    def _hevent(self, t: int, src: str, card: str, hi: int, dept: str, kind: str, channel: str,
                wait: int, amount: float, result: str, event_id: str | None = None) -> None:
        if event_id is None:
            event_id = f"{src}:{self.run_tag}:{self.seq}"
            self.seq += 1
        if t < self.t0 or t >= self.t1:  # pre-roll, or after the window: never yielded
            return
        slow = self.slow
        if slow is not None and hi == slow[2] and slow[0] <= t < slow[1]:
            # The anomaly is in the reported waits of steps *happening* in the window, so it is
            # visible from its start (shifting ts by the longer wait would delay it by hours).
            wait *= 5
        self._put(t, (t, (TOPIC_HEALTH, {
            "event_id": event_id, "ts": self._ts(t), "source": src, "card_id": card,
            "hospital": _HOSP[hi][0], "department": dept, "kind": kind, "channel": channel,
            "wait_s": wait, "amount_cny": amount, "result": result})))

    def _visit(self, t: int, hi: int, rnd: random.Random, channel: str | None = None,
               src: str | None = None) -> None:
        rr = rnd.random
        _name, _code, _qf, depts, srcs = _HOSP[hi]
        his = srcs["other"][0]
        if channel is None:
            r = rr()
            channel = "app" if r < 0.4 else ("kiosk" if r < 0.75 else "window")
        if src is None:
            lst = srcs[channel]
            src = lst[int(rr() * len(lst))]
        card = self._hcard()
        regs = [depts[int(rr() * len(depts))]]
        if rr() < _SECOND_REG_P:  # a second department at the same hospital the same morning
            regs.append(depts[int(rr() * len(depts))])
        share = {"app": 0.0, "kiosk": 0.08, "window": 0.25}[channel]
        tr = t
        for i, dept in enumerate(regs):
            if i:
                tr += 60_000 + int(rr() * 240_000)
            w = self._wait(tr, hi, share, rr)
            tr += w * 1000
            ok = rr() > 0.002
            self._hevent(tr, src, card, hi, dept, "register", channel, w,
                         30.0 if rr() < 0.2 else 10.0, "ok" if ok else "failed")
            if not ok:
                return
        tc = tr
        for dept in regs:
            tc += 180_000 + int(rr() * 420_000)
            w = self._wait(tc, hi, 1.0, rr)
            tc += w * 1000
            self._hevent(tc, his, card, hi, dept, "consult", "other", w, 0.0, "ok")
            tc += 240_000 + int(rr() * 660_000)
        pay_ch = "app" if rr() < 0.5 else ("kiosk" if rr() < 0.7 else "window")
        pay_src = srcs[pay_ch][int(rr() * len(srcs[pay_ch]))]
        w = self._wait(tc, hi, 0.0 if pay_ch == "app" else 0.15, rr)
        tp = tc + w * 1000
        amount = round(min(5000.0, math.exp(rnd.gauss(4.6, 0.8))), 2)
        ok = rr() > 0.005
        self._hevent(tp, pay_src, card, hi, regs[-1], "pay", pay_ch, w, amount,
                     "ok" if ok else "failed")
        if not ok:
            return
        r = rr()
        kind, share = ("dispense", 0.3) if r < 0.6 else (("lab", 0.4) if r < 0.85 else ("imaging", 0.8))
        ta = tp + 60_000 + int(rr() * 300_000)
        w = self._wait(ta, hi, share, rr)
        self._hevent(ta + w * 1000, his, card, hi, regs[-1], kind, "other", w, 0.0, "ok")

    def _health_minute(self, a: int, b: int, mod: int) -> None:
        rnd = self.rngs["health"]
        rr = rnd.random
        n = _poisson(rnd, VISITS_PER_MIN[mod] * self.k * self.wf["health"] * (b - a) / _MIN)
        for _ in range(n):
            self._visit(a + int(rr() * (b - a)), _HOSP_TABLE[int(rr() * 4096)], rnd)

    # -- keep-alive: monitored sources never fall silent in service hours at any rate ------------
    def _keepalive_sources(self) -> list[tuple[str, int, int, int, str, Any]]:
        out: list[tuple[str, int, int, int, str, Any]] = []
        for sid, s in C.SOURCES.items():
            if s.max_silence_s is None or s.service_hours is None or s.topic not in self.sel:
                continue
            o, c = (_hm(x) for x in s.service_hours)
            if s.kind == "metro_gate":
                target: Any = _STATION_IDX[(s.location.split(" ")[0], s.location.split(" ")[1][:-1])]
                out.append((sid, o, c, s.max_silence_s * 1000, "metro", target))
            elif s.kind.startswith("hospital_"):
                hi = next(i for i, h in enumerate(_HOSP) if sid in chain(*h[4].values()))
                out.append((sid, o, c, s.max_silence_s * 1000, "health", (hi, s.kind[9:])))
        return out

    def _keepalive(self, a: int, b: int, mod: int) -> bool:
        rnd = self.rngs["keep"]
        added = False
        day0 = (a // _MIN - mod) * _MIN
        me = (a // _MIN + 1) * _MIN
        sil = self.silence
        for sid, o, c, gap, kind, target in self._monitored:
            if not (o <= mod < c):
                continue
            if sil is not None and sid == sil[2] and sil[0] <= me and a < sil[1]:
                continue
            ref = max(self.last_emit.get(sid, -1), day0 + o * _MIN)
            if me - ref <= gap // 2:
                continue
            t = a + int(rnd.random() * (b - a))
            if kind == "metro":
                lst = METRO_OD_BY_ORIGIN[target]
                self._metro_trip(t, lst[int(rnd.random() * len(lst))], rnd)
            else:
                self._visit(t, target[0], rnd, channel=target[1], src=sid)
            added = True
        return added

    # -- incidents -------------------------------------------------------------------------------------
    def _schedule(self, warmup_s: float) -> None:
        cursor = self.t0 + int(warmup_s * 1000)
        cursor = -(-cursor // _MIN) * _MIN
        todo = [k for k in _CATALOGUE if k[1] in self.sel]
        while todo:
            best: tuple[int, int] | None = None
            for i, (_rule, _stream, dur, (lo, hi)) in enumerate(todo):
                t = cursor
                while t + (dur + 1) * _MIN <= self.t1:
                    mod = (t // _MIN + C.UTC_OFFSET_MIN) % _DAY_MIN
                    if lo <= mod and mod + dur <= hi:
                        break
                    t += _MIN
                else:
                    continue
                if best is None or t < best[0]:
                    best = (t, i)
            if best is None:
                break
            t, i = best
            rule, _stream, dur, _w = todo.pop(i)
            getattr(self, f"_inj_{rule}")(t + 20_000, dur * _MIN)  # +20 s: off the minute edge
            cursor = t + dur * _MIN + INCIDENT_GAP_S * 1000
        self.truth.sort(key=lambda x: x.start)

    def _xcard(self, health: bool = False) -> str:
        self.xseq += 1
        return str((_X_HEALTH_CARD_BASE if health else _X_CARD_BASE) + self.xseq)

    def _tap(self, t: int, st: tuple[str, str], direction: str, card: str, fare: float = 0.0,
             result: str = "ok", source: str | None = None) -> dict[str, Any]:
        s = C.METRO_STATIONS[_STATION_IDX[st]]
        src = C.metro_station_id(s)
        ev = {"event_id": self._xid(source or src), "ts": self._ts(t), "source": source or src,
              "card_id": card, "mode": "metro", "line": s.line, "station": s.name,
              "direction": direction, "fare_cny": fare, "result": result, "lat": s.lat, "lon": s.lon}
        self._put(t, (t, (TOPIC_TAPS, ev)))
        return ev

    def _add(self, rule: str, entity: dict[str, str], start: int, desc: str,
             end: int | None = None) -> None:
        self.truth.append(Incident(rule, entity, _to_dt(start), desc,
                                   _to_dt(end if end is not None else start)))

    def _inj_CardImpossibleTravel(self, t: int, dur: int) -> None:
        card = self._xcard()
        self._tap(t, (C.METRO_L1, "常州北站"), "in", card)
        self._tap(t + 110_000, (C.METRO_L1, "湖塘"), "in", card)
        self._add("CardImpossibleTravel", {"card": card}, t + 110_000,
                  "cloned card: taps at 常州北站 then 湖塘 (~15.6 km) 110 s apart (~510 km/h)")

    def _inj_CardDeclinedBurst(self, t: int, dur: int) -> None:
        card = self._xcard()
        for i in range(6):
            self._tap(t + i * 55_000, (C.METRO_L2, "南大街"), "in", card, result="declined")
        self._add("CardDeclinedBurst", {"card": card}, t + 4 * 55_000,
                  "6 declined taps at 南大街 within 5 min (5th declined tap is the trigger)",
                  t + 5 * 55_000)

    def _inj_EventTampering(self, t: int, dur: int) -> None:
        card = self._xcard()
        self._tap(t - 18 * _MIN, (C.METRO_L1, "翠竹"), "in", card)
        ev = self._tap(t, (C.METRO_L1, "湖塘"), "out", card, fare=4.0)
        # The replay must keep the original ts; yielding it right after the original keeps the
        # stream in non-decreasing event time while the content (fare) differs.
        self._put(t, (t, (TOPIC_TAPS, dict(ev, fare_cny=0.4))))
        self._add("EventTampering", {"event_id": ev["event_id"]}, t,
                  "tap-out re-sent with the same event_id and fare_cny changed 4.0 -> 0.4")

    def _inj_UntrustedSource(self, t: int, dur: int) -> None:
        self._tap(t, (C.METRO_L1, "文化宫"), "in", self._xcard(), source=ROGUE_SOURCE)
        self._add("UntrustedSource", {"source": ROGUE_SOURCE}, t,
                  f"tap from unregistered reader {ROGUE_SOURCE} at 文化宫")

    def _inj_BadSignature(self, t: int, dur: int) -> None:
        gate, station = _COACH_GATES[1]
        ev = self._coach_event(t, gate, station, "常州—南京", 50.0, self._xcard(), self._xid(gate),
                               b"not-the-device-key")
        self._put(t, (t, (TOPIC_TAPS, ev)))
        self._add("BadSignature", {"source": gate}, t, f"coach gate {gate} event with a wrong HMAC")

    def _inj_SourceSilent(self, t: int, dur: int) -> None:
        s = C.METRO_STATIONS[_STATION_IDX[SILENT_STATION]]
        sid = C.metro_station_id(s)
        last = t - 1000
        self._tap(last, SILENT_STATION, "in", self._xcard())
        self.silence = (t, t + dur, sid)
        gap = (C.SOURCES[sid].max_silence_s or 0) * 1000
        self._add("SourceSilent", {"source": sid}, last + gap,
                  f"gate reader {sid} ({s.line} {s.name}) silent for {dur // _MIN} min",
                  t + dur)

    def _inj_DataQualityDegraded(self, t: int, dur: int) -> None:
        bad = frozenset(d[0] for d in ROAD_DETECTORS if d[2] in DQ_ROADS)
        self.dq = (t, t + dur, bad)
        share = len(bad) / len(ROAD_DETECTORS)
        # Detectable from the first bad minute: the rule judges the share over the trailing 5 minutes.
        self._add("DataQualityDegraded", {"stream": TOPIC_ROAD}, t,
                  f"firmware bug on {len(bad)} detectors ({'/'.join(DQ_ROADS)}): {share:.0%} of "
                  f"road events invalid for {dur // _MIN} min", t + dur)

    def _inj_RidershipAnomaly(self, t: int, dur: int) -> None:
        self.outage = (t, t + dur, OUTAGE_LINE)
        self._add("RidershipAnomaly", {"line": OUTAGE_LINE}, t,
                  f"{OUTAGE_LINE} outage: tap-ins fall to ~20% for {dur // _MIN} min", t + dur)

    def _inj_RoadSpeedAnomaly(self, t: int, dur: int) -> None:
        self.crash = (t, t + dur, CRASH_SEGMENT)
        self._add("RoadSpeedAnomaly", {"segment": CRASH_SEGMENT}, t,
                  f"crash on {CRASH_SEGMENT}: speed ~10 km/h for {dur // _MIN} min", t + dur)

    def _inj_WaitTimeAnomaly(self, t: int, dur: int) -> None:
        self.slow = (t, t + dur, _HOSP_IDX[WAIT_HOSPITAL])
        self._add("WaitTimeAnomaly", {"hospital": WAIT_HOSPITAL}, t,
                  f"{WAIT_HOSPITAL}: queue waits x5 for {dur // _MIN} min", t + dur)

    def _xreg(self, t: int, hi: int, card: str, dept: str) -> None:
        src = _HOSP[hi][4]["app"][0]
        self._hevent(t, src, card, hi, dept, "register", "app", 0, 10.0, "ok", self._xid(src))

    def _inj_HealthCardConcurrentUse(self, t: int, dur: int) -> None:
        card = self._xcard(health=True)
        a, b = _HOSP_IDX["常州市第一人民医院"], _HOSP_IDX["武进人民医院"]
        self._xreg(t, a, card, "内科")
        self._xreg(t + 11 * _MIN, b, card, "内科")
        self._add("HealthCardConcurrentUse", {"card": card}, t + 11 * _MIN,
                  "registrations at 常州市第一人民医院 and 武进人民医院 11 min apart")

    def _inj_HealthCardRegistrationHoarding(self, t: int, dur: int) -> None:
        card = self._xcard(health=True)
        hi = _HOSP_IDX["常州市中医医院"]
        depts = _HOSP[hi][3]
        for i in range(8):
            self._xreg(t + i * 3 * _MIN, hi, card, depts[i % len(depts)])
        self._add("HealthCardRegistrationHoarding", {"card": card}, t + 6 * 3 * _MIN,
                  "8 app registrations at 常州市中医医院 in 21 min (the 7th exceeds 6/day)",
                  t + 7 * 3 * _MIN)

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(topic, event)`` in non-decreasing event time."""
        key = itemgetter(0)
        second = itemgetter(1)
        gens = []
        if self.taps:
            gens += [self._metro_minute, self._bus_minute, self._bike_minute, self._coach_minute,
                     self._park_minute]
        if self.road:
            gens.append(self._road_minute)
        if self.health:
            gens.append(self._health_minute)
        m = self.t0 // _MIN
        # Pre-roll: start multi-event activities (trips, stays, visits) before the window so it
        # opens in steady state (tap-outs of trips already under way, patients already queuing).
        # Only events inside the window are built; the pre-roll is capped at the window length
        # so short high-rate runs do not pay for hours of discarded activity.
        cap = max(1, math.ceil((self.t1 - self.t0) / _MIN))
        pre: list[tuple[Any, int]] = []
        if self.taps:
            pre += [(self._metro_minute, min(120, cap)), (self._bike_minute, min(60, cap)),
                    (self._park_minute, min(540, cap))]
        if self.health:
            pre.append((self._health_minute, min(240, cap)))
        for pm in range(m - max((p for _g, p in pre), default=0), m):
            self.m, self.cur = pm, []
            self.wf = _day_factor(pm)
            pmod = (pm + C.UTC_OFFSET_MIN) % _DAY_MIN
            for g, p in pre:
                if pm >= m - p:
                    g(pm * _MIN, (pm + 1) * _MIN, pmod)
        le = self.last_emit
        monitored = bool(self._monitored)
        while m * _MIN < self.t1:
            a, b = max(m * _MIN, self.t0), min((m + 1) * _MIN, self.t1)
            mod = (m + C.UTC_OFFSET_MIN) % _DAY_MIN
            self.m = m
            self.wf = _day_factor(m)
            cur = self.buckets.pop(m, None) or []
            self.cur = cur
            for g in gens:
                g(a, b, mod)
            sil = self.silence
            if sil is not None and sil[0] < b and a < sil[1]:
                cur[:] = [it for it in cur if not (it[1][1]["source"] == sil[2]
                                                   and sil[0] <= it[0] < sil[1])]
            cur.sort(key=key)
            if monitored:
                # cur is sorted, so the last write per source is its latest event time
                le.update({pr[1]["source"]: t for t, pr in cur})
                if self._keepalive(a, b, mod):
                    cur.sort(key=key)
                    le.update({pr[1]["source"]: t for t, pr in cur})
            if a > m * _MIN or b < (m + 1) * _MIN:  # partial first/last minute of the window
                cur = [it for it in cur if a <= it[0] < b]
            yield from map(second, cur)
            m += 1


def _make(seed: int, start: datetime, duration_s: float, rate: float | None,
          streams: Collection[str], incidents: bool, warmup_s: float) -> _Sim:
    return _Sim(seed, start, duration_s, rate, streams, incidents, warmup_s)


def generate(*, seed: int, start: datetime, duration_s: float, rate: float | None = None,
             streams: Collection[str] = ALL_STREAMS, incidents: bool = False,
             warmup_s: float = 7200.0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Simulated events as ``(topic, event)`` in non-decreasing event time.

    ``start``: first event time (a naive datetime is taken as Asia/Shanghai local time);
    ``duration_s``: simulated seconds; ``rate``: mean events/s over the window across the selected
    streams (``None`` = Changzhou's realistic volume at those times of day; road detectors report
    every 1–300 s, so the road stream alone cannot go below/above that range); ``incidents``:
    inject the incident catalogue after ``warmup_s`` seconds (default 2 h) of normal traffic.
    Deterministic in all arguments.
    """
    return _make(seed, start, duration_s, rate, streams, incidents, warmup_s).run()


def generate_with_truth(*, seed: int, start: datetime, duration_s: float, rate: float | None = None,
                        streams: Collection[str] = ALL_STREAMS, warmup_s: float = 7200.0
                        ) -> tuple[Iterator[tuple[str, dict[str, Any]]], list[Incident]]:
    """Like ``generate(incidents=True)`` and also the injected incidents' ground truth.

    Incidents that do not fit the window (after warm-up, inside their service hours, 15 min apart)
    are not injected and not listed.
    """
    sim = _make(seed, start, duration_s, rate, streams, True, warmup_s)
    return sim.run(), list(sim.truth)
