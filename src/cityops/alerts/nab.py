"""Run the KPI anomaly detector (KpiDetector) over a Numenta Anomaly Benchmark data tree and write NAB detection CSVs.

NAB's harness hands every detector one fact about a file besides its rows: the probationary period, the first
min(floor(0.15 n), 750) of its n rows, which the scorer ignores (Lavin & Ahmad 2015, "Evaluating Real-time
Anomaly Detection Algorithms - the Numenta Anomaly Benchmark"; NAB's `AnomalyDetector.probationaryPeriod`). The
published detectors use it as their learning period (ARTime, HTM's anomaly likelihood, CAD OSE's rest). So does
`run` by default: the ART channel's learning period (`art_learn_pts`) is the file's probationary period, at least
`MIN_LEARN_PTS`. Values are still read one at a time: the score of row i uses rows <= i only; the file's minimum,
maximum or any later value is never handed over. A stream has no length: the KPI rules keep the detector's fixed
learning period (`learning_period="detector"`, also what `--rule` scores).
"""

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

from cityops.alerts.art import MIN_LEARN_PTS
from cityops.alerts.detector import KpiDetector

# The kpi_anomaly rule kind's `model` parameter names the same presets: one class, its channels chosen.
MODELS: dict[str, Callable[..., KpiDetector]] = {
    "kpi": KpiDetector,  # all channels, as the shipped KPI rules run it: what the NAB score is quoted for
    "seasonal": partial(KpiDetector, channels=("seasonal", "range")),
    "art": partial(KpiDetector, channels=("art",)),
    "profile": partial(KpiDetector, channels=("profile",)),
}

__all__ = ["run", "main", "probation_pts", "art_learning_pts", "LEARNING_PERIODS"]

PROBATION_FRACTION = 0.15  # NAB: the first 15 % of a file's rows ...
PROBATION_CAP = 750        # ... at most 750 (= 0.15 x 5,000 rows)
# How the ART channel's learning period is set per file: NAB's probationary period, or the detector's own
# `art_learn_pts` (a rule's, an explicit argument's, or the default: what a stream of unknown length runs).
LEARNING_PERIODS = ("probation", "detector")


def probation_pts(n: int, fraction: float = PROBATION_FRACTION) -> int:
    """NAB's probationary period of a file of `n` rows, in rows: min(floor(0.15 n), 750) (`fraction` for 0.15)."""
    return min(int(fraction * n), PROBATION_CAP)


def art_learning_pts(n: int, fraction: float = PROBATION_FRACTION) -> int:
    """The ART channel's learning period for a file of `n` rows: its probationary period, at least MIN_LEARN_PTS."""
    return max(MIN_LEARN_PTS, probation_pts(n, fraction))


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
    learning_period: str = "probation",
) -> dict[str, Any]:
    """Score every CSV under `data_dir` (columns timestamp,value) with a fresh detector per file.

    Writes `out_dir/<same relative path>` with columns timestamp,anomaly_score, one row per
    input row in the same order; the score of row i uses rows <= i only. `progress(relpath,
    points)` is called after each file. Returns files, points, seconds (detector time only,
    no CSV I/O), points_per_s and learning_period. `detector`: further `KpiDetector` arguments
    (a rule's `detector:`). `learning_period`: "probation" (the ART channel learns for the file's
    NAB probationary period, `probation_pts`, at least `MIN_LEARN_PTS` rows; see the module doc) or
    "detector" (its `art_learn_pts` as given or defaulted). Raises ValueError for an unknown
    learning period, for "probation" with `art_learn_pts` in `detector` (two answers to one
    question), and for detector arguments `KpiDetector` refuses (TypeError for unknown ones).
    """
    extra = dict(detector or {})
    if learning_period not in LEARNING_PERIODS:
        raise ValueError(f"learning_period must be one of {', '.join(LEARNING_PERIODS)}, got {learning_period!r}")
    if learning_period == "probation" and "art_learn_pts" in extra:
        raise ValueError(f"art_learn_pts is given (={extra['art_learn_pts']}), and learning_period probation "
                         "(--learning-period probation) sets it per file: drop one of them")
    MODELS[model](sensitivity=sensitivity, **extra)  # a bad argument fails before any file is written
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    paths = sorted(data_dir.rglob("*.csv"))
    n_files = n_points = 0
    busy = 0.0
    for path in paths:
        rel = path.relative_to(data_dir)
        stamps, values = _read(path)
        secs = [_epoch_s(s) for s in stamps]
        per_file = dict(extra)
        if learning_period == "probation":
            per_file["art_learn_pts"] = art_learning_pts(len(values))
        det = MODELS[model](sensitivity=sensitivity, **per_file)
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
        "learning_period": learning_period,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cityops.alerts.nab DATA_DIR OUT_DIR [--sensitivity S]`."""
    ap = argparse.ArgumentParser(prog="cityops nab-detect", description=__doc__)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--sensitivity", type=float, default=1.0)
    ap.add_argument("--learning-period", choices=LEARNING_PERIODS, default="probation")
    args = ap.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"error: data_dir={args.data_dir} is not a directory", file=sys.stderr)
        return 2
    stats = run(args.data_dir, args.out_dir, sensitivity=args.sensitivity, learning_period=args.learning_period)
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
