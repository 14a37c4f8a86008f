"""What the food stream's long allowed lateness costs in state: open KPI windows kept for the lateness.

Runs the food simulator (city scale, ~0.25 events/s) for ``--days`` of event time through the engine in process
(no I/O), checkpointing as the worker does and confirming every point written, once with a 10-minute lateness
and once with the food default (7 days). Prints, after the run, the open windows and the pickled size of each
state table, plus the peak Python heap (tracemalloc) of the engine's state.

    python benchmarks/mem_food_lateness.py --days 8
"""

from __future__ import annotations

import argparse
import pickle
import tracemalloc
from datetime import datetime, timedelta, timezone

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
    tracemalloc.start()
    store = StateStore(None)
    engine = Engine(store, [FoodStream()], stream_lateness_s={FOOD: lateness_s}, now=lambda: clock[0])
    n = 0
    for off, (_topic, doc) in enumerate(generate(seed=seed, start=start, duration_s=days * 86400, batch=20)):
        raw = orjson.dumps(doc)
        engine.process(FOOD, 0, off, raw)
        n += 1
        if off % 50 == 0:
            clock[0] = engine.engine_time or clock[0]
            res = engine.checkpoint()
            engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
    res = engine.checkpoint()
    engine.confirm_written([(p.measurement, p.tags, p.ts) for p in res.points])
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out: dict[str, float] = {"messages": n, "open_windows": len(engine.windows.table),
                             "peak_heap_mb": peak / 2**20}
    for name in ("windows", "closed_windows", "windows_notified", "dedup", "food_lots"):
        out[f"{name}_kb"] = len(pickle.dumps(store.table(name).data, protocol=pickle.HIGHEST_PROTOCOL)) / 1024
    out["counted"] = sum(v for (s, o), v in engine.counts.items() if o == "accepted")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for label, lateness in (("10 min", 600.0), ("7 days (food default)", FOOD_DEFAULT_LATENESS_S)):
        r = run(lateness, args.days, args.seed)
        print(f"lateness {label}: " + ", ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v:,}"
                                               for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
