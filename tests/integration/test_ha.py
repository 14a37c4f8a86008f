"""High availability with several `cityops worker` processes (CITYOPS_STATE_STORE=kafka) on real Tansu + InfluxDB:
tasks spread over the workers, a warm standby takes over after kill -9 with the data directory lost, a paused
worker is fenced, a rolling restart hands over cleanly, and the KPIs always equal an independent computation
with every event counted once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import produce
from tests.integration.test_kpi_path import assert_kpis_equal, expected, quality_total, simulate, stored

pytestmark = pytest.mark.integration

SESSION_S = 4.0  # CITYOPS_CONSUMER_SESSION_TIMEOUT_S of these workers (Tansu holds a join about half of it)
HA = {"CITYOPS_STATE_STORE": "kafka", "CITYOPS_STATE_SNAPSHOT_BYTES": "300000", "CITYOPS_STATE_CHUNK_BYTES": "262144",
      "CITYOPS_CONSUMER_SESSION_TIMEOUT_S": str(SESSION_S)}


def start_workers(worker_factory: Any, tmp_path: Path, n: int) -> list[Any]:
    ws = []
    for i in range(n):
        w = worker_factory(**HA, CITYOPS_DATA_DIR=str(tmp_path / f"w{i}-data"))
        w.log_path = tmp_path / f"w{i}.log"
        ws.append(w.start())
    return ws


def owners(ws: list[Any]) -> dict[str, list[int]]:
    """Task -> the workers (indexes) whose /healthz reports it active."""
    out: dict[str, list[int]] = {}
    for i, w in enumerate(ws):
        if w.proc is None or w.proc.poll() is not None:
            continue
        for task in (w.health() or {}).get("active") or []:
            out.setdefault(task, []).append(i)
    return out


def all_tasks(ws: list[Any]) -> set[str]:
    for w in ws:
        h = w.health()
        if h and h.get("tasks"):
            return set(h["tasks"])
    return set()


def wait_spread(ws: list[Any], timeout_s: float = 180.0) -> dict[str, int]:
    """Until every task is active on exactly one live worker; task -> that worker."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        tasks = all_tasks(ws)
        own = owners(ws)
        last = own
        if tasks and all(len(own.get(t, [])) == 1 for t in tasks):
            return {t: own[t][0] for t in tasks}
        time.sleep(0.25)
    raise AssertionError(f"tasks not all active once: {last}\n" + "\n".join(w.log_tail(3000) for w in ws))


def total_pending(ws: list[Any]) -> int:
    return sum(int((w.health() or {}).get("influx_pending_points", 0) or 0) for w in ws
               if w.proc is not None and w.proc.poll() is None)


