"""End to end with the plugin installed: reports on Kafka (Tansu) -> `cityops worker` -> exact KPI points and the
ParkingLotFull alert in InfluxDB. Nothing in cityops names the plugin: the worker loads it by its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cityops.localproc import ManagedProcess, free_port

TOPIC = "parking.lot-occupancy"
CAPACITY = {"火车站北广场P1": 400, "P2": 250}


def query(influx: ManagedProcess, q: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": "cityops", "q": q, "epoch": "s"})
    with urllib.request.urlopen(f"{influx.url}/query?{params}", timeout=30) as r:
        res = json.loads(r.read())["results"][0]
    if "database not found" in res.get("error", ""):
        return []
    assert "error" not in res, res
    return [dict(zip(s["columns"], v)) for s in res.get("series", []) for v in s["values"]]


def reports(start: float) -> list[dict[str, Any]]:
    """Two reports a minute per lot for 40 minutes; lot P1 is full (>= 95 %) for its first 25 minutes."""
    out = []
    for minute in range(40):
        for half in (0, 30):
            t = start + minute * 60 + half
            ts = datetime.fromtimestamp(t, timezone.utc).isoformat()
            full = minute < 25
            out.append({"event_id": f"p1-{minute}-{half}", "ts": ts, "source": "cz-pk-003-gate", "lot": "火车站北广场P1",
                        "capacity": 400, "occupied": (388 + half // 10) if full else 200 + minute,
                        "entries": minute % 7 + half // 30, "exits": minute % 5})
            out.append({"event_id": f"p2-{minute}-{half}", "ts": ts, "source": "cz-pk-011-gate", "lot": "P2",
                        "capacity": 250, "occupied": 100 + minute + half // 30, "entries": 3, "exits": 2 + half // 30})
    return out


def expected(events: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The KPI's fields per (lot, window start), computed here from the events."""
    windows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in events:
        t = datetime.fromisoformat(e["ts"]).timestamp()
        windows.setdefault((e["lot"], int(t // 60 * 60)), []).append(e)
    out = {}
    for key, evs in windows.items():
        ratios = [e["occupied"] / e["capacity"] for e in evs]
        out[key] = {"reports": len(evs), "occupancy_mean": round(sum(ratios) / len(ratios), 5),
                    "occupancy_max": round(max(ratios), 5), "entries": sum(e["entries"] for e in evs),
                    "exits": sum(e["exits"] for e in evs)}
    return out


def test_reports_become_exact_kpis_and_a_full_lot_alert(kafka: ManagedProcess, influx: ManagedProcess,
                                                       tmp_path: Path) -> None:
    from kafka import KafkaProducer

    start = (time.time() // 3600 - 2) * 3600  # two hours ago, on the hour: no event is dated ahead of now
    events = reports(start)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(CITYOPS_KAFKA_BOOTSTRAP=kafka.url, CITYOPS_INFLUX_URL=influx.url, CITYOPS_INFLUX_DATABASE="cityops",
               CITYOPS_PSEUDONYM_KEY="parking-e2e-key-0123456789", CITYOPS_DATA_DIR=str(tmp_path / "data"),
               CITYOPS_WEB_PORT=str(port), CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6", CITYOPS_TOPIC_PARTITIONS="1",
               CITYOPS_PLUGINS="parking")
    log = open(tmp_path / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def tail() -> str:
        return (tmp_path / "worker.log").read_bytes()[-5000:].decode(errors="replace")

    try:
        producer = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=10)
        for e in events:
            producer.send(TOPIC, json.dumps(e, ensure_ascii=False).encode(), key=e["lot"].encode())
        producer.flush()
        producer.close()
        want = expected(events)
        deadline = time.monotonic() + 150
        got: dict[tuple[str, int], dict[str, Any]] = {}
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"worker exited with {worker.returncode}:\n{tail()}"
            got = {(r["lot"], r["time"]): {k: r[k] for k in ("reports", "occupancy_mean", "occupancy_max", "entries",
                                                              "exits")}
                   for r in query(influx, 'SELECT * FROM "parking_occupancy"')}
            alerts = query(influx, "SELECT * FROM \"alerts\" WHERE \"alertname\" = 'ParkingLotFull'")
            if got == want and {a["status"] for a in alerts} >= {"firing", "resolved"}:
                break
            time.sleep(0.5)
        assert got == want, f"KPI points differ: missing={sorted(set(want) - set(got))[:3]}\n{tail()}"
        by_status = {a["status"]: a for a in alerts}
        assert [a["status"] for a in sorted(alerts, key=lambda a: a["time"])] == ["pending", "firing", "resolved"], \
            alerts
        # Full from the first report; firing once it held `for: 15m`; resolved 10 min (`resolve_after`) after
        # the first report below 95 % (minute 25).
        assert by_status["pending"]["time"] == start
        assert by_status["firing"]["time"] == start + 15 * 60
        assert by_status["resolved"]["time"] == start + 35 * 60
        assert by_status["firing"]["entity"] == "lot=火车站北广场P1,team=parking" and by_status["firing"]["domain"] == "traffic"
        # The value the alert fires with is the last one reported before its `for` elapsed (14:30: 391 of 400).
        assert by_status["firing"]["value"] == 0.9775
        assert by_status["firing"]["summary"] == "Car park 火车站北广场P1 is 98% full"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            health = json.loads(r.read())
        assert health["events"][f"{TOPIC}/accepted"] == len(events)
    finally:
        worker.terminate()
        try:
            worker.wait(40)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        log.close()
