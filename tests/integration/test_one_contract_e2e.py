"""Issue 9 kinds 5 and 7 end to end: real Tansu, the real worker and real InfluxDB.

Kind 5: one bad event of a batch or document dead-letters that event alone (index, JSON Pointer), the rest
count, and leap seconds are accepted. Kind 7: the decoder accepts what the published contract accepts
(`"interval_s": 60.0` is an integer).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.conftest import influx_rows, produce

pytestmark = pytest.mark.integration

FOOD = "food.trace-events"
TAPS = "traffic.card-taps"
ROAD = "traffic.road-detectors"
DEAD_LETTER = "cityops.dead-letter"
CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
MINUTE_2358 = int(datetime(2016, 12, 31, 23, 58, tzinfo=timezone.utc).timestamp())
MINUTE_2359 = MINUTE_2358 + 60


def epcis_event(n: int, t: str, **kw: Any) -> dict[str, Any]:
    ev = {"type": "ObjectEvent", "eventID": f"urn:uuid:00000000-0000-4000-8000-{n:012d}", "eventTime": t,
          "eventTimeZoneOffset": "+00:00", "action": "OBSERVE",
          "epcList": [f"urn:epc:id:sgtin:6901003.010000.{n}"], "bizStep": "shipping",
          "readPoint": {"id": "urn:epc:id:sgln:6901003.00001.0"}}
    ev.update(kw)
    return ev


def tap(n: int, ts: str, **over: Any) -> dict[str, Any]:
    ev = {"event_id": f"iso-tap-{n}", "ts": ts, "source": "cz-metro-l1-s01", "card_id": f"21305199{n:011d}",
          "mode": "metro", "line": "地铁1号线", "direction": "in", "fare_cny": 3}
    ev.update(over)
    return ev


def dead_letters(bootstrap: str, n: int) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(DEAD_LETTER, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=20000)
    out = []
    for rec in c:
        out.append({"value": rec.value, **{k: v.decode() for k, v in rec.headers}})
        if len(out) == n:
            break
    c.close()
    return out


def total(rows: list[dict[str, Any]], field: str, **tags: Any) -> float:
    return sum(r[field] or 0 for r in rows if all(r.get(k) == v for k, v in tags.items()))


def test_leap_second_document_batch_and_integral_interval(kafka: Any, influx: Any, worker_factory: Any) -> None:
    # Kind 5, the example: a two-event EPCISDocument, valid against the official schema, whose
    # second event is dated at the leap second 2016-12-31T23:59:60Z. Right value: both events count.
    leap_doc = {"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
                "creationDate": "2017-01-01T00:00:00Z",
                "epcisBody": {"eventList": [epcis_event(1, "2016-12-31T23:58:00Z"),
                                            epcis_event(2, "2016-12-31T23:59:60Z")]}}
    # Nested: a query document whose second event holds a reading no double can carry: that event alone.
    query_doc = {"@context": CTX, "type": "EPCISQueryDocument", "schemaVersion": "2.0",
                 "creationDate": "2017-01-01T00:00:00Z",
                 "epcisBody": {"queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": [
                     epcis_event(3, "2016-12-31T23:58:30Z"),
                     epcis_event(4, "2016-12-31T23:58:40Z", bizStep="receiving", sensorElementList=[
                         {"sensorReport": [{"type": "Temperature", "value": "@big@"}]}]),
                     epcis_event(5, "2016-12-31T23:59:10Z")]}}}}
    query_raw = json.dumps(query_doc).encode().replace(b'"@big@"', b"1e400")
    # A card-tap batch: a leap second, a broken element, a good one.
    taps = [tap(1, "2016-12-31T23:59:60Z"), tap(2, "2016-12-31T23:59:30Z", direction="sideways"),
            tap(3, "2017-01-01T07:59:60.5+08:00")]
    # Kind 7, the example: interval_s 60.0 is an integer for the contract, so for the decoder.
    road = {"event_id": "iso-road-1", "ts": "2026-11-25T08:00:00.465+08:00", "source": "cz-rd-054-E1",
            "segment": "中吴大道-2", "flow": 37, "speed_kmh": 39.3, "occupancy": 0.385, "interval_s": 60.0}
    road_batch = [dict(road, event_id="iso-road-2", flow=12.0, interval_s=6e1),
                  dict(road, event_id="iso-road-3", occupancy=1.5)]
    produce(kafka.url, [(FOOD, json.dumps(leap_doc).encode()), (FOOD, query_raw),
                        (TAPS, json.dumps(taps, ensure_ascii=False).encode()),
                        (ROAD, json.dumps(road, ensure_ascii=False).encode()),
                        (ROAD, json.dumps(road_batch, ensure_ascii=False).encode())])
    w = worker_factory().start()
    w.wait(lambda: w.counted(FOOD) >= 5 and w.counted(TAPS) >= 3 and w.counted(ROAD) >= 3,
           what="every event decided")
    events = (w.health() or {})["events"]
    assert events[f"{FOOD}/accepted"] == 4 and events[f"{FOOD}/invalid"] == 1
    assert events[f"{TAPS}/accepted"] == 2 and events[f"{TAPS}/invalid"] == 1
    assert events[f"{ROAD}/accepted"] == 2 and events[f"{ROAD}/invalid"] == 1

    w.wait(lambda: total(influx_rows(influx, "food_trace"), "events") >= 4
           and total(influx_rows(influx, "traffic_ridership"), "taps_in") >= 2
           and total(influx_rows(influx, "traffic_road"), "readings") >= 2, what="KPIs in InfluxDB")
    trace = influx_rows(influx, "food_trace")
    # The leap second is counted in the minute it belongs to, 23:59 of 2016-12-31 (UTC).
    assert total(trace, "events", time=MINUTE_2358) == 2  # events 1 and 3 (4 was dead-lettered)
    assert total(trace, "events", time=MINUTE_2359) == 2  # event 2 (the leap second) and event 5
    assert total(trace, "events", biz_step="receiving") == 0  # event 4 was dead-lettered alone
    ridership = influx_rows(influx, "traffic_ridership")
    assert total(ridership, "taps_in", time=MINUTE_2359) == 2
    road_rows = influx_rows(influx, "traffic_road")
    assert total(road_rows, "readings") == 2 and total(road_rows, "flow") == 37 + 12
    assert all(isinstance(r["flow"], int) for r in road_rows)  # still an integer field in InfluxDB

    letters = {d["cityops-source-topic"]: d for d in dead_letters(kafka.url, 3)}
    assert set(letters) == {FOOD, TAPS, ROAD}
    food = letters[FOOD]
    assert food["value"] == query_raw  # the original bytes
    assert food["cityops-batch-index"] == "1"
    assert food["cityops-event-path"] == "/epcisBody/queryResults/resultsBody/eventList/1"
    assert food["cityops-reason"].startswith("cityops rule: number beyond the range of a double")
    assert "/epcisBody/queryResults/resultsBody/eventList/1/sensorElementList/0/sensorReport/0/value" \
        in food["cityops-reason"]
    assert letters[TAPS]["cityops-batch-index"] == "1" and letters[TAPS]["cityops-event-path"] == "/1"
    assert "$[1].direction" in letters[TAPS]["cityops-reason"]
    assert letters[ROAD]["cityops-batch-index"] == "1" and "$[1].occupancy" in letters[ROAD]["cityops-reason"]