def wait_all_written(ws: list[Any], influx: Any, n: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if quality_total(influx) >= n and total_pending(ws) == 0:
            return
        time.sleep(0.5)
    import json

    detail = [{t: {k: (e.get("health") or {}).get(k) for k in ("events", "watermarks", "newest_event_time",
                                                                "influx_pending_points", "ready")}
               for t, e in ((w.health() or {}).get("tasks") or {}).items() if e.get("role") == "active"}
              for w in ws if w.proc is not None and w.proc.poll() is None]
    raise AssertionError(f"{quality_total(influx)} of {n} accepted events written; owners {owners(ws)}; "
                         f"{json.dumps(detail)}")


def log_time(line: str) -> float:
    m = re.match(r"ts=(\S+ \S+)", line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not reaped yet) is dead too
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_three_workers_spread_the_tasks_and_a_standby_takes_over_after_kill9_and_disk_loss(
        kafka: Any, influx: Any, worker_factory: Any, tmp_path: Path) -> None:
    first, evs1 = simulate(seed=51, minutes=10, rate=80, batch=10)  # (the second part ends within the allowed lateness)
    second, evs2 = simulate(seed=52, minutes=6, rate=80, batch=10)
    # Bad input among them: dead-lettered once each, under the same id whoever wrote it.
    bad = [b"not json {1", b"not json {2", b"not json {3", b"not json {4"]
    first = first[:500] + [("traffic.card-taps", bad[0]), ("health.card-events", bad[1])] + first[500:]
    second = [("traffic.card-taps", bad[2])] + second + [("traffic.card-taps", bad[3])]
    produce(kafka.url, first)
    ws = start_workers(worker_factory, tmp_path, 3)
    own = wait_spread(ws)
    per_worker = [sum(1 for t in own if own[t] == i) for i in range(3)]
    assert min(per_worker) >= 1 and max(per_worker) - min(per_worker) <= 1, own  # spread: each runs its share
    victim = own["traffic"]
    w = ws[victim]
    w.wait(lambda: w.counted("traffic.card-taps") >= 2000, what="traffic consumed")
    children = [e["pid"] for e in (w.health() or {})["tasks"].values() if e.get("pid")]
    t_kill = time.time()
    w.kill9()
    shutil.rmtree(tmp_path / f"w{victim}-data")  # the machine's disk is gone too
    others = [x for i, x in enumerate(ws) if i != victim]
    deadline = time.monotonic() + SESSION_S + 10 + 30
    new_owner = None
    while time.monotonic() < deadline and new_owner is None:
        for x in others:
            if "traffic" in ((x.health() or {}).get("active") or []):
                new_owner = x
        time.sleep(0.1)
    failover_s = time.time() - t_kill
    assert new_owner is not None, owners(ws)
    print(f"\nfailover after kill -9: traffic active again {failover_s:.1f} s after the kill (session timeout "
          f"{SESSION_S:g} s)")
    assert failover_s < SESSION_S + 10, failover_s
    assert not any(alive(pid) for pid in children), "the killed worker's task processes must die with it"
    claims = re.findall(r".*state claimed cityops\.state\.traffic\[0\][^\n]*", new_owner.log_tail(10**8))
    assert claims and "epoch=1" in claims[-1] and "after=owner lost" in claims[-1], claims
    produce(kafka.url, second)
    n = len(evs1) + len(evs2)
    wait_all_written(others, influx, n)
    assert quality_total(influx) == n  # every event counted once: none lost, none twice
    assert_kpis_equal(expected(evs1 + evs2), stored(influx))
    letters = dead_letters(kafka.url)
    deadline = time.monotonic() + 60
    while len({i for i, _ in letters}) < len(bad) and time.monotonic() < deadline:
        time.sleep(1)
        letters = dead_letters(kafka.url)
    ids: dict[str, bytes] = {}
    for dlq_id, raw in letters:  # a repeat of a delivery is the same id with the same record
        assert ids.setdefault(dlq_id, raw) == raw, dlq_id
    assert sorted(ids.values()) == sorted(bad), letters


def dead_letters(bootstrap: str) -> list[tuple[str, bytes]]:
    """(cityops-dlq-id header, value) of every record on cityops.dead-letter."""
    from kafka import KafkaConsumer

    c = KafkaConsumer("cityops.dead-letter", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    out = [(dict(r.headers)["cityops-dlq-id"].decode(), r.value) for r in c]
    c.close()
    return out


def test_paused_worker_is_fenced_and_writes_nothing_more(kafka: Any, influx: Any, worker_factory: Any,
                                                         tmp_path: Path) -> None:
    """SIGSTOP a worker (and its task processes: a frozen machine) past the session timeout: the other worker
    takes its tasks over; after SIGCONT the paused task process meets the newer claim at its next commit and
    exits 4 without releasing it; KPIs stay exact."""
    first, evs1 = simulate(seed=61, minutes=10, rate=80, batch=10)
    second, evs2 = simulate(seed=62, minutes=6, rate=80, batch=10)
    produce(kafka.url, first)
    ws = start_workers(worker_factory, tmp_path, 2)
    own = wait_spread(ws)
    a, b = ws[own["traffic"]], ws[1 - own["traffic"]]
    a.wait(lambda: a.counted("traffic.card-taps") >= 2000, what="traffic consumed")
    h = a.health() or {}
    pids = [a.proc.pid] + [e["pid"] for e in h["tasks"].values() if e.get("pid")]
    traffic_pid = h["tasks"]["traffic"]["pid"]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        b.wait(lambda: "traffic" in ((b.health() or {}).get("active") or []), timeout_s=SESSION_S + 40,
               what="the other worker's takeover")
        produce(kafka.url, second)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    log = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = a.log_tail(10**8)
        if re.search(rf"task=traffic \S+ child pid={traffic_pid} exited 4", log):
            break
        time.sleep(0.5)
    assert re.search(rf"task=traffic \S+ child pid={traffic_pid} exited 4", log), log[-5000:]
    assert "fenced: task cityops.state.traffic[0] was claimed by worker" in log
    n = len(evs1) + len(evs2)
    wait_all_written(ws, influx, n)
    assert quality_total(influx) == n
    assert_kpis_equal(expected(evs1 + evs2), stored(influx))


def test_rolling_restart_of_three_workers_hands_over_and_loses_or_doubles_nothing(
        kafka: Any, influx: Any, worker_factory: Any, tmp_path: Path) -> None:
    parts = [simulate(seed=70 + i, minutes=5, rate=80, batch=10) for i in range(4)]
    produce(kafka.url, parts[0][0])
    ws = start_workers(worker_factory, tmp_path, 3)
    own = wait_spread(ws)
    handovers: list[float] = []
    claim_after: list[float] = []  # s from a task's hand-over record to the new owner's claim
    active_after: list[float] = []  # ... to the new owner's task process consuming (ready)
    for i, w in enumerate(ws):
        mine = [t for t, o in own.items() if o == i]
        t_term = time.time()
        assert w.terminate(90) == 0, w.log_tail()
        log = w.log_tail(10**8)
        for task in mine:
            assert re.search(rf"state handed over cityops\.state\.{task}\[0\]", log), (task, log[-4000:])
        produce(kafka.url, parts[i + 1][0])
        others = [x for x in ws if x is not w]
        # Each task it ran is taken over by another worker, after the hand-over.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(any(t in ((x.health() or {}).get("active") or [])
                                                           for x in others) for t in mine):
            time.sleep(0.1)
        took = time.time() - t_term
        assert all(any(t in ((x.health() or {}).get("active") or []) for x in others) for t in mine), owners(ws)
        handovers.append(took)
        for task in mine:
            claims = sorted((c for x in others for c in re.findall(rf".*state claimed cityops\.state\.{task}\[0\][^\n]*",
                                                                   x.log_tail(10**8))), key=log_time)
            assert claims and "after=hand-over" in claims[-1], claims
            handed = re.findall(rf".*state handed over cityops\.state\.{task}\[0\][^\n]*", log)[-1]
            actives = sorted((a for x in others for a in re.findall(rf".*task={task} active pid=[^\n]*",
                                                                    x.log_tail(10**8))), key=log_time)
            claim_after.append(log_time(claims[-1]) - log_time(handed))
            active_after.append(log_time(actives[-1]) - log_time(handed))
        w.start()
        # As an orchestrator does: the next worker is restarted once this one is ready (its standbys warm,
        # in the group, its share of the tasks active).
        w.wait(lambda: (w.health() or {}).get("ready") is True, timeout_s=180, what="the restarted worker ready")
        own = wait_spread(ws)
    print(f"\nrolling restart: tasks active on another worker {', '.join(f'{s:.1f}' for s in handovers)} s "
          f"after each SIGTERM; from each hand-over record to the new owner's claim "
          f"{', '.join(f'{s:.1f}' for s in claim_after)} s, to its task consuming "
          f"{', '.join(f'{s:.1f}' for s in active_after)} s")
    n = sum(len(p[1]) for p in parts)
    wait_all_written(ws, influx, n)
    assert quality_total(influx) == n
    assert_kpis_equal(expected([e for p in parts for e in p[1]]), stored(influx))


