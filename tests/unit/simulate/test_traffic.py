"""Unit tests for the Changzhou event simulator (determinism, contracts, realism, incidents)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import pytest

from cityops.simulate import city as C
from cityops.simulate.traffic import (
    RULES,
    TZ,
    Incident,
    generate,
    generate_with_truth,
    verify,
)

DAY0 = datetime(2026, 11, 25, 0, 0, tzinfo=TZ)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}:\d{2}$")
Event = tuple[str, dict[str, Any]]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def contract_errors(topic: str, ev: dict[str, Any]) -> list[str]:
    """Everything wrong with one event against the stream contracts (empty list = valid)."""
    err = []
    for k in ("event_id", "ts", "source"):
        if not isinstance(ev.get(k), str) or not ev[k]:
            err.append(f"{k} missing")
    if isinstance(ev.get("ts"), str) and not RFC3339.match(ev["ts"]):
        err.append("ts not RFC 3339 with offset")
    if topic == C.TOPIC_TAPS:
        if not isinstance(ev.get("card_id"), str):
            err.append("card_id")
        if ev.get("mode") not in ("metro", "bus", "bike", "coach", "parking"):
            err.append("mode")
        if not isinstance(ev.get("line"), str) or not ev["line"]:
            err.append("line")
        if "station" in ev and not isinstance(ev["station"], str):
            err.append("station")
        if ev.get("direction") not in ("in", "out"):
            err.append("direction")
        if not _num(ev.get("fare_cny")) or ev["fare_cny"] < 0:
            err.append("fare_cny")
        if ev.get("result") not in ("ok", "declined", "error"):
            err.append("result")
        if ev.get("mode") in ("metro", "bus", "bike"):
            lat, lon = ev.get("lat"), ev.get("lon")
            if not (_num(lat) and _num(lon) and 31.6 <= lat <= 31.92 and 119.8 <= lon <= 120.1):
                err.append("lat/lon")
    elif topic == C.TOPIC_ROAD:
        if not isinstance(ev.get("segment"), str):
            err.append("segment")
        if not isinstance(ev.get("flow"), int) or isinstance(ev["flow"], bool) or ev["flow"] < 0:
            err.append("flow")
        if not _num(ev.get("speed_kmh")) or ev["speed_kmh"] < 0:
            err.append("speed_kmh")
        if not _num(ev.get("occupancy")) or not 0 <= ev["occupancy"] <= 1:
            err.append("occupancy")
        if not isinstance(ev.get("interval_s"), int) or ev["interval_s"] <= 0:
            err.append("interval_s")
    elif topic == C.TOPIC_HEALTH:
        for k in ("card_id", "hospital"):
            if not isinstance(ev.get(k), str):
                err.append(k)
        if ev.get("kind") not in ("register", "consult", "pay", "dispense", "lab", "imaging"):
            err.append("kind")
        if ev.get("channel") not in ("kiosk", "app", "window", "other"):
            err.append("channel")
        if not _num(ev.get("wait_s")) or ev["wait_s"] < 0:
            err.append("wait_s")
        if not _num(ev.get("amount_cny")) or ev["amount_cny"] < 0:
            err.append("amount_cny")
        if ev.get("result") not in ("ok", "failed"):
            err.append("result")
    else:
        err.append(f"unknown topic {topic}")
    return err


def _dt(ev: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(ev["ts"])


@lru_cache(maxsize=None)
def normal_day() -> tuple[Event, ...]:
    """One full day of normal traffic at a reduced rate (keeps the test fast)."""
    return tuple(generate(seed=7, start=DAY0, duration_s=86_400, rate=4.0))


@lru_cache(maxsize=None)
def incident_day() -> tuple[tuple[Event, ...], tuple[Incident, ...]]:
    it, truth = generate_with_truth(seed=11, start=DAY0, duration_s=86_400, rate=6.0)
    return tuple(it), tuple(truth)


def test_same_seed_same_events_and_different_seed_differs() -> None:
    start = DAY0 + timedelta(hours=8)
    a = list(generate(seed=3, start=start, duration_s=600))
    b = list(generate(seed=3, start=start, duration_s=600))
    c = list(generate(seed=4, start=start, duration_s=600))
    assert a == b and len(a) > 1000
    assert a != c


def test_incident_runs_are_deterministic() -> None:
    kw: dict[str, Any] = {"seed": 5, "start": DAY0 + timedelta(hours=6), "duration_s": 14 * 3600,
                          "rate": 3.0}
    it1, t1 = generate_with_truth(**kw)
    it2, t2 = generate_with_truth(**kw)
    assert t1 == t2
    assert list(it1) == list(it2)


def test_ts_monotonic_rfc3339_and_event_ids_unique() -> None:
    evs = normal_day()
    prev = None
    ids = set()
    for _topic, ev in evs:
        assert RFC3339.match(ev["ts"]) and ev["ts"].endswith("+08:00"), ev["ts"]
        t = _dt(ev)
        assert prev is None or t >= prev
        prev = t
        ids.add(ev["event_id"])
    assert len(ids) == len(evs)
    assert _dt(evs[0][1]) >= DAY0 and prev is not None and prev < DAY0 + timedelta(days=1)


def test_every_normal_event_satisfies_its_contract() -> None:
    bad = [(t, ev, e) for t, ev in normal_day() if (e := contract_errors(t, ev))]
    assert not bad, bad[:3]
    assert {t for t, _ in normal_day()} == set(C.TOPICS)
    assert {ev["mode"] for t, ev in normal_day() if t == C.TOPIC_TAPS} == {
        "metro", "bus", "bike", "coach", "parking"}


def test_all_normal_sources_are_registered() -> None:
    assert {ev["source"] for _t, ev in normal_day()} <= set(C.SOURCES)


def test_rush_hour_busier_than_night_and_metro_closed_at_3() -> None:
    by_hour: Counter[tuple[str, int]] = Counter()
    road_flow: Counter[int] = Counter()
    for topic, ev in normal_day():
        h = _dt(ev).hour
        if topic == C.TOPIC_TAPS:
            by_hour[(ev["mode"], h)] += 1
        elif topic == C.TOPIC_ROAD:
            road_flow[h] += ev["flow"]
    assert by_hour[("metro", 3)] == 0 and by_hour[("bus", 3)] == 0
    assert by_hour[("metro", 8)] > 3 * by_hour[("metro", 13)] / 2 > 0
    assert road_flow[8] > 5 * road_flow[3] > 0
    assert all(by_hour[("metro", h)] == 0 for h in range(0, 6))


def test_hospital_waits_grow_in_the_morning() -> None:
    waits: dict[int, list[int]] = defaultdict(list)
    for topic, ev in normal_day():
        if topic == C.TOPIC_HEALTH and ev["kind"] == "consult":
            waits[_dt(ev).hour].append(ev["wait_s"])
    mean = {h: sum(v) / len(v) for h, v in waits.items() if v}
    assert mean[10] > 2 * mean[7]


def test_metro_trips_are_physically_plausible() -> None:
    ins: dict[str, datetime] = {}
    n = 0
    for topic, ev in normal_day():
        if topic == C.TOPIC_TAPS and ev["mode"] == "metro" and ev["result"] == "ok":
            if ev["direction"] == "in":
                ins[ev["card_id"]] = _dt(ev)
            elif ev["card_id"] in ins:
                assert _dt(ev) - ins.pop(ev["card_id"]) >= timedelta(minutes=2)
                n += 1
    assert n > 1000


def _speed_violations(evs: tuple[Event, ...]) -> list[tuple[str, float, float]]:
    last: dict[str, tuple[datetime, float, float]] = {}
    out = []
    for topic, ev in evs:
        if topic != C.TOPIC_TAPS or "lat" not in ev or contract_errors(topic, ev):
            continue
        t = _dt(ev)
        prev = last.get(ev["card_id"])
        if prev is not None:
            km = C.haversine_km(prev[1], prev[2], ev["lat"], ev["lon"])
            hours = max((t - prev[0]).total_seconds(), 0.001) / 3600
            if km > 1 and km / hours > 150:
                out.append((ev["card_id"], km, km / hours))
        last[ev["card_id"]] = (t, ev["lat"], ev["lon"])
    return out


def test_no_normal_card_implies_impossible_travel() -> None:
    assert _speed_violations(normal_day()) == []
    # and at the realistic (much denser) volume during a rush hour
    rush = tuple(generate(seed=2, start=DAY0 + timedelta(hours=7, minutes=30), duration_s=3600,
                          streams=(C.TOPIC_TAPS,)))
    assert len(rush) > 100_000
    assert _speed_violations(rush) == []


def _declined_bursts(evs: tuple[Event, ...], limit: int) -> set[str]:
    times: dict[str, list[datetime]] = defaultdict(list)
    out = set()
    for topic, ev in evs:
        if topic == C.TOPIC_TAPS and ev.get("result") == "declined":
            lst = times[ev["card_id"]]
            lst.append(_dt(ev))
            recent = [x for x in lst if lst[-1] - x <= timedelta(minutes=10)]
            if len(recent) > limit:
                out.add(ev["card_id"])
    return out


def _health_violations(evs: tuple[Event, ...]) -> tuple[set[str], set[str]]:
    regs: dict[tuple[str, str], list[tuple[datetime, str]]] = defaultdict(list)
    for topic, ev in evs:
        if topic == C.TOPIC_HEALTH and ev.get("kind") == "register":
            t = _dt(ev)
            regs[(ev["card_id"], t.date().isoformat())].append((t, ev["hospital"]))
    hoard = {c for (c, _d), v in regs.items() if len(v) > 6}
    multi = set()
    for (c, _d), v in regs.items():
        for (t1, h1), (t2, h2) in zip(v, v[1:]):
            if h1 != h2 and t2 - t1 <= timedelta(minutes=30):
                multi.add(c)
    return hoard, multi


def test_normal_cards_respect_declined_and_health_limits() -> None:
    evs = normal_day()
    assert _declined_bursts(evs, 2) == set()
    hoard, multi = _health_violations(evs)
    assert hoard == set() and multi == set()
    per_day: Counter[str] = Counter()
    hospitals: dict[str, set[str]] = defaultdict(set)
    for topic, ev in evs:
        if topic == C.TOPIC_HEALTH and ev["kind"] == "register":
            per_day[ev["card_id"]] += 1
            hospitals[ev["card_id"]].add(ev["hospital"])
    assert max(per_day.values()) <= 3
    assert max(len(h) for h in hospitals.values()) == 1


def _silence_gaps(evs: tuple[Event, ...]) -> dict[str, float]:
    """Longest in-service-hours gap (s) per monitored source, measured from service open."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for _topic, ev in evs:
        times[ev["source"]].append(_dt(ev))
    worst: dict[str, float] = {}
    day_end = DAY0 + timedelta(days=1)
    for sid, src in C.SOURCES.items():
        if src.max_silence_s is None:
            continue
        if src.service_hours is None:
            o, c = DAY0, day_end
        else:
            (oh, om), (ch, cm) = (map(int, x.split(":")) for x in src.service_hours)
            o, c = DAY0.replace(hour=oh, minute=om), DAY0.replace(hour=ch, minute=cm)
        pts = [o] + [t for t in times.get(sid, []) if o <= t < c] + [c]
        worst[sid] = max((b - a).total_seconds() for a, b in zip(pts, pts[1:]))
    return worst


