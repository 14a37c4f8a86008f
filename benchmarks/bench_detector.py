"""Throughput of KpiDetector.update (default channels) over the NAB corpus on one core, against a running-mean baseline
and against the detector's former default channels (seasonal, range, profile: before the ART channel): as a KPI rule
streams it (the fixed ART learning period) and as `cityops nab-detect` runs it (each file's NAB probationary period
as the learning period: a coarser downsampling step on long files, so less ART work); with `--cad` also with the
opt-in CAD OSE channel added (pure Python, much slower)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cityops.alerts.detector import KpiDetector
from cityops.alerts.nab import _epoch_s, _read, art_learning_pts

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab" / "data"  # ../shared


def _load(data_dir: Path) -> list[tuple[list[float], list[float]]]:
    series = []
    for path in sorted(data_dir.rglob("*.csv")):
        stamps, values = _read(path)
        series.append(([_epoch_s(s) for s in stamps], values))
    return series


def _detector(series: list[tuple[list[float], list[float]]], nab: bool = False, **kw: object) -> float:
    t0 = time.perf_counter()
    for secs, values in series:
        if nab:  # as nab-detect builds it: the ART learning period is the file's NAB probationary period
            kw["art_learn_pts"] = art_learning_pts(len(values))
        upd = KpiDetector(**kw).update  # the default channels, as the KPI rules run it (unless kw)
        for t, v in zip(secs, values):
            upd(t, v)
    return time.perf_counter() - t0


def _running_mean(series: list[tuple[list[float], list[float]]]) -> float:
    # The cheapest streaming "detector" worth the name: one call per point, an EWMA and a z.
    class RunningMean:
        def __init__(self) -> None:
            self.m = 0.0
            self.v = 1.0

        def update(self, ts: float, x: float) -> float:
            d = x - self.m
            self.m += 0.01 * d
            self.v += 0.01 * (d * d - self.v)
            return d * d / (self.v + 1e-12)

    t0 = time.perf_counter()
    for secs, values in series:
        upd = RunningMean().update
        for t, v in zip(secs, values):
            upd(t, v)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--cad", action="store_true", help="also the default channels + the CAD OSE channel (one run)")
    args = ap.parse_args()
    series = _load(args.data)
    n = sum(len(v) for _, v in series)
    det = min(_detector(series) for _ in range(args.repeat))
    nab = min(_detector(series, nab=True) for _ in range(args.repeat))
    base = min(_running_mean(series) for _ in range(args.repeat))
    former = min(_detector(series, channels=("seasonal", "range", "profile")) for _ in range(args.repeat))
    print(f"points={n} files={len(series)}")
    print(f"KpiDetector.update       {n / det:12,.0f} points/s   (as a KPI rule streams)")
    print(f"  as nab-detect runs it  {n / nab:12,.0f} points/s")
    print(f"former default channels  {n / former:12,.0f} points/s")
    print(f"running-mean baseline    {n / base:12,.0f} points/s")
    print(f"ratio detector/baseline  {base / det:12.3f}")
    print(f"ratio detector/former    {former / det:12.3f}")
    print(f"ratio nab-detect/baseline {base / nab:11.3f}")
    if args.cad:
        cad = _detector(series, channels=KpiDetector.DEFAULT_CHANNELS + ("cad",))
        print(f"default + cad channel    {n / cad:12,.0f} points/s")
        print(f"ratio (default+cad)/default {cad / det:9.3f}")


if __name__ == "__main__":
    main()