def test_alerts_exactly_once_across_a_failover(kafka: Any, influx: Any, worker_factory: Any, tmp_path: Path) -> None:
    """A firing alert committed by the traffic task's worker, which is then killed (-9, disk lost): the standby
    that takes over does not fire it again as new, and delivers its resolve once, to Kafka and Alertmanager."""
    import json
    import urllib.request

    from cityops.localproc import free_port
    from cityops.localstack import start_alertmanager
    from tests.integration.test_alert_durability import alert_records, clock_taps, tap, travel

    am = start_alertmanager(tmp_path / "am", free_port())
    try:
        ws = []
        for i in range(2):
            w = worker_factory(**HA, CITYOPS_DATA_DIR=str(tmp_path / f"w{i}-data"), CITYOPS_ALERTMANAGER_URL=am.url)
            w.log_path = tmp_path / f"w{i}.log"
            ws.append(w.start())
        own = wait_spread(ws)
        # 15 km in 2 minutes: CardImpossibleTravel.
        first = [tap(1, 0, "cz-metro-l1-s01", 31.80, 119.97), tap(2, 2, "cz-metro-l1-s25", 31.66, 119.95)]
        produce(kafka.url, [("traffic.card-taps", json.dumps(first + clock_taps(100, 0, 5)).encode())])

        def am_active() -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"{am.url}/api/v2/alerts?active=true", timeout=5) as r:
                return [a for a in json.loads(r.read()) if a["labels"].get("alertname") == "CardImpossibleTravel"]

        victim = ws[own["traffic"]]
        victim.wait(lambda: len(am_active()) == 1, what="Alertmanager has the firing alert", timeout_s=90)
        victim.kill9()
        shutil.rmtree(tmp_path / f"w{own['traffic']}-data")
        other = ws[1 - own["traffic"]]
        other.wait(lambda: "traffic" in ((other.health() or {}).get("active") or []), timeout_s=SESSION_S + 40,
                   what="the standby's takeover")
        # Event time moves 40 minutes on (resolve_after is 30 m): the resolve must come, once.
        produce(kafka.url, [("traffic.card-taps", json.dumps(clock_taps(200, 6, 46)).encode())])
        other.wait(lambda: len(travel(alert_records(kafka.url), "resolved")) >= 1, what="resolved", timeout_s=90)
        other.wait(lambda: not am_active(), what="resolved in Alertmanager", timeout_s=60)
        records = alert_records(kafka.url)
        # A takeover may repeat a delivery of the same transition (same id), never create a new firing.
        assert len({r["id"] for r in travel(records, "firing")}) == 1, travel(records, "firing")
        assert len({r["id"] for r in travel(records, "resolved")}) == 1
    finally:
        am.stop()


def test_a_second_worker_on_the_same_data_dir_stops_naming_the_setting(kafka: Any, influx: Any,
                                                                       worker_factory: Any, tmp_path: Path) -> None:
    import subprocess

    a = worker_factory(**HA, CITYOPS_DATA_DIR=str(tmp_path / "shared")).start()
    a.wait(lambda: (a.health() or {}).get("worker") is not None, what="the first worker serving /healthz")
    b = worker_factory(**HA, CITYOPS_DATA_DIR=str(tmp_path / "shared"))
    r = subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=b.env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"cityops: CITYOPS_DATA_DIR: {tmp_path / 'shared'} is in use by another running worker" in r.stderr
    assert a.proc is not None and a.proc.poll() is None  # the first one runs on
