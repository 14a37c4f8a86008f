"""Bad input against the real broker: every kind is dead-lettered with a precise reason, the agent goes on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import influx_rows, produce

pytestmark = pytest.mark.integration

TAPS = "traffic.card-taps"


def tap(n: int, **over: Any) -> dict[str, Any]:
    ev = {"event_id": f"bad-input-{n}", "ts": "2026-11-25T08:00:00.000+08:00", "source": "cz-metro-l1-s01",
          "card_id": f"21305199{n:011d}", "mode": "metro", "line": "地铁1号线", "direction": "in",
          "fare_cny": 3}
    ev.update(over)
    return ev


def dumps(v: Any) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode()


CASES: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"event_id": "x", ', "malformed JSON"),
    ("wrong type", dumps(tap(1, fare_cny="3")), "$.fare_cny"),
    ("missing field", dumps({k: v for k, v in tap(2).items() if k != "card_id"}), "card_id"),
    ("non-UTF-8", b'{"event_id": "\xff\xfe", "ts": 1}', "malformed JSON"),
    ("empty message", b"", "empty message"),
    ("number beyond double", dumps(tap(3)).replace(b'"fare_cny": 3', b'"fare_cny": 1e400'), "infinity"),
    ("huge number", dumps(tap(6)).replace(b'"fare_cny": 3', b'"fare_cny": 1000000000000000000000000000000'),
     "$.fare_cny"),
    ("naive time", dumps(tap(4, ts="2026-11-25T08:00:00")), "timezone"),
    ("1 MB message", dumps(tap(5, line="长" * 350_000)), "$.line"),
    ("not an object", b"42", "JSON object or array"),
]


def test_each_bad_input_is_dead_lettered_with_its_reason(kafka: Any, influx: Any, worker_factory: Any) -> None:
    from kafka import KafkaConsumer

    batch = [tap(100), tap(101, direction="sideways"), tap(102)]  # one bad element in a batch of three
    big_valid = [tap(1000 + i, line=f"线路{i % 7}") for i in range(6000)]  # ~1 MB of good events
    messages = [(TAPS, raw) for _name, raw, _why in CASES] + [(TAPS, dumps(batch)), (TAPS, dumps(big_valid))]
    messages.append((TAPS, dumps(tap(9999))))  # a good event after all of it: the agent went on
    produce(kafka.url, messages)
    w = worker_factory().start()
    n_expected = len(CASES) + 3 + len(big_valid) + 1
    w.wait(lambda: w.counted(TAPS) >= n_expected, what="all records decided")
    health = w.health() or {}
    assert health["events"][f"{TAPS}/invalid"] == len(CASES) + 1
    assert health["events"][f"{TAPS}/accepted"] == 2 + len(big_valid) + 1

    consumer = KafkaConsumer("cityops.dead-letter", bootstrap_servers=kafka.url, auto_offset_reset="earliest",
                             consumer_timeout_ms=20000, max_partition_fetch_bytes=16 << 20,
                             fetch_max_bytes=64 << 20)
    letters = []
    for rec in consumer:
        letters.append(rec)
        if len(letters) == len(CASES) + 1:
            break
    consumer.close()
    assert len(letters) == len(CASES) + 1
    by_value: dict[bytes, dict[str, str]] = {}
    for rec in letters:
        headers = {k: v.decode() for k, v in rec.headers}
        assert headers["cityops-source-topic"] == TAPS
        assert headers["cityops-source-offset"].isdigit()
        by_value[rec.value] = headers
    for name, raw, why in CASES:
        assert raw in by_value, f"{name}: original bytes not dead-lettered"
        assert why in by_value[raw]["cityops-reason"], (name, by_value[raw]["cityops-reason"])
    batch_letter = by_value[dumps(batch)]
    assert batch_letter["cityops-batch-index"] == "1"
    assert "$[1].direction" in batch_letter["cityops-reason"]
    # Counted in the metrics and in the stream_quality KPI.
    assert f'cityops_events_total{{outcome="invalid",stream="{TAPS}"}} {float(len(CASES) + 1)}' in w.metrics()
    w.wait(lambda: sum(r["invalid"] for r in influx_rows(influx, "stream_quality")) == len(CASES) + 1,
           what="invalid count in InfluxDB")
