"""End to end against real Tansu + InfluxDB: known events in, KPIs out equal an independent computation.

Also: exact after kill -9 and restart, exact across an InfluxDB outage, flush on SIGTERM, privacy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from cityops.simulate.run import Batcher, events
from tests.conftest import influx_rows, produce

pytestmark = pytest.mark.integration
CST = timezone(timedelta(hours=8))
START = datetime(2026, 11, 25, 7, 30, tzinfo=CST)


def simulate(seed: int, minutes: float, rate: float, batch: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, dict[str, Any]]]]:
    it, _ = events(seed=seed, start=START, duration_s=minutes * 60, rate=rate, streams={"traffic", "health"},
                   incidents=False)
    evs = list(it)
    b = Batcher(batch)
    msgs = [m for m in (b.add(t, v) for t, v in evs) if m is not None] + b.drain()
    return msgs, evs


def expected(evs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[tuple[Any, ...], dict[str, float]]]:
    """The KPI catalogue computed straight from the events, independently of the engine's code."""
    def minute(ts: str) -> int:
        return int(datetime.fromisoformat(ts).timestamp() // 60 * 60)

    rid: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    road_raw: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    hosp_raw: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for topic, e in evs:
        if topic == "traffic.card-taps":
            r = rid[(e["mode"], e["line"], minute(e["ts"]))]
            result = e.get("result", "ok")
            if result == "ok":
                r["taps_in" if e["direction"] == "in" else "taps_out"] += 1
                r["revenue_cny"] += e.get("fare_cny", 0)
            elif result == "declined":
                r["declined"] += 1
            for f in ("taps_in", "taps_out", "declined", "revenue_cny"):
                r[f] += 0
        elif topic == "traffic.road-detectors":
            road_raw[(e["segment"], minute(e["ts"]))].append(e)
        elif topic == "health.card-events":
            hosp_raw[(e["hospital"], minute(e["ts"]))].append(e)
    road = {}
    for k, rs in road_raw.items():
        flow = sum(r["flow"] for r in rs)
        speed = (sum(r["speed_kmh"] * r["flow"] for r in rs) / flow) if flow else sum(r["speed_kmh"] for r in rs) / len(rs)
        road[k] = {"flow": flow, "speed_kmh": speed, "occupancy": sum(r["occupancy"] for r in rs) / len(rs)}
    hosp = {}
    for k, hs in hosp_raw.items():
        ok = [h for h in hs if h.get("result", "ok") == "ok"]
        waits = [h["wait_s"] for h in hs if h.get("wait_s") is not None]
        row = {"registrations": sum(1 for h in ok if h["kind"] == "register"),
               "payments": sum(1 for h in ok if h["kind"] == "pay"),
               "failed": sum(1 for h in hs if h.get("result") == "failed")}
        if waits:
            row["wait_s_mean"] = sum(waits) / len(waits)
            row["wait_s_max"] = max(waits)
        hosp[k] = row
    return {"traffic_ridership": {k: dict(v) for k, v in rid.items()}, "traffic_road": road,
            "health_service": hosp}


def stored(influx: Any) -> dict[str, dict[tuple[Any, ...], dict[str, float]]]:
    out: dict[str, dict[tuple[Any, ...], dict[str, float]]] = {}
    for r in influx_rows(influx, "traffic_ridership"):
        out.setdefault("traffic_ridership", {})[(r["mode"], r["line"], r["time"])] = r
    for r in influx_rows(influx, "traffic_road"):
        out.setdefault("traffic_road", {})[(r["segment"], r["time"])] = r
    for r in influx_rows(influx, "health_service"):
        out.setdefault("health_service", {})[(r["hospital"], r["time"])] = r
    return out


def assert_kpis_equal(exp: dict[str, Any], got: dict[str, Any]) -> None:
    for measurement, rows in exp.items():
        have = got.get(measurement, {})
        missing, extra = set(rows) - set(have), set(have) - set(rows)
        assert not missing and not extra, f"{measurement}: {len(missing)} windows missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra (e.g. {sorted(extra)[:3]})"
        for key, fields in rows.items():
            for f, v in fields.items():
                assert math.isclose(have[key][f], v, rel_tol=1e-6, abs_tol=1e-3), (measurement, key, f, have[key][f], v)


def quality_total(influx: Any, field: str = "accepted") -> int:
    return int(sum(r[field] for r in influx_rows(influx, "stream_quality")))


def wait_written(w: Any, influx: Any, n: int, timeout_s: float = 120.0) -> None:
    """Until InfluxDB holds the commit that covers ``n`` accepted events and nothing is left to write."""
    w.wait(lambda: quality_total(influx) >= n, what=f"{n} accepted events in InfluxDB", timeout_s=timeout_s)
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")


def test_end_to_end_kpis_equal_independent_computation(kafka: Any, influx: Any, worker_factory: Any) -> None:
    msgs, evs = simulate(seed=7, minutes=8, rate=60, batch=20)
    singles, evs2 = simulate(seed=8, minutes=3, rate=20, batch=1)  # single-event messages too
    produce(kafka.url, msgs + singles)
    w = worker_factory().start()
    n = len(evs) + len(evs2)
    wait_written(w, influx, n)
    # Same stream, same topics: KPIs are over the union of both runs' events.
    assert_kpis_equal(expected(evs + evs2), stored(influx))
    quality = influx_rows(influx, "stream_quality")
    assert sum(r["accepted"] for r in quality) == n
    assert sum(r["invalid"] + r["duplicates"] + r["late"] for r in quality) == 0
    # Privacy: no raw card number anywhere in InfluxDB, the worker's log or its metrics.
    raw_cards = {e["card_id"] for _t, e in evs if "card_id" in e}
    dump = orjson.dumps([influx_rows(influx, m) for m in ("traffic_ridership", "health_service")]).decode()
    text = dump + w.log_tail(10**7) + w.metrics()
    assert not [c for c in raw_cards if c in text]
    assert w.terminate() == 0


def test_kill9_mid_stream_then_restart_is_exact(kafka: Any, influx: Any, worker_factory: Any) -> None:
    msgs, evs = simulate(seed=11, minutes=20, rate=120, batch=10)
    produce(kafka.url, msgs)
    n = len(evs)
    w = worker_factory()
    w.start()
    w.wait(lambda: w.counted() >= n // 3, what="a third of the events")
    w.kill9()
    w.start()
    # After the restart the worker counts only what it had not committed; the total must come out exact.
    wait_written(w, influx, n, timeout_s=180)
    assert quality_total(influx) == n
    assert_kpis_equal(expected(evs), stored(influx))


def test_influx_outage_loses_nothing(kafka: Any, influx: Any, worker_factory: Any, tmp_path: Any) -> None:
    from cityops.localstack import start_influxdb

    w = worker_factory(CITYOPS_MAX_PENDING_POINTS="100000")
    w.start()
    first, evs1 = simulate(seed=21, minutes=5, rate=50, batch=10)
    produce(kafka.url, first)
    wait_written(w, influx, len(evs1))
    port = int(influx.url.rsplit(":", 1)[1])
    influx.stop()
    second, evs2 = simulate(seed=22, minutes=5, rate=50, batch=10)
    produce(kafka.url, second)
    w.wait(lambda: w.counted() >= len(evs1) + len(evs2), what="second part consumed while InfluxDB is down")
    # The commit after consumption queues the second part's points; they cannot be written.
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 0) > 0, what="points held back")
    w.wait(lambda: not (w.health() or {}).get("influx_healthy", True), what="sink marked unhealthy")
    assert "cityops_sink_write_errors_total" in w.metrics()
    restarted = start_influxdb(influx.workdir, port)
    try:
        wait_written(w, restarted, len(evs1) + len(evs2))
        assert quality_total(restarted) == len(evs1) + len(evs2)
        assert_kpis_equal(expected(evs1 + evs2), stored(restarted))
    finally:
        restarted.stop()


def test_sigterm_flushes_before_exit(kafka: Any, influx: Any, worker_factory: Any) -> None:
    msgs, evs = simulate(seed=31, minutes=4, rate=40, batch=5)
    produce(kafka.url, msgs)
    # A long flush interval: without the shutdown flush the last points would not be written.
    w = worker_factory(CITYOPS_FLUSH_INTERVAL_S="5")
    w.start()
    w.wait(lambda: w.counted() >= len(evs), what="all consumed", timeout_s=120)
    assert w.terminate() == 0
    assert_kpis_equal(expected(evs), stored(influx))
