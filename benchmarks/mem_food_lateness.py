"""What the food stream's long allowed lateness costs in state: open KPI windows kept for the lateness.

Runs the food simulator (city scale, ~0.25 events/s) for ``--days`` of event time through the engine in process
(no I/O), checkpointing as the worker does and confirming every point written, once with a 10-minute lateness
and once with the food default (7 days), each in its own process. Prints, after the run, the open windows, the
encoded size of each state table (MessagePack, as committed), the process's peak RSS and the mean wall time of
one checkpoint (it visits the open windows).

    python benchmarks/mem_food_lateness.py --days 8
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import msgspec
import orjson

from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.food.stream import FoodStream
from cityops.settings import FOOD_DEFAULT_LATENESS_S
from cityops.simulate.food import generate

FOOD = "food.trace-events"
CST = timezone(timedelta(hours=8))


def run(lateness_s: float, days: float, seed: int) -> dict[str, float]:
    start = datetime(2026, 11, 2, 6, 0, tzinfo=CST)
    clock = [start.timestamp()]
    store = StateStore(None)
    engine = Engine(store, [FoodStream()], stream_lateness_s={FOOD: lateness_s}, now=lambda: clock[0])
    n = 0
    for off, (_topic, doc) in enumerate(generate(seed=seed, start=start, duration_s=days * 86400, batch=20)):
        raw = orjson.dumps(doc)
        engine.process(FOOD, 0, off, raw)
        n += 1
        if off % 200 == 0:  # a checkpoint per ~800 s of event time (the worker: one per second)
            clock[0] = engine.engine_time or clock[0]
            res = engine.checkpoint()
            engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
    res = engine.checkpoint()  # commits what the last messages changed: the steady state starts after it
    engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
    t = time.perf_counter()
    for _ in range(20):
        res = engine.checkpoint()
        engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
    per_checkpoint_ms = (time.perf_counter() - t) / 20 * 1000
    out: dict[str, float] = {"messages": n, "accepted": engine.counts[(FOOD, "accepted")],
                             "open_windows": len(engine.windows.table), "checkpoint_ms": per_checkpoint_ms,
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    enc = msgspec.msgpack.Encoder()
    for name in ("windows", "windows_notified", "dedup", "food_lots"):
        table = store.table(name)
        keys = list(table.data)
        values = table.codec.encode_values(keys, [table.data[k] for k in keys])
        out[f"{name}_entries"] = len(table)
        out[f"{name}_kb"] = len(enc.encode([[k, v] for k, v in zip(keys, values)])) / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lateness", type=float, default=None, help="one run with this lateness (s), in process")
    args = ap.parse_args()
    if args.lateness is not None:
        r = run(args.lateness, args.days, args.seed)
        print(", ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in r.items()))
        return
    for label, lateness in (("10 min", 600.0), ("7 days (food default)", FOOD_DEFAULT_LATENESS_S)):
        out = subprocess.run([sys.executable, __file__, "--days", str(args.days), "--seed", str(args.seed),
                              "--lateness", str(lateness)], capture_output=True, text=True, check=True).stdout
        print(f"lateness {label}: {out.strip()}", flush=True)


if __name__ == "__main__":
    main()
