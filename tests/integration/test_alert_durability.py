"""Alert state survives kill -9: a firing alert is not notified again as new, and its resolve is not lost.

Also: alerts reach Alertmanager after it was unreachable (the outbox keeps them until it answers).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cityops.localproc import free_port
from cityops.localstack import start_alertmanager
from cityops.streams.city_streams import Pseudonymizer
from tests.conftest import PSEUDONYM_KEY, produce

pytestmark = pytest.mark.integration
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=CST)
CARD = "2130519977770000001"


def tap(i: int, minutes: float, source: str, lat: float, lon: float, card: str = CARD) -> dict[str, Any]:
    return {"event_id": f"dur-{i}", "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "source": source,
            "card_id": card, "mode": "metro", "line": "地铁1号线", "direction": "in", "fare_cny": 2,
            "lat": lat, "lon": lon}


def clock_taps(start_i: int, from_min: float, to_min: float) -> list[dict[str, Any]]:
    """Ordinary taps of other cards at one gate, one a minute: they move event time forward."""
    out = []
    m = from_min
    i = start_i
    while m <= to_min:
        out.append(tap(i, m, "cz-metro-l1-s01", 31.80, 119.97, card=f"21305199888{i:08d}"))
        i += 1
        m += 1
    return out


def alert_records(bootstrap: str) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    c = KafkaConsumer("cityops.alerts", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    out = [json.loads(r.value) for r in c]
    c.close()
    return out


def travel(records: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    return [r for r in records if r["alertname"] == "CardImpossibleTravel" and r["status"] == status]


def test_firing_survives_kill9_and_resolve_is_delivered(kafka: Any, influx: Any, worker_factory: Any,
                                                        tmp_path: Any) -> None:
    am_port = free_port()
    w = worker_factory(CITYOPS_ALERTMANAGER_URL=f"http://127.0.0.1:{am_port}")
    # 15 km in 2 minutes: CardImpossibleTravel. Alertmanager is not running yet.
    first = [tap(1, 0, "cz-metro-l1-s01", 31.80, 119.97), tap(2, 2, "cz-metro-l1-s25", 31.66, 119.95)]
    produce(kafka.url, [("traffic.card-taps", json.dumps(first + clock_taps(100, 0, 5)).encode())])
    w.start()
    pseudonym = Pseudonymizer(PSEUDONYM_KEY.encode())(CARD)
    w.wait(lambda: len(travel(alert_records(kafka.url), "firing")) >= 1, what="firing on the alerts topic")
    firing = travel(alert_records(kafka.url), "firing")[0]
    assert firing["labels"]["card"] == pseudonym and CARD not in json.dumps(firing)

    w.kill9()
    am = start_alertmanager(tmp_path / "am", am_port)
    try:
        w.start()

        def am_active() -> list[dict[str, Any]]:
            import urllib.request

            with urllib.request.urlopen(f"{am.url}/api/v2/alerts?active=true", timeout=5) as r:
                return [a for a in json.loads(r.read()) if a["labels"].get("alertname") == "CardImpossibleTravel"]

        # The firing transition was committed before the crash: delivered to Alertmanager after it.
        w.wait(lambda: len(am_active()) == 1, what="Alertmanager has the firing alert", timeout_s=90)
        assert am_active()[0]["labels"]["card"] == pseudonym
        # Event time moves 40 minutes on (resolve_after is 30 m): the resolve must come, once.
        produce(kafka.url, [("traffic.card-taps", json.dumps(clock_taps(200, 6, 46)).encode())])
        w.wait(lambda: len(travel(alert_records(kafka.url), "resolved")) >= 1, what="resolved", timeout_s=90)
        w.wait(lambda: not am_active(), what="resolved in Alertmanager", timeout_s=60)
        records = alert_records(kafka.url)
        # A crash may repeat a delivery of the same transition (same id), never create a new firing.
        assert len({r["id"] for r in travel(records, "firing")}) == 1
        assert len({r["id"] for r in travel(records, "resolved")}) == 1
    finally:
        am.stop()
