"""What keeping state in Kafka costs: the worker with CITYOPS_STATE_STORE=local vs =kafka on the same input.

For each store the real `cityops worker` (as shipped: every alert rule of `agents/`, the source registry on,
food documents mixed in — `bench_kpi_path.py`'s configuration and helpers) consumes the same preloaded
simulated input on fresh Tansu + InfluxDB servers. Reported:

* events/s and events per worker CPU second of each store (from /healthz, first to last event decided, so
  group-join time is not counted; CPU of the worker's whole process tree) and the ratio kafka/local in the
  same run — the machine is shared, so the ratio is the figure to compare across runs. Where the kafka
  store runs each task in a process of its own (issue 11's supervisor) and the local store one engine for
  everything, the ratio also holds that parallelism: per CPU second is then the cost comparison;
* bytes written to the state topics per event, split by record kind (claim, commit, snapshot), read back
  from every topic whose name starts with ``cityops.state`` (one topic today; per-task topics
  ``cityops.state.<task>`` once state is split by task);
* the same bytes while events arrive live at a fixed rate (``--live-rate``, default 2,700 events/s, for
  ``--live-s`` seconds, event time = send time), counted over the second half of that phase: a commit
  carries each touched window and rule entry once per second, so bytes per event depend on the rate and
  a preload replay alone would understate them;
* cold restore: after the kafka worker stopped (SIGTERM: final commit), a new worker with an empty data
  directory restores from Kafka alone; its log's ``state restored from <topic>[<partition>] ... in X.XXs``
  lines (one per task) and the wall time from its start to the last of them.

    python benchmarks/bench_state_kafka.py                        # 200,000 events in 100-event messages
    python benchmarks/bench_state_kafka.py --events 300000 --rounds 3
    python benchmarks/bench_state_kafka.py --snapshot-bytes 4000000   # snapshots within the run
    python benchmarks/bench_state_kafka.py --live-rate 700 --live-s 60  # Shanghai's metro peak, live
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kpi_path import Worker, decided, health, input_start, live_messages, make_messages, preload  # noqa: E402

from cityops.localstack import start_influxdb, start_kafka  # noqa: E402
from cityops.topics import TopicSpec, ensure_topics  # noqa: E402

STATE_PREFIX = "cityops.state"
RESTORED = re.compile(r"state restored from (\S+?\[\d+\])[^\n]* in ([0-9.]+)s")
INPUT_TOPICS = ("traffic.card-taps", "traffic.road-detectors", "health.card-events", "food.trace-events",
                "cityops.dead-letter", "cityops.alerts")


def state_end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    """End offset of every partition of every state topic."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in sorted(c.topics()) if t.startswith(STATE_PREFIX)
               for p in sorted(c.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): end for tp, end in c.end_offsets(tps).items()} if tps else {}
    finally:
        c.close()


def state_topic_bytes(bootstrap: str, since: dict[tuple[str, int], int] | None = None,
                      until: dict[tuple[str, int], int] | None = None,
                      ) -> tuple[dict[str, dict[str, tuple[int, int]]], list[str]]:
    """Per state topic and record kind (claim, commit, snapshot): (messages, bytes), every partition read
    (only offsets in [``since``, ``until``) where given); and the partitions that hold anything
    (``topic[partition]``: one per task that ran)."""
    from kafka import KafkaConsumer, TopicPartition

    from cityops.engine.kafka_state import _chunk_decoder

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in sorted(c.topics()) if t.startswith(STATE_PREFIX)
               for p in sorted(c.partitions_for_topic(t) or ())]
        out: dict[str, dict[str, tuple[int, int]]] = {}
        if not tps:
            return out, []
        c.assign(tps)
        ends = c.end_offsets(tps)
        if until is not None:
            ends = {tp: min(end, until.get((tp.topic, tp.partition), 0)) for tp, end in ends.items()}
        starts = {tp: min(ends[tp], (since or {}).get((tp.topic, tp.partition), 0)) for tp in tps}
        for tp in tps:
            c.seek(tp, starts[tp])
        left = sum(ends[tp] - starts[tp] for tp in tps)
        deadline = time.monotonic() + 300
        while left > 0 and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=1000).items():
                per_kind = out.setdefault(tp.topic, {})
                for r in recs:
                    if r.offset >= ends[tp]:
                        continue
                    left -= 1
                    kind = _chunk_decoder.decode(r.value).kind
                    m, size = per_kind.get(kind, (0, 0))
                    per_kind[kind] = (m + 1, size + len(r.value))
        if left > 0:
            raise SystemExit(f"could not read the state topics back: {left} messages missing")
        return out, [f"{tp.topic}[{tp.partition}]" for tp in tps if ends[tp] > 0]
    finally:
        c.close()