def test_monitored_sources_never_silent_in_normal_traffic() -> None:
    gaps = _silence_gaps(normal_day())
    over = {s: g for s, g in gaps.items() if g > (C.SOURCES[s].max_silence_s or 0)}
    assert not over, sorted(over.items())[:5]


def test_signed_sources_verify() -> None:
    coach = [ev for t, ev in normal_day() if t == C.TOPIC_TAPS and ev["mode"] == "coach"]
    assert coach
    for ev in coach:
        key = C.signing_key(ev["source"])
        assert key is not None and verify(ev, key)
    unsigned = [ev for t, ev in normal_day() if "sig" in ev and ev["mode"] != "coach"]
    assert unsigned == []


@pytest.mark.parametrize("rate", [5.0, 40.0])
def test_rate_scaling(rate: float) -> None:
    dur = 2 * 3600
    n = sum(1 for _ in generate(seed=1, start=DAY0 + timedelta(hours=9), duration_s=dur, rate=rate))
    assert abs(n / dur - rate) / rate < 0.1


def test_rate_scaling_single_stream() -> None:
    # a visit lasts hours, so the window must be long enough for the pre-roll to reach steady state
    dur = 4 * 3600
    n = sum(1 for _ in generate(seed=1, start=DAY0 + timedelta(hours=9), duration_s=dur, rate=10.0,
                                streams=(C.TOPIC_HEALTH,)))
    assert abs(n / dur - 10.0) / 10.0 < 0.1


