"""Throughput of FoodStream.decode+apply over simulated EPCIS documents, against orjson.loads of the same bytes."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from cityops.engine.context import Context, Decoded
from cityops.engine.state import StateStore
from cityops.engine.windows import Windows
from cityops.food.stream import FOOD_KPIS, FoodStream
from cityops.simulate.food import generate


class _Null:
    def signal(self, *a: object, **k: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated event time (default 24 h)")
    ap.add_argument("--batch", type=int, default=20, help="events per EPCIS document (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    start = datetime(2024, 5, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    raws = [orjson.dumps(d) for _, d in generate(seed=args.seed, start=start, duration_s=args.hours * 3600,
                                                 incidents=True, batch=args.batch)]
    n_events = sum(len(orjson.loads(r)["epcisBody"]["eventList"]) for r in raws)

    t = time.perf_counter()
    for raw in raws:
        orjson.loads(raw)
    base_s = time.perf_counter() - t

    stream = FoodStream()
    store = StateStore(None)
    ctx = Context(store, Windows(store.table("windows"), FOOD_KPIS), _Null(), None)
    t = time.perf_counter()
    accepted = 0
    for raw in raws:
        for out in stream.decode(raw):
            if isinstance(out, Decoded):
                stream.apply(out, ctx)
                accepted += 1
    full_s = time.perf_counter() - t

    print(f"documents={len(raws)} events={n_events} accepted={accepted} bytes={sum(map(len, raws))}")
    print(f"baseline orjson.loads: {n_events / base_s:,.0f} events/s")
    print(f"FoodStream decode+apply: {n_events / full_s:,.0f} events/s")
    print(f"ratio baseline/decode+apply: {base_s and full_s / base_s:.1f}x slower")


if __name__ == "__main__":
    main()
