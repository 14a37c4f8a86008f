"""Events/s of the whole KPI path in one worker process vs a raw aiokafka consume-and-decode loop.

Both read the same preloaded topic in the same run (the machine is shared and noisy, so the ratio is the
figure to compare across runs). The worker is the real `cityops worker` (Faust agents, engine, state
commits, InfluxDB writes); its rate is taken from /healthz between the first and the last event decided,
so group-join time is not counted.

    python benchmarks/bench_kpi_path.py                 # 100-event batches and single-event messages
    python benchmarks/bench_kpi_path.py --events 300000 --modes batch
    python benchmarks/bench_kpi_path.py --rules          # with every alert rule on (issue 4 path)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from cityops.localproc import free_port
from cityops.localstack import start_influxdb, start_kafka
from cityops.simulate.run import Batcher, events
from cityops.topics import TopicSpec, ensure_topics

CST = timezone(timedelta(hours=8))


def make_messages(n_events: int, batch: int, seed: int, food: bool = False) -> tuple[dict[str, list[bytes]], int]:
    if food:  # EPCIS documents of `batch` events each, at a rate that yields n_events in a simulated day
        from cityops.simulate import food as food_sim

        docs = food_sim.generate(seed=seed, start=datetime(2026, 11, 24, 0, 0, tzinfo=CST), duration_s=86400,
                                 rate=n_events / 86400, batch=batch)
        out: dict[str, list[bytes]] = {}
        n = 0
        for topic, doc in docs:
            out.setdefault(topic, []).append(orjson.dumps(doc))
            n += len(doc["epcisBody"]["eventList"])
            if n >= n_events:
                break
        return out, n
    it, _ = events(seed=seed, start=datetime(2026, 11, 24, 7, 0, tzinfo=CST), duration_s=6 * 3600, rate=None,
                   streams={"traffic", "health"}, incidents=False)
    b = Batcher(batch)
    out: dict[str, list[bytes]] = {}
    n = 0
    for topic, value in it:
        m = b.add(topic, value)
        n += 1
        if m is not None:
            out.setdefault(m[0], []).append(m[1])
        if n >= n_events:
            break
    for t, raw in b.drain():
        out.setdefault(t, []).append(raw)
    return out, n


def preload(bootstrap: str, messages: dict[str, list[bytes]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=4 << 20, max_request_size=16 << 20)
    for topic, raws in messages.items():
        for raw in raws:
            p.send(topic, raw)
    p.flush()
    p.close()


async def raw_loop(bootstrap: str, topics: list[str], n_messages: int) -> float:
    """aiokafka: consume every message and decode its JSON; returns seconds from first to last message."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=16 << 20,
                         fetch_max_bytes=64 << 20)
    await c.start()
    seen = 0
    t0 = None
    try:
        while seen < n_messages:
            batches = await c.getmany(timeout_ms=1000, max_records=10_000)
            for recs in batches.values():
                for r in recs:
                    orjson.loads(r.value)
                    seen += 1
                if t0 is None and seen:
                    t0 = time.perf_counter()
    finally:
        await c.stop()
    return time.perf_counter() - (t0 or time.perf_counter())


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return {}


def run_worker(workdir: Path, kafka: str, influx: str, n_events: int, rules: bool) -> tuple[float, dict]:
    port = free_port()
    env = dict(os.environ, CITYOPS_KAFKA_BOOTSTRAP=kafka, CITYOPS_INFLUX_URL=influx,
               CITYOPS_PSEUDONYM_KEY="bench-pseudonym-key-0123456789", CITYOPS_DATA_DIR=str(workdir / "data"),
               CITYOPS_WEB_PORT=str(port), CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6", CITYOPS_LOG_LEVEL="WARNING",
               CITYOPS_TOPIC_PARTITIONS="6")
    if not rules:
        env["CITYOPS_RULES_DIR"] = "none"
        env["CITYOPS_SOURCE_REGISTRY"] = "none"
    log = open(workdir / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        t_first = None
        n_first = 0
        deadline = time.monotonic() + 900
        spy = None
        while time.monotonic() < deadline:
            h = health(port)
            if os.environ.get("BENCH_PYSPY") and spy is None and h and sum(h.get("events", {}).values()):
                spy = subprocess.Popen(["py-spy", "record", "-d", "8", "-r", "200", "-f", "raw", "-o",
                                        os.environ["BENCH_PYSPY"], "-p", str(proc.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = sum(h.get("events", {}).values()) if h else 0
            if done and t_first is None:
                t_first, n_first = time.perf_counter(), done
            if done >= n_events:
                if spy is not None:
                    spy.wait(30)
                return (done - n_first) / (time.perf_counter() - t_first), h
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; see {workdir / 'worker.log'}")
            time.sleep(0.05)
        raise SystemExit("worker did not finish in 15 minutes")
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events per mode (default 200,000)")
    ap.add_argument("--single-events", type=int, default=40_000, help="events in single-event mode")
    ap.add_argument("--modes", default="batch,single", help="comma list of batch, single, food")
    ap.add_argument("--food-events", type=int, default=30_000, help="EPCIS events in food mode")
    ap.add_argument("--rules", action="store_true", help="alert rules and source registry on")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        batch, n_target = {"batch": (100, args.events), "single": (1, args.single_events),
                           "food": (20, args.food_events)}[mode]
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            kafka = start_kafka(work / "kafka")
            influx = start_influxdb(work / "influx")
            try:
                ensure_topics(kafka.url, [TopicSpec(t, 6 if "taps" in t else 3, {"retention.ms": "-1"})
                                          for t in ("traffic.card-taps", "traffic.road-detectors",
                                                    "health.card-events", "food.trace-events",
                                                    "cityops.dead-letter", "cityops.alerts")])
                msgs, n = make_messages(n_target, batch, seed=5, food=(mode == "food"))
                n_msgs = sum(len(v) for v in msgs.values())
                preload(kafka.url, msgs)
                raw_s = asyncio.run(raw_loop(kafka.url, list(msgs), n_msgs))
                raw_eps = n / raw_s if raw_s > 0 else float("inf")
                eps, h = run_worker(work, kafka.url, influx.url, n, args.rules)
            finally:
                kafka.stop()
                influx.stop()
        print(f"mode={mode} batch={batch} events={n:,} messages={n_msgs:,} rules={'on' if args.rules else 'off'}")
        print(f"  raw aiokafka consume+decode : {raw_eps:12,.0f} events/s ({n_msgs / raw_s:,.0f} msgs/s)")
        print(f"  cityops worker KPI path     : {eps:12,.0f} events/s")
        print(f"  ratio worker/raw            : {eps / raw_eps:12.3f}")


if __name__ == "__main__":
    main()