def test_bad_arguments_fail_fast() -> None:
    with pytest.raises(ValueError, match="unknown streams"):
        generate(seed=1, start=DAY0, duration_s=60, streams=("traffic.nope",))
    with pytest.raises(ValueError, match="rate"):
        generate(seed=1, start=DAY0, duration_s=60, rate=0)


# --- incidents -----------------------------------------------------------------------------------------
def test_incident_ground_truth_is_complete_and_separated() -> None:
    _evs, truth = incident_day()
    assert sorted(i.rule for i in truth) == sorted(RULES)
    warm = DAY0 + timedelta(hours=2)
    for i in truth:
        assert warm <= i.start < DAY0 + timedelta(days=1), i
        assert i.entity and all(isinstance(v, str) for v in i.entity.values())
    spans = sorted((i.start, i.end or i.start) for i in truth)
    for (_s1, e1), (s2, _e2) in zip(spans, spans[1:]):
        assert s2 - e1 >= timedelta(minutes=10)  # start vs end of the previous one


def _by_rule(truth: tuple[Incident, ...]) -> dict[str, Incident]:
    return {i.rule: i for i in truth}


def test_card_incidents_present_at_the_right_time() -> None:
    evs, truth = incident_day()
    r = _by_rule(truth)
    travel = _speed_violations(evs)
    assert {c for c, _km, _v in travel} == {r["CardImpossibleTravel"].entity["card"]}
    card_taps = [_dt(ev) for t, ev in evs
                 if t == C.TOPIC_TAPS and ev["card_id"] == r["CardImpossibleTravel"].entity["card"]]
    assert card_taps[-1] == r["CardImpossibleTravel"].start
    assert _declined_bursts(evs, 4) == {r["CardDeclinedBurst"].entity["card"]}
    declined = [_dt(ev) for t, ev in evs if t == C.TOPIC_TAPS
                and ev["card_id"] == r["CardDeclinedBurst"].entity["card"]]
    assert declined[4] == r["CardDeclinedBurst"].start


