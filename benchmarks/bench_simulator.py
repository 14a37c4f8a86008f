"""Benchmark: simulator events/s against a constant-dict baseline measured in the same run.

Usage: ``python benchmarks/bench_simulator.py [--hours 6] [--start 06:00] [--rate R] [--seed 1]``.
The baseline only builds constant 12-key dicts (the cheapest possible "event"), so the ratio is
comparable across machines; the absolute rate is what the 200,000 events/s target refers to.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Iterator
from datetime import datetime

from cityops.simulate.traffic import TZ, generate


def _baseline(n: int) -> Iterator[tuple[str, dict[str, object]]]:
    for _ in range(n):
        yield "traffic.card-taps", {
            "event_id": "cz-metro-l1-s01:00000000:1", "ts": "2026-11-25T08:00:00.000+08:00",
            "source": "cz-metro-l1-s01", "card_id": "2130519000000000001", "mode": "metro",
            "line": "地铁1号线", "station": "森林公园", "direction": "in", "fare_cny": 0.0,
            "result": "ok", "lat": 31.9031, "lon": 119.9605}


def _timed(it: Iterator[tuple[str, dict[str, object]]]) -> tuple[int, float, float]:
    """Count events; return (n, wall seconds, CPU seconds of this process)."""
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    n = 0
    for _ in it:
        n += 1
    return n, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0, help="simulated hours (default 6)")
    ap.add_argument("--start", default="06:00", help="local start time HH:MM on 2026-11-25")
    ap.add_argument("--rate", type=float, default=None, help="mean events/s (default realistic)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    h, m = (int(x) for x in args.start.split(":"))
    start = datetime(2026, 11, 25, h, m, tzinfo=TZ)
    n, wall, cpu = _timed(generate(seed=args.seed, start=start, duration_s=args.hours * 3600,
                                   rate=args.rate))
    nb, wall_b, cpu_b = _timed(_baseline(n))
    # CPU time is what one core spends; wall time also counts other load on a shared machine.
    sim, base = n / cpu, nb / cpu_b
    print(f"simulator events={n} cpu_s={cpu:.2f} wall_s={wall:.2f} events_per_cpu_s={sim:,.0f} "
          f"events_per_wall_s={n / wall:,.0f}")
    print(f"baseline  events={nb} cpu_s={cpu_b:.2f} wall_s={wall_b:.2f} events_per_cpu_s={base:,.0f}")
    print(f"ratio simulator/baseline={sim / base:.3f} target_events_per_cpu_s=200,000 "
          f"{'met' if sim >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
