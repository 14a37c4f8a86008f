"""Peak RSS of the engine's state with a million distinct card pseudonyms, and that it is bounded by retention.

The engine as the worker runs it (every shipped rule, the simulator's source registry, durable state on
disk, a checkpoint every ``--checkpoint-every`` events) is fed card taps and health-card registrations, each
of a card never seen before, in three phases of event time:

1. ``--cards`` distinct cards within 5 h: every one is in the dedup table (horizon 25.2 h) and in the
   per-card rule state (CardImpossibleTravel keeps a card's last tap 6 h; the health rules a card's day);
2. 30 h of quiet event time (a few events a minute): every horizon passes, the sweeps empty the tables;
3. ``--cards`` other distinct cards within 5 h, as in phase 1.

Printed after each phase: entries per table, the process's RSS and peak RSS (VmHWM), bytes committed.
Bounded means phase 3 ends with the same entries as phase 1 and peak RSS does not grow by the state of
another million cards. Baseline in the same run: RSS of the same process before the first event.

    python benchmarks/bench_state_memory.py                  # 1,000,000 cards per phase
    python benchmarks/bench_state_memory.py --cards 200000   # smaller, quicker
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

CST = timezone(timedelta(hours=8))


def rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, MiB."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def templates() -> dict[str, list[dict[str, Any]]]:
    """Simulated events to copy, per topic: unsigned card taps with a location, health registrations."""
    from cityops.simulate.run import events

    it, _ = events(seed=3, start=datetime(2026, 11, 24, 8, 0, tzinfo=CST), duration_s=3600, rate=None,
                   streams={"traffic", "health"}, incidents=False)
    out: dict[str, list[dict[str, Any]]] = {"traffic.card-taps": [], "health.card-events": []}
    for topic, ev in it:
        if topic in out and "sig" not in ev and len(out[topic]) < 2000:
            if topic == "health.card-events" and ev.get("kind") != "register":
                continue
            out[topic].append(ev)
        if all(len(v) >= 2000 for v in out.values()):
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cards", type=int, default=1_000_000, help="distinct cards per busy phase (default 1,000,000)")
    ap.add_argument("--checkpoint-every", type=int, default=50_000, help="events between checkpoints")
    args = ap.parse_args()

    from cityops.alerts.wiring import build_alerting
    from cityops.engine.pipeline import Engine
    from cityops.engine.state import StateStore
    from cityops.runtime import build_streams
    from cityops.settings import load_settings
    from cityops.simulate.city import registry_document

    work = Path(tempfile.mkdtemp(prefix="cityops-mem-"))
    (work / "sources.json").write_text(json.dumps(registry_document()))
    settings = load_settings({"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CITYOPS_INFLUX_URL": "http://127.0.0.1:9",
                              "CITYOPS_PSEUDONYM_KEY": "bench-pseudonym-key-0123456789",
                              "CITYOPS_DATA_DIR": str(work / "data"),
                              "CITYOPS_SOURCE_REGISTRY": str(work / "sources.json")})
    tmpl = templates()
    gc.set_threshold(settings.gc_threshold)
    base_rss, _ = rss_mib()
    clock = [time.time()]
    store = StateStore(Path(settings.data_dir) / "state").open()
    alerts, rules, registry = build_alerting(settings, store)
    engine = Engine(store, build_streams(settings, alerts.rules if alerts is not None else None), allowed_lateness_s=settings.allowed_lateness_s,
                    dedup_horizon_s=settings.dedup_horizon_s, window_s=settings.window_s, signals=alerts,
                    rules=rules, registry=registry, settings=settings, now=lambda: clock[0])
    offsets: dict[str, int] = {}
    committed = [0]
    n_events = [0]

    def send(topic: str, batch: list[dict[str, Any]]) -> None:
        off = offsets[topic] = offsets.get(topic, -1) + 1
        engine.process(topic, 0, off, orjson.dumps(batch))
        n_events[0] += len(batch)

    def checkpoint() -> None:
        clock[0] += 1.0
        res = engine.checkpoint()
        committed[0] += res.bytes_written
        # As the worker's sinks do once delivered: points written, alert transitions sent.
        engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
        if alerts is not None:
            alerts.ack_outbox([seq for seq, _tr in alerts.pop_outbox(1_000_000)])

    def phase(t0: float, span_s: float, n: int, card0: int) -> None:
        """``n`` events of distinct cards ``card0..`` evenly over ``span_s`` from ``t0``; 1 in 5 a registration."""
        bufs: dict[str, list[dict[str, Any]]] = {t: [] for t in tmpl}
        since = 0
        for i in range(n):
            topic = "health.card-events" if i % 5 == 4 else "traffic.card-taps"
            ev = dict(tmpl[topic][i % len(tmpl[topic])])
            ev["event_id"] = f"mem-{card0 + i}"
            ev["card_id"] = f"card-{card0 + i:09d}"
            ev["ts"] = datetime.fromtimestamp(t0 + span_s * i / n, CST).isoformat(timespec="milliseconds")
            buf = bufs[topic]
            buf.append(ev)
            if len(buf) == 100:
                send(topic, buf)
                bufs[topic] = []
            since += 1
            if since >= args.checkpoint_every:
                since = 0
                checkpoint()
        for topic, buf in bufs.items():
            if buf:
                send(topic, buf)
        checkpoint()

    def report(label: str) -> None:
        gc.collect()
        rss, hwm = rss_mib()
        sizes = {name: len(t) for name, t in store.tables.items() if len(t)}
        top = ", ".join(f"{k}={v:,}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:6])
        print(f"{label}: events so far {n_events[0]:,}; RSS {rss:,.0f} MiB, peak RSS {hwm:,.0f} MiB "
              f"(before any event {base_rss:,.0f} MiB); committed {committed[0] / 2**20:,.0f} MiB\n    entries: {top}")
        sys.stdout.flush()

    start = datetime(2026, 11, 23, 6, 0, tzinfo=CST).timestamp()
    t = time.perf_counter()
    phase(start, 5 * 3600, args.cards, 0)
    report(f"phase 1 ({args.cards:,} distinct cards in 5 h, {time.perf_counter() - t:.0f} s)")
    t1 = start + 5 * 3600
    quiet_s = 30 * 3600
    phase(t1, quiet_s, quiet_s // 20, 10 * args.cards)  # one event every 20 s of event time
    report("phase 2 (30 h of quiet event time: every horizon passed)")
    t = time.perf_counter()
    phase(t1 + quiet_s, 5 * 3600, args.cards, args.cards)
    report(f"phase 3 ({args.cards:,} other distinct cards in 5 h, {time.perf_counter() - t:.0f} s)")
    store.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