def test_health_incidents_present() -> None:
    evs, truth = incident_day()
    r = _by_rule(truth)
    hoard, multi = _health_violations(evs)
    assert hoard == {r["HealthCardRegistrationHoarding"].entity["card"]}
    assert multi == {r["HealthCardConcurrentUse"].entity["card"]}
    regs = [_dt(ev) for t, ev in evs if t == C.TOPIC_HEALTH
            and ev["card_id"] == r["HealthCardRegistrationHoarding"].entity["card"]]
    assert regs[6] == r["HealthCardRegistrationHoarding"].start


def test_integrity_incidents_present() -> None:
    evs, truth = incident_day()
    r = _by_rule(truth)
    seen: dict[str, dict[str, Any]] = {}
    tampered = []
    for _t, ev in evs:
        if ev["event_id"] in seen and seen[ev["event_id"]] != ev:
            tampered.append((ev["event_id"], _dt(ev)))
        seen[ev["event_id"]] = ev
    assert tampered == [(r["EventTampering"].entity["event_id"], r["EventTampering"].start)]
    rogue = [(ev["source"], _dt(ev)) for _t, ev in evs if ev["source"] not in C.SOURCES]
    assert rogue == [(r["UntrustedSource"].entity["source"], r["UntrustedSource"].start)]
    bad = [(ev["source"], _dt(ev)) for _t, ev in evs
           if "sig" in ev and not verify(ev, C.signing_key(ev["source"]) or b"")]
    assert bad == [(r["BadSignature"].entity["source"], r["BadSignature"].start)]


def test_source_silent_incident() -> None:
    evs, truth = incident_day()
    inc = _by_rule(truth)["SourceSilent"]
    sid = inc.entity["source"]
    gaps = _silence_gaps(evs)
    assert {s for s, g in gaps.items() if g > (C.SOURCES[s].max_silence_s or 0)} == {sid}
    times = [_dt(ev) for _t, ev in evs if ev["source"] == sid]
    before = max(t for t in times if t < inc.start)
    after = min(t for t in times if t > before)
    assert before + timedelta(seconds=C.SOURCES[sid].max_silence_s or 0) == inc.start
    assert after - before >= timedelta(minutes=20)


