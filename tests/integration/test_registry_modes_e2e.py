"""The source registry mode seen from outside a real worker: /healthz, /metrics and the start-up log."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import produce

pytestmark = pytest.mark.integration

TAPS = "traffic.card-taps"


def tap(n: int, source: str) -> bytes:
    return json.dumps({"event_id": f"reg-{n}", "ts": "2026-11-25T08:00:00.000+08:00", "source": source,
                       "card_id": f"21305199{n:011d}", "mode": "metro", "line": "1", "direction": "in",
                       "fare_cny": 3}).encode()


def test_observe_mode_processes_unlisted_sources_and_says_so(kafka: Any, influx: Any, worker_factory: Any) -> None:
    listed = "cz-metro-l1-s01"  # in the simulator's registry (CITYOPS_SOURCE_REGISTRY=simulator)
    produce(kafka.url, [(TAPS, tap(1, listed)), (TAPS, tap(2, "new-gate-a")), (TAPS, tap(3, "new-gate-a")),
                        (TAPS, tap(4, "new-gate-b"))])
    w = worker_factory(CITYOPS_UNKNOWN_SOURCES="observe").start()
    w.wait(lambda: w.counted(TAPS) >= 4, what="4 taps decided")
    health = w.health() or {}
    assert health["events"] == {f"{TAPS}/accepted": 4}
    registry = health["source_registry"]
    assert registry["unknown_sources"] == "observe"
    assert registry["path"].endswith("cityops/data/streams/sources.json")
    assert registry["unlisted_sources"] == 2 and registry["unlisted_events"] == {TAPS: 3}
    assert re.search(r'^cityops_unlisted_source_events_total\{stream="traffic.card-taps"\} 3\.0$', w.metrics(), re.M)
    assert re.search(r"source registry: \S+/sources\.json \(observe, \d+ sources\)", w.log_tail(200_000))


def test_without_a_registry_any_source_is_accepted(kafka: Any, influx: Any, worker_factory: Any) -> None:
    produce(kafka.url, [(TAPS, tap(5, "anyone")), (TAPS, tap(6, "anyone-else"))])
    w = worker_factory()
    del w.env["CITYOPS_SOURCE_REGISTRY"]  # the fixture names the simulator's; unset = no registry
    w.start()
    w.wait(lambda: w.counted(TAPS) >= 2, what="2 taps decided")
    health = w.health() or {}
    assert health["events"] == {f"{TAPS}/accepted": 2}
    assert health["source_registry"] is None
    assert "source registry: off (CITYOPS_SOURCE_REGISTRY unset" in w.log_tail(200_000)
