"""Run the KPI anomaly detector (KpiDetector) over a Numenta Anomaly Benchmark data tree and write NAB detection CSVs."""

from __future__ import annotations

import argparse
import calendar
import csv
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from functools import partial

from cityops.alerts.detector import KpiDetector

# The kpi_anomaly rule kind's `model` parameter names the same presets: one class, its channels chosen.
MODELS: dict[str, Callable[..., KpiDetector]] = {
    "kpi": KpiDetector,  # all channels, as the shipped KPI rules run it: what the NAB score is quoted for
    "seasonal": partial(KpiDetector, channels=("seasonal", "range")),
    "art": partial(KpiDetector, channels=("art",)),
    "profile": partial(KpiDetector, channels=("profile",)),
}

__all__ = ["run", "main"]


def _epoch_s(text: str) -> float:
    """NAB timestamps are naive 'YYYY-MM-DD HH:MM:SS'; we read them as UTC epoch seconds."""
    d = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if d.tzinfo is not None:
        return d.timestamp()
    return calendar.timegm(d.timetuple()) + d.microsecond / 1e6


def _read(path: Path) -> tuple[list[str], list[float]]:
    with path.open(newline="") as fh:
        rd = csv.reader(fh)
        header = [h.strip() for h in next(rd)]
        ti, vi = header.index("timestamp"), header.index("value")
        stamps: list[str] = []
        values: list[float] = []
        for row in rd:
            if not row:
                continue
            stamps.append(row[ti])
            values.append(float(row[vi]))
    return stamps, values


def run(
    data_dir: Path,
    out_dir: Path,
    *,
    sensitivity: float = 1.0,
    progress: Callable[[str, int], None] | None = None,
    model: str = "kpi",
    detector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score every CSV under `data_dir` (columns timestamp,value) with a fresh detector per file.

    Writes `out_dir/<same relative path>` with columns timestamp,anomaly_score, one row per
    input row in the same order; the score of row i uses rows <= i only. `progress(relpath,
    points)` is called after each file. Returns files, points, seconds (detector time only,
    no CSV I/O) and points_per_s. `detector`: further `KpiDetector` arguments (a rule's `detector:`).
    """
    extra = dict(detector or {})
    MODELS[model](sensitivity=sensitivity, **extra)  # a bad argument fails before any file is written
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    paths = sorted(data_dir.rglob("*.csv"))
    n_files = n_points = 0
    busy = 0.0
    for path in paths:
        rel = path.relative_to(data_dir)
        stamps, values = _read(path)
        secs = [_epoch_s(s) for s in stamps]
        det = MODELS[model](sensitivity=sensitivity, **extra)
        upd = det.update
        t0 = time.perf_counter()
        scores = [upd(t, v)[0] for t, v in zip(secs, values)]
        busy += time.perf_counter() - t0
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["timestamp", "anomaly_score"])
            wr.writerows(zip(stamps, (f"{s:.6f}" for s in scores)))
        n_files += 1
        n_points += len(values)
        if progress is not None:
            progress(str(rel), len(values))
    return {
        "files": n_files,
        "points": n_points,
        "seconds": busy,
        "points_per_s": n_points / busy if busy > 0 else float("inf"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cityops.alerts.nab DATA_DIR OUT_DIR [--sensitivity S]`."""
    ap = argparse.ArgumentParser(prog="cityops nab-detect", description=__doc__)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--sensitivity", type=float, default=1.0)
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"error: data_dir={args.data_dir} is not a directory", file=sys.stderr)
        return 2
    stats = run(args.data_dir, args.out_dir, sensitivity=args.sensitivity)
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
