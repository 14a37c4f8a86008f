"""Events/s of the worker as shipped vs a raw aiokafka consume-and-decode loop; latency and peak RSS.

Both read the same preloaded topics in the same run (the machine is shared and noisy, so the ratio is the
figure to compare across runs). The worker is the real `cityops worker` (Faust agents, engine, state
commits, InfluxDB writes) in the shipped configuration by default: every alert rule of `agents/`, the
source registry on (the simulator's sources, signing keys and service hours, written to a file and named
by CITYOPS_SOURCE_REGISTRY as `cityops demo` does), and the food stream consumed and fed (simulated EPCIS
documents mixed in). Its rate is taken from /healthz between the first and the last event decided, so
group-join time is not counted.

Then, with the same worker and state, events are sent live at half the measured rate for
``--latency-s`` seconds (event time = wall time) and InfluxDB is polled every 0.2 s: the latency of a card
tap is the time from the send of its message to the first poll whose `traffic_ridership` counts include
it (taps_in + taps_out + declined + errors, which count every tap once). Reported: p50/p99/max over
the taps sent after the first ``WARMUP_S`` seconds (the live phase starts once the preload's points are
written; its first seconds pay for the jump of event time). Peak RSS is the worker's VmHWM at the end (summed
over its processes when it runs tasks as child processes; so is its CPU time).
Also printed: events per CPU second of the worker and of the raw loop (the rate the load of a shared
machine changes least).

    python benchmarks/bench_kpi_path.py                    # shipped: 100-event batches, single-event messages
    python benchmarks/bench_kpi_path.py --events 300000 --modes batch
    python benchmarks/bench_kpi_path.py --rules-off        # the KPI path alone: no rules, no registry
    python benchmarks/bench_kpi_path.py --modes food       # EPCIS documents of 20 events
    python benchmarks/bench_kpi_path.py --modes batch --groups traffic --no-food-mix --latency-s 0
                                                           # one task's input alone (issue 11: traffic task)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from cityops.localproc import free_port
from cityops.localstack import start_influxdb, start_kafka
from cityops.simulate.run import Batcher, events
from cityops.topics import TopicSpec, ensure_topics

CST = timezone(timedelta(hours=8))
TAPS = "traffic.card-taps"
WARMUP_S = 3.0  # the first seconds of the live phase: the jump of event time closes the preload's windows


def input_start(hour: int | None) -> datetime:
    """Event time of the preload's first event: ``hour``:00 in the city (UTC+8) of the latest day whose 6 h
    of simulated input end 2 h before now (``None``: now - 8 h, whatever the hour).

    The simulated city's mix depends on the hour (at night road detectors dominate and the clinics are
    closed; from 07:00 card taps are ~80 % and health events ~10 %), so a fixed hour gives the same input
    whenever the benchmark runs."""
    now = datetime.now(CST)
    if hour is None:
        return (now - timedelta(hours=8)).replace(second=0, microsecond=0)
    start = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    while start > now - timedelta(hours=8):
        start -= timedelta(days=1)
    return start


def make_messages(n_events: int, batch: int, seed: int, food: bool = False, start: datetime | None = None,
                  with_food: bool = True, groups: frozenset[str] = frozenset({"traffic", "health"}),
                  ) -> tuple[dict[str, list[bytes]], int, list[tuple[str, dict[str, Any]]]]:
    """(messages per topic, events, the events themselves) of ``n_events`` simulated events.

    ``groups``: the city stream groups to simulate (``cityops.simulate.run.STREAM_GROUPS`` names: traffic =
    card taps + road detectors, health); ``with_food`` mixes EPCIS documents in. ``food``: EPCIS alone.
    """
    if food:  # EPCIS documents of `batch` events each, at a rate that yields n_events in a simulated day
        from cityops.simulate import food as food_sim

        docs = food_sim.generate(seed=seed, start=start or datetime(2026, 11, 24, 0, 0, tzinfo=CST),
                                 duration_s=86400, rate=n_events / 86400, batch=batch)
        out: dict[str, list[bytes]] = {}
        n = 0
        for topic, doc in docs:
            out.setdefault(topic, []).append(orjson.dumps(doc))
            n += len(doc["epcisBody"]["eventList"])
            if n >= n_events:
                break
        return out, n, []
    streams = set(groups) | ({"food"} if with_food else set())
    it, _ = events(seed=seed, start=start or datetime(2026, 11, 24, 7, 0, tzinfo=CST), duration_s=6 * 3600,
                   rate=None, streams=streams, incidents=False, food_batch=max(1, min(batch, 50)))
    b = Batcher(batch)
    out = {}
    kept: list[tuple[str, dict[str, Any]]] = []
    n = 0
    for topic, value in it:
        m = b.add(topic, value)
        n += len(value["epcisBody"]["eventList"]) if topic == "food.trace-events" else 1
        if topic != "food.trace-events":
            kept.append((topic, value))
        if m is not None:
            out.setdefault(m[0], []).append(m[1])
        if n >= n_events:
            break
    for t, raw in b.drain():
        out.setdefault(t, []).append(raw)
    return out, n, kept


def preload(bootstrap: str, messages: dict[str, list[bytes]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, batch_size=4 << 20, max_request_size=16 << 20)
    for topic, raws in messages.items():
        for raw in raws:
            p.send(topic, raw)
    p.flush()
    p.close()


async def raw_loop(bootstrap: str, topics: list[str], n_messages: int) -> tuple[float, float]:
    """aiokafka: consume every message and decode its JSON; (wall, CPU) seconds from first to last message."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=16 << 20,
                         fetch_max_bytes=64 << 20)
    await c.start()
    seen = 0
    t0 = None
    c0 = 0.0
    try:
        while seen < n_messages:
            batches = await c.getmany(timeout_ms=1000, max_records=10_000)
            for recs in batches.values():
                for r in recs:
                    orjson.loads(r.value)
                    seen += 1
                if t0 is None and seen:
                    t0, c0 = time.perf_counter(), time.process_time()
    finally:
        await c.stop()
    return time.perf_counter() - (t0 or time.perf_counter()), time.process_time() - c0


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except Exception:
        return {}


