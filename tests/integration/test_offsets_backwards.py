"""Offsets that go backwards (issue 9 kind 8): a topic deleted and re-created on the real broker (Tansu).

The new log's records sit at offsets at or below the ones the worker committed for the old log. They must
be applied, not skipped as already applied; the worker logs it once per partition with both offsets and
counts it in ``cityops_offsets_backwards_total``. Both while the worker is stopped and while it runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cityops.topics import ensure_topics, topic_specs
from tests.conftest import influx_rows

pytestmark = pytest.mark.integration

TAPS = "traffic.card-taps"
ENV = {"CITYOPS_RULES_DIR": "none", "CITYOPS_SOURCE_REGISTRY": "none", "CITYOPS_OFFSET_CHECK_S": "2"}


def tap(n: int) -> bytes:
    return json.dumps({"event_id": f"backwards-{n}", "ts": "2026-11-25T08:00:10.000+08:00",
                       "source": "cz-metro-l1-s01", "card_id": f"21305199{n:011d}", "mode": "metro",
                       "line": "地铁1号线", "direction": "in", "fare_cny": 3}, ensure_ascii=False).encode()


def send(bootstrap: str, ns: range) -> None:
    """One record per tap, all on partition 0: offsets 0, 1, 2... of a fresh log."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    for n in ns:
        p.send(TAPS, tap(n), partition=0).get(10)
    p.close()


def recreate(bootstrap: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([TAPS])
        deadline = time.monotonic() + 20
        while TAPS in admin.list_topics():
            assert time.monotonic() < deadline, "topic not deleted"
            time.sleep(0.2)
    finally:
        admin.close()
    ensure_topics(bootstrap, [s for s in topic_specs(4) if s.name == TAPS])


def taps_in(influx: Any) -> int:
    return sum(r["taps_in"] for r in influx_rows(influx, "traffic_ridership"))


def backwards_total(w: Any) -> float:
    for line in w.metrics().splitlines():
        if line.startswith("cityops_offsets_backwards_total{") and f'topic="{TAPS}"' in line \
                and 'partition="0"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def accepted(w: Any) -> int:
    return int(((w.health() or {}).get("events") or {}).get(f"{TAPS}/accepted", 0))


def test_recreated_topic_is_read_again_not_skipped(kafka: Any, influx: Any, worker_factory: Any) -> None:
    send(kafka.url, range(5))  # old log: offsets 0..4
    w = worker_factory(**ENV).start()
    w.wait(lambda: accepted(w) == 5, what="5 taps of the old log")
    w.wait(lambda: taps_in(influx) == 5, what="5 taps written")
    assert backwards_total(w) == 0
    assert w.terminate() == 0

    # While the worker is stopped: the topic is re-created, 3 new taps at offsets 0..2 (<= committed 4).
    recreate(kafka.url)
    send(kafka.url, range(100, 103))
    w.start()
    w.wait(lambda: accepted(w) == 3, what="3 taps of the re-created topic applied")
    w.wait(lambda: taps_in(influx) == 8, what="8 taps in InfluxDB")
    assert backwards_total(w) == 1
    log = w.log_tail(200_000)
    assert f"offsets went backwards at={TAPS}[0] committed_offset=4 log_start_offset=0" in log, log[-3000:]
    assert log.count("offsets went backwards") == 1  # once for the partition

    # While the worker runs: re-created again, 2 new taps at offsets 0..1 (<= committed 2).
    recreate(kafka.url)
    send(kafka.url, range(200, 202))
    w.wait(lambda: accepted(w) == 5, what="2 more taps after a live re-creation", timeout_s=120)
    w.wait(lambda: taps_in(influx) == 10, what="10 taps in InfluxDB")
    assert backwards_total(w) == 2
    assert "committed_offset=2 log_start_offset=0" in w.log_tail(200_000)
    # Nothing counted twice: every record of the three logs once.
    assert int(((w.health() or {}).get("events") or {}).get(f"{TAPS}/duplicate", 0)) == 0