def events_in(topic: str, messages: list[bytes]) -> int:
    """Events in a topic's messages (a message is one event, a JSON array of events, or an EPCIS document)."""
    n = 0
    for raw in messages:
        v = orjson.loads(raw)
        n += len(v["epcisBody"]["eventList"]) if topic == "food.trace-events" else len(v) if isinstance(v, list) else 1
    return n


def restore_lines(log_path: Path) -> list[tuple[str, float]]:
    """(topic[partition], seconds) of each ``state restored from`` line in a worker's log."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [(m.group(1), float(m.group(2))) for m in RESTORED.finditer(text)]


def live_phase(kafka: str, worker: Worker, n_before: int, template: list[tuple[str, dict[str, Any]]],
               rate: float, seconds: float, batch: int) -> dict[str, Any]:
    """Send events live at ``rate`` for ``seconds`` (event time = send time; bench_kpi_path.live_messages);
    state-topic end offsets and events decided at half time and once every live event is committed."""
    from kafka import KafkaProducer

    plan = live_messages(template, rate, seconds, batch, time.time() + 3.0)
    total = sum(len(orjson.loads(raw)) if raw[:1] == b"[" else 1 for _at, _t, raw, _taps in plan)
    shift = max(0.0, time.time() + 0.5 - plan[0][0])
    half = plan[0][0] + seconds / 2
    p = KafkaProducer(bootstrap_servers=kafka, linger_ms=5, batch_size=1 << 20, max_request_size=16 << 20)
    mid: dict[tuple[str, int], int] | None = None
    n_mid = 0
    behind = 0.0
    for at, topic, raw, _taps in plan:
        due = at + shift
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        if mid is None and at >= half:
            mid, n_mid = state_end_offsets(kafka), decided(health(worker.port))
        p.send(topic, raw)
    p.flush()
    p.close()
    deadline = time.monotonic() + 180
    while decided(health(worker.port)) < n_before + total:
        worker.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not decide the {total:,} live events within 180 s")
        time.sleep(0.1)
    n_end = decided(health(worker.port))
    time.sleep(3.0)  # the commit that covers the last events (flush interval 1 s) and its read-back
    return {"rate": rate, "seconds": seconds, "events": total, "mid": mid or {}, "n_mid": n_mid,
            "n_end": n_end, "end": state_end_offsets(kafka), "sender_behind_s": behind}


def run_store(store: str, msgs: dict[str, list[bytes]], n: int, work: Path, env: dict[str, str],
              restore: bool, live: tuple[list[tuple[str, dict[str, Any]]], float, float, int] | None = None,
              ) -> dict:
    """One store on fresh servers: throughput; with kafka the state-topic bytes, a live phase at a fixed
    rate (``live``: template events, events/s, seconds, events per message) and a cold restore."""
    kafka = start_kafka(work / "kafka")
    influx = start_influxdb(work / "influx")
    res: dict = {"store": store}
    worker = None
    try:
        ensure_topics(kafka.url, [TopicSpec(t, 6 if "taps" in t else 3, {"retention.ms": "-1"})
                                  for t in INPUT_TOPICS])
        preload(kafka.url, msgs)
        (work / "run").mkdir()
        worker = Worker(work / "run", kafka.url, influx.url, shipped=True,
                        env_extra=dict(env, CITYOPS_STATE_STORE=store))
        res["eps"], res["cpu_eps"] = worker.throughput(n)
        if res["eps"] <= 0:  # every event was decided between two polls of /healthz
            raise SystemExit(f"{store}: too few events to time; run with more --events")
        if store == "kafka" and live is not None:
            before = state_end_offsets(kafka.url)
            res["live"] = live_phase(kafka.url, worker, decided(health(worker.port)), *live)
            res["live"]["before"] = before
        worker.stop()
        res["exit"] = worker.proc.returncode
        worker = None
        if store != "kafka":
            return res
        if "live" in res:
            lv = res["live"]
            res["topics"], res["partitions"] = state_topic_bytes(kafka.url, until=lv["before"])
            lv["topics"], _ = state_topic_bytes(kafka.url, since=lv["mid"], until=lv["end"])
        else:
            res["topics"], res["partitions"] = state_topic_bytes(kafka.url)
        if not restore:
            return res
        # A new machine: empty data directory; the state topics are all it has.
        (work / "cold").mkdir()
        t0 = time.perf_counter()
        worker = Worker(work / "cold", kafka.url, influx.url, shipped=True,
                        env_extra=dict(env, CITYOPS_STATE_STORE=store, CITYOPS_LOG_LEVEL="INFO"))
        want = max(1, len(res["partitions"]))  # one restore line per task (state partition written)
        deadline = time.monotonic() + 300
        lines: list[tuple[str, float]] = []
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            worker.check()
            now = restore_lines(worker.log_path)
            if len(now) != len(lines):
                lines, stable_since = now, time.monotonic()
                res["restored_wall_s"] = time.perf_counter() - t0
            # Every task restored: as many lines as state partitions written, or no new one for 15 s.
            if lines and health(worker.port) and (len({tp for tp, _ in lines}) >= want
                                                   or time.monotonic() - stable_since > 15):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"no `state restored from` line in {worker.log_path} within 300 s")
        res["restores"] = lines
        worker.stop()
        worker = None
        return res
    finally:
        if worker is not None:
            worker.stop()
        kafka.stop()
        influx.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000,
                    help="events of simulated input (default 200,000). The worker hands the engine 500 records "
                         "at a time (50,000 events in 100-event messages) and /healthz answers between them: "
                         "fewer than ~200,000 events are timed over too few steps")
    ap.add_argument("--batch", type=int, default=100, help="events per Kafka message (default 100)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="local/kafka pairs, the order alternating (default 1); medians are reported")
    ap.add_argument("--snapshot-bytes", type=int, default=None,
                    help="CITYOPS_STATE_SNAPSHOT_BYTES for the kafka worker (default: the shipped setting)")
    ap.add_argument("--start-hour", type=int, default=7,
                    help="the input's first hour of the simulated city's day (default 7: the morning mix)")
    ap.add_argument("--live-rate", type=float, default=2700.0,
                    help="events/s of the live phase after the preload (kafka store, first round); default "
                         "2,700: the traffic task of a Beijing-size city at its busiest minute (docs/scaling.md)")
    ap.add_argument("--live-s", type=float, default=30.0,
                    help="seconds of the live phase (0: none; at least 20: its first seconds close the "
                         "preload's windows); state-topic bytes are counted over its second half")
    ap.add_argument("--no-restore", action="store_true", help="skip the cold restore")
    args = ap.parse_args()
    env = {}
    if args.snapshot_bytes is not None:
        env["CITYOPS_STATE_SNAPSHOT_BYTES"] = str(args.snapshot_bytes)
    # A city morning (card taps ~80 %, road ~8 %, health ~10 %, food), whenever the benchmark runs.
    start = input_start(args.start_hour)
    msgs, n, template = make_messages(args.events, args.batch, seed=5, start=start)
    n_msgs = sum(len(v) for v in msgs.values())
    mix = ", ".join(f"{t} {events_in(t, v):,}" for t, v in sorted(msgs.items()))
    print(f"input: {n:,} events in {n_msgs:,} messages ({mix}), starting {start:%H:%M} city time; shipped "
          f"configuration (every rule, source registry, food mixed in); snapshot bytes: "
          f"{args.snapshot_bytes if args.snapshot_bytes is not None else 'shipped default'}")
    runs: dict[str, list[dict]] = {"local": [], "kafka": []}
    for r in range(args.rounds):
        order = ("local", "kafka") if r % 2 == 0 else ("kafka", "local")
        for store in order:
            with tempfile.TemporaryDirectory() as d:
                live = (template, args.live_rate, args.live_s, args.batch) if args.live_s > 0 and r == 0 else None
                res = run_store(store, msgs, n, Path(d), env, restore=not args.no_restore and r == 0, live=live)
            runs[store].append(res)
            print(f"  round {r + 1} {store:5}: {res['eps']:10,.0f} events/s, {res['cpu_eps']:10,.0f} per worker "
                  f"CPU s (exit {res['exit']})")
            sys.stdout.flush()
        pair = runs["kafka"][-1]["eps"] / runs["local"][-1]["eps"]
        print(f"  round {r + 1} ratio kafka/local: {pair:.3f}")
    med = {s: statistics.median(x["eps"] for x in v) for s, v in runs.items()}
    med_cpu = {s: statistics.median(x["cpu_eps"] for x in v) for s, v in runs.items()}
    print(f"events/s (median of {args.rounds}): local {med['local']:,.0f}, kafka {med['kafka']:,.0f}, "
          f"ratio kafka/local {med['kafka'] / med['local']:.3f}")
    print(f"per worker CPU second: local {med_cpu['local']:,.0f}, kafka {med_cpu['kafka']:,.0f}, "
          f"ratio {med_cpu['kafka'] / med_cpu['local']:.3f}")
    first = runs["kafka"][0]
    total = 0
    kinds: dict[str, tuple[int, int]] = {}
    for topic, per_kind in first["topics"].items():
        t_bytes = sum(b for _m, b in per_kind.values())
        total += t_bytes
        print(f"  {topic}: {t_bytes:,} bytes, " + ", ".join(f"{k} {m} messages {b:,} bytes" for k, (m, b)
                                                          in sorted(per_kind.items())))
        for k, (m, b) in per_kind.items():
            km, kb = kinds.get(k, (0, 0))
            kinds[k] = (km + m, kb + b)
    print(f"state topics: {total:,} bytes over {n:,} events = {total / n:,.1f} bytes/event; "
          + "; ".join(f"{k} {b / n:,.1f}" for k, (_m, b) in sorted(kinds.items())))
    if "live" in first:
        lv = first["live"]
        n_live = lv["n_end"] - lv["n_mid"]
        kinds = {}
        for per_kind in lv["topics"].values():
            for k, (m, b) in per_kind.items():
                km, kb = kinds.get(k, (0, 0))
                kinds[k] = (km + m, kb + b)
        live_bytes = sum(b for _m, b in kinds.values())
        print(f"live at {lv['rate']:,.0f} events/s for {lv['seconds']:g} s ({lv['events']:,} events; sender behind "
              f"by at most {lv['sender_behind_s']:.2f} s): second half {n_live:,} events, state topics "
              f"{live_bytes:,} bytes = {live_bytes / max(1, n_live):,.1f} bytes/event; "
              + "; ".join(f"{k} {m} messages {b / max(1, n_live):,.1f}/event" for k, (m, b) in sorted(kinds.items())))
    if "restores" in first:
        print(f"cold restore (empty data dir): " + ", ".join(f"{tp} {s:.2f} s" for tp, s in first["restores"])
              + f"; worker start to last task restored {first['restored_wall_s']:.1f} s")


if __name__ == "__main__":
    main()
