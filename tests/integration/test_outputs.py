"""Every output accounted for (issue 9 kinds 3 and 4), through the real broker, worker and InfluxDB.

- Event times InfluxDB cannot store are dead-lettered at ingest, on every stream, and counted.
- A point InfluxDB refuses reaches cityops.dead-letter with InfluxDB's reason and is counted.
- Distinct tag values stay distinct series (``B12\\`` and ``B12 ``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import influx_query, influx_rows, influx_write, produce

pytestmark = pytest.mark.integration

TAPS = "traffic.card-taps"
FOOD = "food.trace-events"
DEAD_LETTER = "cityops.dead-letter"
NO_RULES = {"CITYOPS_RULES_DIR": "none", "CITYOPS_SOURCE_REGISTRY": "none"}
TS = "2026-11-25T08:00:10.000+08:00"  # window 2026-11-25T00:00:00Z
WINDOW = 1795564800


def tap(n: int, ts: str = TS, **over: Any) -> dict[str, Any]:
    ev = {"event_id": f"outputs-{n}", "ts": ts, "source": "cz-metro-l1-s01", "card_id": f"21305199{n:011d}",
          "mode": "metro", "line": "地铁1号线", "direction": "in", "fare_cny": 3}
    ev.update(over)
    return ev


def dumps(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode()


def food_doc(*times: str) -> bytes:
    events = [{"type": "ObjectEvent", "eventID": f"urn:uuid:00000000-0000-4000-8000-{i + 1:012d}",
               "eventTime": t, "eventTimeZoneOffset": "+08:00", "action": "OBSERVE", "bizStep": "receiving",
               "epcList": [f"urn:epc:id:sgtin:6909999.010000.{i}"],
               "readPoint": {"id": "urn:epc:id:sgln:6909999.00002.0"},
               "bizLocation": {"id": "urn:epc:id:sgln:6909999.00002.0"}} for i, t in enumerate(times)]
    return dumps({"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
                  "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-11-25T09:00:00.000+08:00",
                  "epcisBody": {"eventList": events}})


def read_dead_letters(bootstrap: str, n: int, timeout_ms: int = 20000) -> list[Any]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(DEAD_LETTER, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=timeout_ms)
    out = []
    for rec in c:
        out.append(rec)
        if len(out) >= n:
            break
    c.close()
    return out


def metric(w: Any, name: str, **labels: str) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    try:
        text = w.metrics()
    except OSError:  # not serving yet
        return 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and want <= set((m.group(1) or "").split(",")):
            total += float(m.group(2))
    return total


def test_event_times_influxdb_cannot_store_are_dead_lettered_at_ingest(kafka: Any, influx: Any,
                                                                       worker_factory: Any) -> None:
    """Issue 9 kind 3, example: a tap dated 1500-01-01T00:00:00Z; the same on the food stream."""
    bad_tap = dumps(tap(1, ts="1500-01-01T00:00:00Z"))
    edge_tap = dumps(tap(2, ts="1677-09-21T00:12:50Z"))  # storable instant, window starts before the range
    good = [dumps(tap(10 + i)) for i in range(3)]
    produce(kafka.url, [(TAPS, bad_tap), (TAPS, edge_tap), *[(TAPS, g) for g in good],
                        (FOOD, food_doc("1500-01-01T08:00:00.000+08:00"))])
    w = worker_factory(**NO_RULES).start()
    w.wait(lambda: w.counted(TAPS) >= 5 and w.counted(FOOD) >= 1, what="all events decided")
    events = (w.health() or {})["events"]
    assert events[f"{TAPS}/invalid"] == 2 and events[f"{TAPS}/accepted"] == 3
    assert events[f"{FOOD}/invalid"] == 1 and f"{FOOD}/accepted" not in events
    letters = read_dead_letters(kafka.url, 3)
    assert len(letters) == 3
    reasons = {rec.value: dict((k, v.decode()) for k, v in rec.headers)["cityops-reason"] for rec in letters}
    for raw in (bad_tap, edge_tap):
        assert reasons[raw].startswith("contract: event time outside InfluxDB's range"), reasons[raw]
        assert "1677-09-21T00:12:43.145224194Z..2262-04-11T23:47:16.854775806Z" in reasons[raw]
    (food_reason,) = [r for v, r in reasons.items() if v not in (bad_tap, edge_tap)]
    assert food_reason.startswith("contract: event time outside InfluxDB's range")
    assert metric(w, "cityops_dead_letters_total", stream=TAPS) == 2
    assert metric(w, "cityops_dead_letters_total", stream=FOOD) == 1
    # The good taps are counted; nothing was refused by InfluxDB afterwards.
    w.wait(lambda: sum(r["taps_in"] for r in influx_rows(influx, "traffic_ridership")) == 3,
           what="3 good taps in InfluxDB")
    assert metric(w, "cityops_points_refused_total") == 0
    assert metric(w, "cityops_sink_write_errors_total", kind="rejected") == 0


def test_points_influxdb_refuses_are_dead_lettered_with_its_reason(kafka: Any, influx: Any,
                                                                  worker_factory: Any) -> None:
    """A field type conflict (another writer made ``taps_in`` a string in this shard): InfluxDB refuses the
    KPI point; it reaches cityops.dead-letter as line protocol with InfluxDB's reason, and is counted."""
    influx_write(influx, [f'traffic_ridership,line=other,mode=bus taps_in="x" {WINDOW - 3600}'])
    produce(kafka.url, [(TAPS, dumps([tap(i) for i in range(5)]))])
    w = worker_factory(**NO_RULES).start()
    w.wait(lambda: w.counted(TAPS) >= 5, what="taps decided")
    w.wait(lambda: metric(w, "cityops_points_refused_total", measurement="traffic_ridership") >= 1,
           what="refused point counted")
    # The other measurements of the same batches still land (InfluxDB's partial write, then line by line).
    w.wait(lambda: sum(r["accepted"] for r in influx_rows(influx, "stream_quality")) == 5,
           what="stream_quality written")
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")
    refused = metric(w, "cityops_points_refused_total", sink="influxdb")
    assert metric(w, "cityops_sink_write_errors_total", kind="rejected") == refused
    assert w.terminate() == 0  # SIGTERM: final commit and delivery of the dead letters
    letters = [r for r in read_dead_letters(kafka.url, 100, timeout_ms=8000)
               if dict(r.headers).get("cityops-sink") == b"influxdb"]
    assert len(letters) == refused >= 1, "each refused point is one dead letter"
    for rec in letters:
        h = {k: v.decode() for k, v in rec.headers}
        assert h["cityops-measurement"] == "traffic_ridership" and h["cityops-stream"] == TAPS
        assert h["cityops-outcome"] == "refused"
        assert h["cityops-reason"].startswith("influxdb refused the point: HTTP 400")
        assert "field type conflict" in h["cityops-reason"], h["cityops-reason"]
        assert h["cityops-dlq-id"].startswith("influxdb:traffic_ridership:")
        assert rec.value.startswith("traffic_ridership,line=地铁1号线,mode=metro ".encode())
    # The last version refused holds every tap: nothing of the KPI is lost, it waits in the dead letters.
    assert any(b"taps_in=5i" in rec.value and rec.value.endswith(str(WINDOW).encode()) for rec in letters)
    # Not in InfluxDB for that series (refused), and no write of it was dropped with only a log line.
    assert influx_query(influx, "SELECT * FROM traffic_ridership WHERE mode = 'metro'") == []