def test_data_quality_incident_only_invalid_events() -> None:
    evs, truth = incident_day()
    inc = _by_rule(truth)["DataQualityDegraded"]
    assert inc.end is not None
    invalid = [(t, ev) for t, ev in evs if contract_errors(t, ev)]
    assert invalid and all(t == C.TOPIC_ROAD for t, _ in invalid)
    first, last = _dt(invalid[0][1]), _dt(invalid[-1][1])
    assert inc.start <= first < inc.start + timedelta(minutes=1) <= last < inc.end
    in_window = [ev for t, ev in evs if t == C.TOPIC_ROAD and first <= _dt(ev) <= last]
    assert len(invalid) / len(in_window) > 0.05


def test_anomaly_incidents_change_the_signal() -> None:
    evs, truth = incident_day()
    r = _by_rule(truth)

    def window(inc: Incident, shift: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
        assert inc.end is not None
        return inc.start + shift, inc.end + shift

    road = r["RoadSpeedAnomaly"]
    seg = road.entity["segment"]
    a, b = window(road)
    during = [ev["speed_kmh"] for t, ev in evs
              if t == C.TOPIC_ROAD and ev["segment"] == seg and a <= _dt(ev) < b]
    assert during and max(during) <= 12.0

    ride = r["RidershipAnomaly"]
    line = ride.entity["line"]

    def taps_in(lo: datetime, hi: datetime) -> int:
        return sum(1 for t, ev in evs if t == C.TOPIC_TAPS and ev["mode"] == "metro"
                   and ev["line"] == line and ev["direction"] == "in" and lo <= _dt(ev) < hi)

    a, b = window(ride)
    a0, b0 = window(ride, -timedelta(days=0, minutes=45))
    assert taps_in(a, b) < 0.5 * taps_in(a0, b0)

    wait = r["WaitTimeAnomaly"]
    hosp = wait.entity["hospital"]

    def mean_wait(lo: datetime, hi: datetime) -> float:
        w = [ev["wait_s"] for t, ev in evs if t == C.TOPIC_HEALTH and ev["hospital"] == hosp
             and ev["kind"] == "consult" and lo <= _dt(ev) < hi]
        return sum(w) / max(1, len(w))

    a, b = window(wait)
    assert mean_wait(a, b) > 3 * mean_wait(a - timedelta(minutes=45), a - timedelta(minutes=15))
    assert mean_wait(a, a + timedelta(minutes=5)) > 3 * mean_wait(a - timedelta(minutes=5), a)


def test_incident_events_do_not_leak_into_normal_runs() -> None:
    assert [ev for _t, ev in normal_day() if ev["source"] not in C.SOURCES] == []
    assert [1 for t, ev in normal_day() if contract_errors(t, ev)] == []


def test_weekends_have_fewer_commuters_and_shorter_queues() -> None:
    """Saturday 08:00-08:20 against Wednesday's: metro tap-ins and waits scale by WEEKEND_FACTOR."""
    from cityops.simulate.traffic import WEEKEND_FACTOR

    def window(day: datetime) -> tuple[int, list[float]]:
        evs = generate(seed=9, start=day + timedelta(hours=8), duration_s=1200,
                       streams=("traffic.card-taps", "health.card-events"))
        taps, waits = 0, []
        for topic, ev in evs:
            if topic == "traffic.card-taps" and ev.get("mode") == "metro" and ev.get("direction") == "in":
                taps += 1
            elif topic == "health.card-events" and ev.get("wait_s"):
                waits.append(ev["wait_s"])
        return taps, waits

    wed_taps, wed_waits = window(DAY0)
    sat_taps, sat_waits = window(DAY0 + timedelta(days=3))  # 2026-11-28, a Saturday
    assert (DAY0 + timedelta(days=3)).weekday() == 5 and wed_taps > 1000
    assert sat_taps / wed_taps == pytest.approx(WEEKEND_FACTOR["metro"], abs=0.08)
    assert sum(sat_waits) / len(sat_waits) < 0.8 * sum(wed_waits) / len(wed_waits)