def decided(h: dict) -> int:
    return sum(h.get("events", {}).values()) if h else 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a worker may run its tasks as child processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process and its descendants have used (children that exited and
    were waited for included)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a live process, summed over it and its descendants, MiB."""
    total = 0
    for p in process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)
    return total / 1024 if total else float("nan")


class Worker:
    """The real `cityops worker` as a child process with the benchmark's settings."""

    def __init__(self, workdir: Path, kafka: str, influx: str, shipped: bool,
                 env_extra: dict[str, str] | None = None) -> None:
        """``env_extra``: settings that override the benchmark's (e.g. CITYOPS_STATE_STORE, CITYOPS_LOG_LEVEL)."""
        self.port = free_port()
        env = dict(os.environ, CITYOPS_KAFKA_BOOTSTRAP=kafka, CITYOPS_INFLUX_URL=influx,
                   CITYOPS_PSEUDONYM_KEY="bench-pseudonym-key-0123456789", CITYOPS_DATA_DIR=str(workdir / "data"),
                   CITYOPS_WEB_PORT=str(self.port), CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6",
                   CITYOPS_LOG_LEVEL="WARNING", CITYOPS_TOPIC_PARTITIONS="6")
        if shipped:
            # The simulator's sources (the events come from them), named explicitly as the demo does.
            from cityops.simulate.city import registry_document

            reg = workdir / "sources.json"
            reg.write_text(json.dumps(registry_document(), ensure_ascii=False))
            env["CITYOPS_SOURCE_REGISTRY"] = str(reg)
            env.pop("CITYOPS_RULES_DIR", None)  # the shipped rules
        else:
            env["CITYOPS_RULES_DIR"] = "none"
            env["CITYOPS_SOURCE_REGISTRY"] = "none"
        env.update(env_extra or {})
        self.log_path = workdir / "worker.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=env,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"worker exited {self.proc.returncode}; see {self.log_path}")

    def throughput(self, n_events: int, timeout_s: float = 900.0) -> tuple[float, float]:
        """(events/s, events per CPU second of the worker) from the first to the n-th event decided."""
        t_first = None
        n_first = 0
        c_first = 0.0
        deadline = time.monotonic() + timeout_s
        spy = None
        while time.monotonic() < deadline:
            h = health(self.port)
            done = decided(h)
            if os.environ.get("BENCH_PYSPY") and spy is None and done:
                spy = subprocess.Popen(["py-spy", "record", "-d", os.environ.get("BENCH_PYSPY_S", "8"), "-r",
                                        "100", "-f", "raw", "-o", os.environ["BENCH_PYSPY"], "-p",
                                        str(self.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if done and t_first is None:
                t_first, n_first, c_first = time.perf_counter(), done, cpu_s(self.proc.pid)
            if done >= n_events:
                wall, cpu = time.perf_counter() - t_first, cpu_s(self.proc.pid) - c_first
                if spy is not None:
                    spy.wait(60)
                return (done - n_first) / wall, (done - n_first) / cpu if cpu > 0 else float("inf")
            self.check()
            time.sleep(0.05)
        raise SystemExit(f"worker did not finish in {timeout_s:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def live_messages(template: list[tuple[str, dict[str, Any]]], rate: float, seconds: float, batch: int,
                  t0: float) -> list[tuple[float, str, bytes, int]]:
    """(planned send time, topic, message, card taps in it) of ``rate`` events/s for ``seconds``.

    Events are copies of ``template`` with fresh event ids and card numbers and event time = planned send
    time (signing sources' events are signed again); consecutive events of a topic share a message up to ``batch``.
    """
    from cityops.alerts.sources import sign
    from cityops.simulate.city import signing_key

    keys: dict[str, bytes | None] = {}
    n = max(1, int(rate * seconds))
    out: list[tuple[float, str, bytes, int]] = []
    pending: dict[str, list[dict[str, Any]]] = {}
    for i in range(n):
        topic, tmpl = template[i % len(template)]
        at = t0 + i / rate
        ev = dict(tmpl)
        ev["event_id"] = f"live-{i}"
        if "card_id" in ev:  # a big city: many cards, each tapping at a human pace (no replayed journeys)
            ev["card_id"] = f"live-card-{i}"
        ev["ts"] = datetime.fromtimestamp(at, CST).isoformat(timespec="milliseconds")
        if "sig" in ev:
            src = ev["source"]
            if src not in keys:
                keys[src] = signing_key(src)
            key = keys[src]
            if key is None:
                ev.pop("sig")
            else:
                ev["sig"] = sign(key, ev)
        buf = pending.setdefault(topic, [])
        buf.append(ev)
        if len(buf) >= batch:
            pending[topic] = []
            out.append((at, topic, orjson.dumps(buf if batch > 1 else buf[0]), len(buf) if topic == TAPS else 0))
    for topic, buf in pending.items():
        if buf:
            out.append((t0 + n / rate, topic, orjson.dumps(buf if batch > 1 else buf[0]),
                        len(buf) if topic == TAPS else 0))
    return out


def influx_taps(influx: str, since_s: float) -> int | None:
    """Card taps counted in InfluxDB's traffic_ridership windows starting at or after ``since_s``."""
    q = ("SELECT sum(taps_in), sum(taps_out), sum(declined), sum(errors) FROM traffic_ridership "
         f"WHERE time >= {int(since_s)}s")
    url = f"{influx}/query?" + urllib.parse.urlencode({"db": "cityops", "q": q})
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = json.loads(r.read())
    except Exception:
        return None
    series = body.get("results", [{}])[0].get("series")
    if not series:
        return 0
    return int(sum(v or 0 for v in series[0]["values"][0][1:]))


def latency(kafka: str, influx: str, worker: Worker, template: list[tuple[str, dict[str, Any]]], rate: float,
            seconds: float, batch: int) -> dict[str, float]:
    """Send events live at ``rate`` for ``seconds``; seconds from send to visible in InfluxDB per card tap."""
    from kafka import KafkaProducer

    # Steady state, not the catch-up: the preload's points written first (its windows all close at the jump
    # to live event time, and their points queue ahead of the live ones).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        h = health(worker.port)
        if h and h.get("influx_pending_points") == 0:
            break
        time.sleep(0.2)
    t0 = time.time() + 2.0
    plan = live_messages(template, rate, seconds, batch, t0 + 5.0)  # generating takes a moment
    shift = max(0.0, time.time() + 1.0 - plan[0][0])  # event time = send time (within a second)
    since = (plan[0][0] // 60) * 60 - 60
    total = sum(m[3] for m in plan)
    polls: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            n = influx_taps(influx, since)
            if n is not None:
                polls.append((time.time(), n))
                if n >= total:
                    return
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    p = KafkaProducer(bootstrap_servers=kafka, linger_ms=5, batch_size=1 << 20, max_request_size=16 << 20)
    sent: list[tuple[float, int]] = []  # (send time, card taps in the message)
    late_s = 0.0
    for at, topic, raw, taps in plan:
        due = at + shift
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            late_s = max(late_s, now - due)
        p.send(topic, raw)
        if taps:
            sent.append((time.time(), taps))
    p.flush()
    p.close()
    poller.join(timeout=120)
    stop.set()
    worker.check()
    lat: list[float] = []
    j = 0
    cum = 0
    warm_until = sent[0][0] + WARMUP_S if sent else 0.0
    for t_sent, taps in sent:
        cum += taps
        while j < len(polls) and (polls[j][1] < cum or polls[j][0] < t_sent):
            j += 1
        seen_at = polls[j][0] if j < len(polls) else float("inf")
        if t_sent >= warm_until:
            lat.extend([seen_at - t_sent] * taps)
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {"p50": pct(0.50), "p99": pct(0.99), "max": lat[-1] if lat else float("nan"), "taps": total,
            "seen": polls[-1][1] if polls else 0, "sender_behind_s": late_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events per mode (default 200,000)")
    ap.add_argument("--single-events", type=int, default=40_000, help="events in single-event mode")
    ap.add_argument("--modes", default="batch,single", help="comma list of batch, single, food")
    ap.add_argument("--food-events", type=int, default=30_000, help="EPCIS events in food mode")
    ap.add_argument("--rules-off", action="store_true",
                    help="the KPI path alone: no alert rules, no source registry, no food events mixed in")
    ap.add_argument("--groups", default="traffic,health",
                    help="city stream groups in batch/single modes (comma list of traffic, health): one group = "
                         "what one task of that group sustains (issue 11's tasks; add --no-food-mix for it alone)")
    ap.add_argument("--no-food-mix", action="store_true",
                    help="shipped configuration without EPCIS documents mixed into batch/single input")
    ap.add_argument("--start-hour", type=int, default=None,
                    help="simulated input starts at this hour of the city's day (0-23; default: 8 h before now, "
                         "so the mix depends on when the benchmark runs)")
    ap.add_argument("--latency-s", type=float, default=15.0,
                    help="seconds of live events at half the measured rate (0: no latency phase)")
    ap.add_argument("--live-rate", type=float, default=None,
                    help="events/s of the latency phase instead of half the measured rate (e.g. a city's peak)")
    args = ap.parse_args()
    shipped = not args.rules_off
    for mode in args.modes.split(","):
        batch, n_target = {"batch": (100, args.events), "single": (1, args.single_events),
                           "food": (20, args.food_events)}[mode]
        lat: dict[str, float] | None = None
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            kafka = start_kafka(work / "kafka")
            influx = start_influxdb(work / "influx")
            worker = None
            try:
                ensure_topics(kafka.url, [TopicSpec(t, 6 if "taps" in t else 3, {"retention.ms": "-1"})
                                          for t in ("traffic.card-taps", "traffic.road-detectors",
                                                    "health.card-events", "food.trace-events",
                                                    "cityops.dead-letter", "cityops.alerts")])
                # Event time of the preload ends well before now, so the live phase that follows is not late.
                start = input_start(args.start_hour)
                msgs, n, template = make_messages(n_target, batch, seed=5, food=(mode == "food"), start=start,
                                                  with_food=shipped and not args.no_food_mix,
                                                  groups=frozenset(args.groups.split(",")))
                n_msgs = sum(len(v) for v in msgs.values())
                preload(kafka.url, msgs)
                raw_s, raw_cpu = asyncio.run(raw_loop(kafka.url, list(msgs), n_msgs))
                raw_eps = n / raw_s if raw_s > 0 else float("inf")
                raw_cpu_eps = n / raw_cpu if raw_cpu > 0 else float("inf")
                worker = Worker(work, kafka.url, influx.url, shipped)
                eps, cpu_eps = worker.throughput(n)
                if args.latency_s > 0 and any(t == TAPS for t, _ in template):
                    live_rate = args.live_rate or eps / 2
                    lat = latency(kafka.url, influx.url, worker, template, live_rate, args.latency_s, batch)
                rss = peak_rss_mib(worker.proc.pid)
            finally:
                if worker is not None:
                    worker.stop()
                kafka.stop()
                influx.stop()
        config = "shipped (every rule, source registry, food stream)" if shipped else "KPI path only (rules off)"
        if mode != "food":
            config += f"; input: {'+'.join(sorted(msgs))}"
        print(f"mode={mode} batch={batch} events={n:,} messages={n_msgs:,} config={config}")
        print(f"  raw aiokafka consume+decode : {raw_eps:12,.0f} events/s ({n_msgs / raw_s:,.0f} msgs/s)")
        print(f"  cityops worker              : {eps:12,.0f} events/s")
        print(f"  ratio worker/raw            : {eps / raw_eps:12.3f}")
        # Per CPU second of each process: what a loaded, shared machine changes least.
        print(f"  per CPU second: worker {cpu_eps:,.0f} events, raw {raw_cpu_eps:,.0f} events, "
              f"ratio {cpu_eps / raw_cpu_eps:.3f}")
        if lat is not None:
            print(f"  event -> KPI point in InfluxDB at {args.live_rate or eps / 2:,.0f} events/s "
                  f"for {args.latency_s:g} s: "
                  f"p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s, max {lat['max']:.2f} s "
                  f"({lat['seen']:,} of {lat['taps']:,} card taps seen; sender behind by at most "
                  f"{lat['sender_behind_s']:.2f} s)")
        print(f"  worker peak RSS             : {rss:12,.0f} MiB")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