def test_lines_b12_backslash_and_b12_space_are_two_series(kafka: Any, influx: Any, worker_factory: Any) -> None:
    """Issue 9 kind 4, example: 3 taps on line ``B12\\`` and 2 on ``B12 `` in the same minute."""
    from cityops.sinks.influx import decode_tag

    taps = [tap(100 + i, line="B12\\", mode="bus") for i in range(3)] + \
           [tap(200 + i, line="B12 ", mode="bus") for i in range(2)]
    produce(kafka.url, [(TAPS, dumps(taps))])
    w = worker_factory(**NO_RULES).start()
    w.wait(lambda: w.counted(TAPS) >= 5, what="taps decided")

    def series() -> dict[str, int]:
        return {decode_tag(r["line"]): r["taps_in"] for r in influx_rows(influx, "traffic_ridership")
                if r["mode"] == "bus" and r["time"] == WINDOW}

    w.wait(lambda: series() == {"B12\\": 3, "B12 ": 2}, what=f"two series; got {series()}")
    assert metric(w, "cityops_points_refused_total") == 0


def test_refused_points_survive_kill9(kafka: Any, influx: Any, worker_factory: Any) -> None:
    """The dead letter of a refused point is an output like the others: kill -9 right after InfluxDB refused
    it, restart, and it is on the dead-letter topic (a repeat carries the same cityops-dlq-id)."""
    influx_write(influx, [f'traffic_ridership,line=other,mode=bus taps_in="x" {WINDOW - 3600}'])
    produce(kafka.url, [(TAPS, dumps([tap(300 + i) for i in range(4)]))])
    w = worker_factory(**NO_RULES).start()
    w.wait(lambda: metric(w, "cityops_points_refused_total") >= 1, what="a refused point")
    w.kill9()
    w.start()
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0 and
           metric(w, "cityops_points_refused_total") >= 1, what="restarted, rewritten, refused again")
    assert w.terminate() == 0
    letters = [r for r in read_dead_letters(kafka.url, 100, timeout_ms=8000)
               if dict(r.headers).get("cityops-sink") == b"influxdb"]
    by_id: dict[bytes, set[bytes]] = {}
    for rec in letters:
        by_id.setdefault(dict(rec.headers)["cityops-dlq-id"], set()).add(rec.value)
    assert all(len(values) == 1 for values in by_id.values())  # one id, one point version
    assert any(b"taps_in=4i" in v for values in by_id.values() for v in values), letters
