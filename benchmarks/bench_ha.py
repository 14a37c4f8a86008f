"""Events/s of the whole service with 1, 2 and 3 workers (CITYOPS_STATE_STORE=kafka), all rules on.

Each round starts a fresh Tansu broker and InfluxDB, starts N `cityops worker` processes with the same
settings (the shipped rules, the simulator's source registry, state in Kafka), waits until every task is
active on exactly one of them (the lease group spread them), then produces the same input — simulated
traffic, health and food events in 100-event messages, the mix `bench_kpi_path.py` uses — and times the
service from the first event decided to the last (summed over the workers' /healthz). The 1-worker round
is the baseline of the same run: it runs every task (and no standby), as one machine would.

Also printed: the time until every task was active after the start, the bytes written to the state
topics per event, and the standbys' lag (state-topic records not read yet, sampled from /healthz while
the input is processed). On this 2-core machine three workers share two cores, so the figure to read is how the
rate changes with workers, not the absolute rate.

    python benchmarks/bench_ha.py                   # 1, 2, 3 workers, 120,000 events each
    python benchmarks/bench_ha.py --workers 1,3 --events 60000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kpi_path import decided, health, make_messages, preload  # noqa: E402
from bench_state_kafka import state_topic_bytes  # noqa: E402

from cityops.localproc import free_port  # noqa: E402
from cityops.localstack import start_influxdb, start_kafka  # noqa: E402


def start_worker(workdir: Path, kafka: str, influx: str, registry: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, CITYOPS_KAFKA_BOOTSTRAP=kafka, CITYOPS_INFLUX_URL=influx,
               CITYOPS_PSEUDONYM_KEY="bench-pseudonym-key-0123456789", CITYOPS_DATA_DIR=str(workdir / "data"),
               CITYOPS_WEB_PORT=str(port), CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6", CITYOPS_LOG_LEVEL="WARNING",
               CITYOPS_TOPIC_PARTITIONS="6", CITYOPS_STATE_STORE="kafka", CITYOPS_SOURCE_REGISTRY=str(registry))
    env.pop("CITYOPS_RULES_DIR", None)  # the shipped rules: every rule on
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=env,
                            stdout=open(workdir / "worker.log", "wb"), stderr=subprocess.STDOUT)
    return proc, port


def state_bytes(bootstrap: str) -> int:
    """Bytes on every task's state topic (``bench_state_kafka.state_topic_bytes``, summed)."""
    per_topic, _ = state_topic_bytes(bootstrap)
    return sum(size for kinds in per_topic.values() for _m, size in kinds.values())


def round_(n_workers: int, messages: dict[str, list[bytes]], n_events: int, workdir: Path) -> dict[str, Any]:
    from cityops.simulate.city import registry_document

    kafka = start_kafka(workdir / "kafka")
    influx = start_influxdb(workdir / "influx")
    registry = workdir / "sources.json"
    registry.write_text(json.dumps(registry_document(), ensure_ascii=False))
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        t0 = time.perf_counter()
        procs = [start_worker(workdir / f"w{i}", kafka.url, influx.url, registry) for i in range(n_workers)]
        while True:
            hs = [health(port) for _, port in procs]
            for (p, _), _h in zip(procs, hs):
                if p.poll() is not None:
                    raise SystemExit(f"a worker exited {p.returncode}; see {workdir}")
            tasks = next((set(h["tasks"]) for h in hs if h.get("tasks")), set())
            active = [t for h in hs for t in h.get("active", [])]
            if tasks and sorted(active) == sorted(tasks):
                break
            if time.perf_counter() - t0 > 300:
                raise SystemExit(f"tasks not all active after 300 s: {active}")
            time.sleep(0.5)
        ready_s = time.perf_counter() - t0
        spread = [len(h.get("active", [])) for h in hs]
        preload(kafka.url, messages)
        t_first = None
        n_first = 0
        lags: list[int] = []  # standby lag samples (state-topic records not read yet), every standby
        while True:
            hs = [health(port) for _, port in procs]
            done = sum(decided(h) for h in hs)
            lags += [int(e["standby_lag_records"]) for h in hs for e in (h.get("tasks") or {}).values()
                     if e.get("role") == "standby" and e.get("standby_lag_records") is not None]
            now = time.perf_counter()
            if done and t_first is None:
                t_first, n_first = now, done
            if done >= n_events:
                break
            if t_first is not None and now - t_first > 900:
                raise SystemExit(f"only {done} of {n_events} events decided after 900 s")
            time.sleep(0.2)
        wall = time.perf_counter() - t_first
        rate = (n_events - n_first) / wall if wall > 0 else float("nan")
        sb = state_bytes(kafka.url)
        lags.sort()
        return {"workers": n_workers, "tasks_per_worker": spread, "all_active_s": round(ready_s, 1),
                "events_per_s": round(rate), "wall_s": round(wall, 1), "state_bytes_per_event": round(sb / n_events, 1),
                "standby_lag_records": {"samples": len(lags), "median": lags[len(lags) // 2] if lags else None,
                                        "max": lags[-1] if lags else None}}
    finally:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
        kafka.stop()
        influx.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,3", help="comma list of worker counts (default 1,2,3)")
    ap.add_argument("--events", type=int, default=120_000, help="events per round (default 120,000)")
    ap.add_argument("--batch", type=int, default=100, help="events per message (default 100)")
    args = ap.parse_args()
    messages, n, _ = make_messages(args.events, args.batch, seed=7)
    results = []
    for k in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"bench-ha-{k}-") as d:
            res = round_(k, messages, n, Path(d))
        results.append(res)
        print(json.dumps(res), flush=True)
    base = results[0]["events_per_s"]
    for r in results:
        print(f"{r['workers']} worker(s): {r['events_per_s']:,} events/s ({r['events_per_s'] / base:.2f}x of "
              f"{results[0]['workers']}), tasks per worker {r['tasks_per_worker']}, every task active "
              f"{r['all_active_s']} s after start, {r['state_bytes_per_event']} state bytes/event, standby lag "
              f"(records) median {r['standby_lag_records']['median']} max {r['standby_lag_records']['max']}")


if __name__ == "__main__":
    main()
