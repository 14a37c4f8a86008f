"""Event-time clocks through the real broker, worker and InfluxDB (issue 9 kinds 1–2, issue 14).

* a tap dated a day ahead on one partition does not make the on-time taps after it late;
* a market's store-and-forward EPCIS upload lands in its KPI windows and the lineage;
* a tap dated five years back as a partition's first record does not stall the worker: every live tap's KPI
  reaches InfluxDB within 5 s, with every alert rule on.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.conftest import influx_query, influx_rows
from tests.unit.engine.test_clocks import MARKET, NOON, epcis, food_event
from tests.unit.engine.test_clocks import SH_LOC as SLAUGHTERHOUSE

pytestmark = pytest.mark.integration

TAPS = "traffic.card-taps"
FOOD = "food.trace-events"
T0 = datetime(2026, 11, 25, 0, 0, tzinfo=timezone.utc).timestamp()
READERS = [f"cz-bike-a1-d0{i}" for i in range(1, 6)]  # registered readers (streams/sources.json), unsigned


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def tap(event_id: str, ts: float, line: str, source: str = READERS[0]) -> bytes:
    return json.dumps({"event_id": event_id, "ts": iso(ts), "source": source, "card_id": "6222000011112222",
                       "mode": "bike", "line": line, "direction": "in", "fare_cny": 1}).encode()


class Producer:
    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaProducer

        self.p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_request_size=8 << 20)

    def send(self, topic: str, raw: bytes, partition: int = 0) -> None:
        self.p.send(topic, raw, partition=partition)
        self.p.flush()

    def close(self) -> None:
        self.p.close()


def quality(influx: Any, stream: str) -> dict[str, int]:
    rows = [r for r in influx_rows(influx, "stream_quality") if r["stream"] == stream]
    return {f: int(sum(r[f] or 0 for r in rows)) for f in ("accepted", "invalid", "duplicates", "late")}


@pytest.mark.parametrize("where", ["issue example", "first record", "two wrong clocks"])
def test_a_tap_dated_a_day_ahead_makes_no_on_time_tap_late(kafka: Any, influx: Any, worker_factory: Any,
                                                           where: str) -> None:
    """Issue 9 kind 1: 3 taps at 00:00:01, one dated the next day, 4 at 00:00:30, one partition → 7 taps_in.
    Other examples of the kind: the far-ahead tap as the partition's first record; two readers far ahead by
    different amounts (a day and two days: 9 taps, 7 of them at 00:00)."""
    prod = Producer(kafka.url)
    ahead = [tap("wrong-clock", T0 + 86400, "B1", READERS[4])]
    if where == "two wrong clocks":
        ahead.append(tap("wrong-clock-2", T0 + 2 * 86400, "B1", READERS[3]))
    first = [tap(f"a{i}", T0 + 1, "B1", READERS[i]) for i in range(3)]
    msgs = ahead + first if where == "first record" else first + ahead
    msgs += [tap(f"b{i}", T0 + 30, "B1", READERS[i]) for i in range(4)]
    for raw in msgs:
        prod.send(TAPS, raw, partition=1)
    prod.close()
    w = worker_factory().start()
    w.wait(lambda: quality(influx, TAPS)["accepted"] + quality(influx, TAPS)["late"] >= len(msgs),
           what=f"the {len(msgs)} taps decided in InfluxDB")
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")
    rows = {r["time"]: r for r in influx_rows(influx, "traffic_ridership") if r["line"] == "B1"}
    assert rows[int(T0)]["taps_in"] == 7
    assert rows[int(T0 + 86400)]["taps_in"] == 1
    assert quality(influx, TAPS) == {"accepted": len(msgs), "invalid": 0, "duplicates": 0, "late": 0}
    assert w.terminate() == 0


# -- food: store-and-forward upload ------------------------------------------------------------------------------
def test_a_markets_offline_upload_lands_in_food_trace_and_the_lineage(kafka: Any, influx: Any,
                                                                       worker_factory: Any) -> None:
    """Issue 9 kind 2: the slaughterhouse's events at 12:00, then the market's receiving + sale of 08:00–11:00."""
    lots = 3
    current: list[dict[str, Any]] = []
    upload: list[dict[str, Any]] = []
    for i in range(lots):
        carcass = f"urn:epc:id:sgtin:6901001.010000.{i + 1}"
        lot = f"urn:epc:class:lgtin:6901001.020001.L{i + 1}"
        current += [
            food_event(100 + 10 * i, NOON, "commissioning", epcs=[carcass], action="ADD", disposition="active",
                       bizLocation={"id": SLAUGHTERHOUSE}),
            food_event(101 + 10 * i, NOON + 1, "inspecting", epcs=[carcass], disposition="conformant",
                       bizLocation={"id": SLAUGHTERHOUSE}),
            food_event(102 + 10 * i, NOON + 2, "commissioning", kind="TransformationEvent", inputEPCList=[carcass],
                       outputQuantityList=[{"epcClass": lot, "quantity": 40, "uom": "KGM"}],
                       bizLocation={"id": SLAUGHTERHOUSE}),
        ]
        upload += [
            food_event(200 + 10 * i, NOON - 4 * 3600 + 600 * i, "receiving", classes=[lot],
                       bizLocation={"id": MARKET}),
            food_event(201 + 10 * i, NOON - 3600 + 60 * i, "retail_selling", classes=[lot],
                       disposition="retail_sold", bizLocation={"id": MARKET}),
        ]
    prod = Producer(kafka.url)
    prod.send(FOOD, epcis(current))
    w = worker_factory().start()
    w.wait(lambda: quality(influx, FOOD)["accepted"] >= len(current), what="the slaughterhouse's events")
    prod.send(FOOD, epcis(upload))  # later, in wall time too: the market comes back online
    prod.close()
    w.wait(lambda: quality(influx, FOOD)["accepted"] + quality(influx, FOOD)["late"] >= len(current) + len(upload),
           what="the market's upload decided")
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")
    assert quality(influx, FOOD) == {"accepted": 15, "invalid": 0, "duplicates": 0, "late": 0}
    trace = influx_rows(influx, "food_trace")
    receiving = {r["time"]: r["events"] for r in trace if r["biz_step"] == "receiving"}
    selling = {r["time"]: r["events"] for r in trace if r["biz_step"] == "retail_selling"}
    assert receiving == {int(NOON - 4 * 3600 + 600 * i): 1 for i in range(lots)}
    assert selling == {int(NOON - 3600 + 60 * i): 1 for i in range(lots)}
    chain = influx_rows(influx, "food_chain")
    assert sum(r["lots_sold"] for r in chain) == lots
    assert sum(r["lots_traced"] for r in chain) == lots  # those lots' sales are traced: the lineage has them
    assert w.terminate() == 0


# -- issue 14: an old first record must not stall the worker -----------------------------------------------------
def test_a_tap_five_years_old_first_does_not_stall_live_kpis(kafka: Any, influx: Any, worker_factory: Any) -> None:
    """Every live tap's KPI reaches InfluxDB within 5 s, after a partition's first record dated 5 years back."""
    w = worker_factory().start()  # every shipped alert rule and the source registry on (the defaults)
    w.wait(lambda: (w.health() or {}).get("ready"), what="worker ready")
    prod = Producer(kafka.url)
    now = time.time()
    prod.send(TAPS, tap("old", now - 5 * 365.25 * 86400, "OLD", READERS[0]), partition=0)
    w.wait(lambda: w.counted(TAPS) >= 1, what="the old tap decided")
    latencies = []
    for i in range(16):  # four rounds over the four partitions, a second apart
        line = f"live-{i}"
        sent = time.time()
        prod.send(TAPS, tap(f"live-{i}", sent, line, READERS[i % len(READERS)]), partition=i % 4)
        while True:
            if influx_query(influx, f"SELECT taps_in FROM traffic_ridership WHERE line = '{line}'"):
                break
            assert time.time() - sent < 30, f"{line} not in InfluxDB after 30 s\n{w.log_tail()}"
            time.sleep(0.05)
        latencies.append(time.time() - sent)
        time.sleep(max(0.0, 1.0 - (time.time() - sent)))
    prod.close()
    print("live tap to InfluxDB, s:", [round(x, 2) for x in latencies])
    assert max(latencies) <= 5.0, [round(x, 2) for x in latencies]
    assert (w.health() or {}).get("checkpoint_age_s", 99) < 5.0
    assert w.terminate() == 0
