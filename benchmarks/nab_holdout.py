"""Held-out validation of the KPI detector on the NAB subset: choose parameters on one half of the files, score the other.

    python benchmarks/nab_holdout.py                 # the protocol below, then the shipped defaults on all files
    python benchmarks/nab_holdout.py --defaults-only # only the shipped defaults (all files, halves A and B)

The 25 NAB series in ../shared/data/nab are a sample of the 58-series benchmark; a detector tuned on them can
score far lower on the rest. So every parameter is chosen on a tuning half and judged on the other:

* Split by file, within each data category (files sorted by name, alternately to half A and half B), so both
  halves hold every kind of series. The rule is fixed in advance and looks at no score.
* Direction A->B: every candidate in `GRID` runs over the files (one fresh detector per file, no look-ahead, as
  `cityops nab-detect`), the candidate with the best standard score on A is chosen, and its score on B is
  reported: with B's own best threshold (how NAB scores a corpus) and with the threshold chosen on A (stricter).
  Direction B->A: the same with the halves swapped.
* A parameter is kept in the shipped defaults only if both directions choose it (or the halves disagree only
  between candidates whose scores on both halves are within noise; the report prints every candidate).

Scores are NAB's (nabscore.py, the independent scorer in ../shared/tools): 100 = perfect, 0 = no detection.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cityops.alerts.art import ArtDetector
from cityops.alerts.detector import KpiDetector
from cityops.alerts.nab import _epoch_s

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout

# The candidates: the ART channel's three free parameters (see src/cityops/alerts/art.py and KpiDetector).
# `art_learn_pts` sets the learning period and with it the downsampling step (learn_pts // 104 = 3, 4, 5, 7 points
# per sample; 750 is NAB's longest probation, as ARTime uses it); `art_range_margin` how far beyond the learning
# period's range the normalisation range starts; `art_threshold` the ART confidence that counts as a flag, which
# also places the ART channel's scores on the scale of the profile-led decisions.
LEARN_PTS = (312, 416, 520, 750)
MARGINS = (0.0, 0.25, 0.5)
ART_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
GRID: list[dict[str, Any]] = [
    {"art_learn_pts": lp, "art_range_margin": m, "art_threshold": t}
    for lp in LEARN_PTS for m in MARGINS for t in ART_THRESHOLDS
]


def load_nabscore(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("nabscore", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot load the NAB scorer from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split(files: list[Any]) -> tuple[list[Any], list[Any]]:
    """Half A and half B: within each category, files sorted by name go alternately to A and to B."""
    cats: dict[str, list[Any]] = {}
    for df in files:
        cats.setdefault(df.relpath.split("/")[0], []).append(df)
    a: list[Any] = []
    b: list[Any] = []
    for cat in sorted(cats):
        for k, df in enumerate(sorted(cats[cat], key=lambda d: d.relpath)):
            (a if k % 2 == 0 else b).append(df)
    return a, b


def run(files: list[Any], cfg: dict[str, Any]) -> tuple[dict[str, np.ndarray], float]:
    """Scores of a fresh KpiDetector(**cfg) per file (no look-ahead); and points/s of the detector alone."""
    out: dict[str, np.ndarray] = {}
    busy, n = 0.0, 0
    for df in files:
        secs = [_epoch_s(s) for s in df.times_str]
        upd = KpiDetector(**cfg).update
        t0 = time.perf_counter()
        sc = [upd(t, float(v))[0] for t, v in zip(secs, df.values)]
        busy += time.perf_counter() - t0
        n += df.n
        out[df.relpath] = np.asarray(sc)
    return out, n / busy if busy else float("inf")


class Composed:
    """The grid without running the whole detector per candidate (the same numbers, much faster).

    KpiDetector's output is, point by point, the profile-led decision where the profile leads (`decided_by ==
    "profile"`; the ART channel does not touch the seasonal and profile channels) and the ART channel's
    confidence mapped onto the common scale elsewhere. So the profile-led part is computed once, the ART
    channel once per (learn_pts, margin), and each threshold is a mapping. `check` compares the composition
    with the real detector for one candidate.
    """

    def __init__(self, files: list[Any]) -> None:
        self.files = files
        self.secs = {df.relpath: [_epoch_s(s) for s in df.times_str] for df in files}
        self.led: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.art: dict[tuple[int, float], dict[str, np.ndarray]] = {}
        for df in files:
            det = KpiDetector(channels=("seasonal", "profile"))
            sc, led = [], []
            for t, v in zip(self.secs[df.relpath], df.values):
                sc.append(det.update(t, float(v))[0])
                led.append(det.decided_by == "profile")
            self.led[df.relpath] = (np.asarray(sc), np.asarray(led))
        self.line = KpiDetector().threshold

    def scores(self, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
        key = (cfg["art_learn_pts"], cfg["art_range_margin"])
        if key not in self.art:
            self.art[key] = {}
            for df in self.files:
                a = ArtDetector(learn_pts=key[0], range_margin=key[1])
                self.art[key][df.relpath] = np.asarray(
                    [a.update(t, float(v)) for t, v in zip(self.secs[df.relpath], df.values)])
        fl, thr = cfg["art_threshold"], self.line
        out = {}
        for df in self.files:
            c = self.art[key][df.relpath]
            mapped = np.where(c < fl, c * thr / fl, thr + (c - fl) * (1.0 - thr) / (1.0 - fl))
            sc, led = self.led[df.relpath]
            out[df.relpath] = np.where(led, sc, mapped)
        return out

    def check(self, cfg: dict[str, Any]) -> float:
        """Largest difference between the composed and the real detector's scores for `cfg`."""
        real, _ = run(self.files, cfg)
        comp = self.scores(cfg)
        return max(float(np.abs(real[k] - comp[k]).max()) for k in real)


def evaluate(ns: Any, files: list[Any], scores: dict[str, np.ndarray], profiles: dict[str, Any],
             threshold: float | None = None) -> dict[str, Any]:
    return ns.evaluate(files, scores, profiles, fixed_threshold=threshold)


def fmt(cfg: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items()) or "(defaults)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab-dir", type=Path, default=SHARED / "data" / "nab")
    ap.add_argument("--nabscore", type=Path, default=SHARED / "tools" / "nabscore.py")
    ap.add_argument("--defaults-only", action="store_true", help="skip the parameter search")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()
    ns = load_nabscore(args.nabscore)
    files = ns.load_corpus(str(args.nab_dir))
    profiles = ns.load_profiles(str(args.nab_dir / "config" / "profiles.json"))
    half_a, half_b = split(files)
    print("half A:", ", ".join(df.relpath for df in half_a))
    print("half B:", ", ".join(df.relpath for df in half_b))
    report: dict[str, Any] = {"A": [df.relpath for df in half_a], "B": [df.relpath for df in half_b]}

    if not args.defaults_only:
        rows = []
        comp = Composed(files)
        print(f"composition check (largest score difference vs the real detector): {comp.check(GRID[0]):.2e}")
        for cfg in GRID:
            sc = comp.scores(cfg)
            ra, rb = evaluate(ns, half_a, sc, profiles), evaluate(ns, half_b, sc, profiles)
            rows.append((cfg, sc, ra, rb))
            print(f"  {fmt(cfg):65s} A {ra['standard']['score']:6.2f}   B {rb['standard']['score']:6.2f}", flush=True)
        report["grid"] = [{"cfg": c, "A": ra["standard"]["score"], "B": rb["standard"]["score"]} for c, _, ra, rb in rows]
        # Parameter by parameter: each value's mean score over the other parameters, per half. A value is kept
        # only where both halves agree it is (about) best; the argmax per half is fragile on a rough surface.
        print("mean standard score of each parameter value over the rest of the grid:")
        for key in GRID[0]:
            vals = sorted({c[key] for c, *_ in rows})
            cells = []
            for v in vals:
                sel = [(ra, rb) for c, _, ra, rb in rows if c[key] == v]
                ma = sum(ra["standard"]["score"] for ra, _ in sel) / len(sel)
                mb = sum(rb["standard"]["score"] for _, rb in sel) / len(sel)
                cells.append(f"{v}: A {ma:.1f} B {mb:.1f}")
            print(f"  {key:18s} " + "   ".join(cells))
        for tune, held, ti, hi in (("A", "B", 2, 3), ("B", "A", 3, 2)):
            best = max(rows, key=lambda r: r[ti]["standard"]["score"])
            cfg, sc = best[0], best[1]
            held_files = half_b if held == "B" else half_a
            own = best[hi]
            fixed = evaluate(ns, held_files, sc, profiles, threshold=best[ti]["standard"]["threshold"])
            print(f"tuned on {tune}: {fmt(cfg)}; {tune} {best[ti]['standard']['score']:.2f}; held-out {held}: "
                  + " ".join(f"{p} {r['score']:.2f}" for p, r in own.items())
                  + f"; at {tune}'s threshold: standard {fixed['standard']['score']:.2f}")
            report[f"tuned_on_{tune}"] = {"cfg": cfg, "tune_score": best[ti]["standard"]["score"],
                                          "held_out": {p: r["score"] for p, r in own.items()},
                                          "held_out_at_tuning_threshold": fixed["standard"]["score"]}

    sc, pps = run(files, {})
    print("shipped defaults (KpiDetector()):")
    for name, sub in (("all 25", files), ("half A", half_a), ("half B", half_b)):
        res = evaluate(ns, sub, sc, profiles)
        print(f"  {name:7s} " + "  ".join(f"{p} {r['score']:.2f}" for p, r in res.items())
              + f"  (standard threshold {res['standard']['threshold']:.3f})")
        report[f"defaults_{name.replace(' ', '_')}"] = {p: r["score"] for p, r in res.items()}
    print(f"  detector speed in this run: {pps:,.0f} points/s (machine-dependent; see bench_detector.py)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
