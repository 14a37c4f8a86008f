"""Held-out validation of the KPI detector on the NAB subset: choose parameters on one half of the files, score the other.

    python benchmarks/nab_holdout.py                 # the protocol below, then the shipped defaults on all files
    python benchmarks/nab_holdout.py --defaults-only # only the shipped defaults (all files, halves A and B)
    python benchmarks/nab_holdout.py --cad           # also CAD OSE, alone and combined with the detector (slow)
    python benchmarks/nab_holdout.py --splits 50     # the protocol on 50 random splits as well (default 20)

The 25 NAB series in ../shared/data/nab are a sample of the 58-series benchmark; a detector tuned on them can
score far lower on the rest. So every parameter is chosen on a tuning half and judged on the other:

* Split by file, within each data category (files sorted by name, alternately to half A and half B), so both
  halves hold every kind of series. The rule is fixed in advance and looks at no score.
* Direction A->B: every candidate in the grid runs over the files (one fresh detector per file, no look-ahead, as
  `cityops nab-detect`), the candidate with the best standard score on A is chosen, and its score on B is
  reported: with B's own best threshold (how NAB scores a corpus) and with the threshold chosen on A (stricter).
  Direction B->A: the same with the halves swapped.
* A parameter is kept in the shipped defaults only if both directions choose it (or the halves disagree only
  between candidates whose scores on both halves are within noise; the report prints every candidate).

Then, to see how much one split's numbers depend on which files fell where, the same choice and held-out score on
`--splits` random splits (within each category, files shuffled, then alternately to the halves).

Two grids, one per way of setting the ART channel's learning period:

* `GRID` (what `cityops nab-detect` runs): the learning period is each file's NAB probationary period
  (min(floor(0.15 n), 750) rows, at least 104: what NAB hands every detector, as ARTime uses it; not a parameter
  chosen here), the candidates are the range margin x the ART threshold. Also reported, not chosen: the same with
  10 % and 20 % of the file instead of NAB's 15 % (how much the result leans on that rule).
* `FIXED_GRID` (a stream of unknown length, as the KPI rules run): a fixed learning period in points is a third
  parameter.

With `--cad`, the same protocol for CAD OSE (src/cityops/alerts/cad.py, published parameters kept): its published
NAB setup for reference (each file's minimum and maximum and length handed over: look-ahead, not streamable); the
streaming candidates in `CAD_GRID` (the range rule: the range seen so far, or the first `range_pts` points' range
widened by `range_margin`), one chosen on the tuning half, scored on the held-out half; and the combination
max(detector score, w * CAD score) with the detector's ART parameters chosen on the tuning half of the fixed grid
and the CAD candidate and w chosen on the tuning half too. Every direction reports the held-out half's three
profiles.

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

from cityops.alerts.art import MIN_LEARN_PTS, ArtDetector
from cityops.alerts.cad import CadDetector
from cityops.alerts.detector import KpiDetector
from cityops.alerts.nab import PROBATION_FRACTION, _epoch_s, art_learning_pts

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout

# The candidates: the ART channel's free parameters (see src/cityops/alerts/art.py and KpiDetector).
# `art_learn_pts` sets the learning period and with it the downsampling step (learn_pts // 104 points per sample):
# "probation" = each file's NAB probationary period (nab-detect's default), or a fixed number of points (312, 416,
# 520: 3, 4, 5 points per sample; 750 is NAB's longest probation); `art_range_margin` how far beyond the learning
# period's range the normalisation range starts; `art_threshold` the ART confidence that counts as a flag, which
# also places the ART channel's scores on the scale of the profile-led decisions.
MARGINS = (0.0, 0.25, 0.5, 0.75, 1.0)
ART_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
GRID: list[dict[str, Any]] = [
    {"art_learn_pts": "probation", "art_range_margin": m, "art_threshold": t} for m in MARGINS for t in ART_THRESHOLDS
]
LEARN_PTS = (312, 416, 520, 750)
FIXED_GRID: list[dict[str, Any]] = [
    {"art_learn_pts": lp, "art_range_margin": m, "art_threshold": t}
    for lp in LEARN_PTS for m in (0.0, 0.25, 0.5) for t in ART_THRESHOLDS
]
# Reported only: the learning period as another share of the file than NAB's 15 % (still capped at 750 rows).
PROBATION_SHARES = (0.10, 0.20)


def learn_pts(cfg_value: Any, n: int, share: float = PROBATION_FRACTION) -> int:
    """The ART learning period of a file of `n` rows for a grid value: a number, or "probation" (nab-detect's)."""
    return art_learning_pts(n, share) if cfg_value == "probation" else int(cfg_value)


def detector_kwargs(cfg: dict[str, Any], n: int) -> dict[str, Any]:
    """KpiDetector arguments of a grid candidate for a file of `n` rows."""
    kw = dict(cfg)
    if "art_learn_pts" in kw:
        kw["art_learn_pts"] = learn_pts(kw["art_learn_pts"], n)
    return kw


# CAD OSE's streaming candidates: how its value range is known without look-ahead (see CadDetector). The published
# detector's other parameters are kept; its rest (NAB probation / 5) is 150 points, the value for any file of 5,000
# points or more.
CAD_GRID: list[dict[str, Any]] = [{}] + [
    {"range_pts": lp, "range_margin": m} for lp in (312, 750) for m in (0.0, 1.0, 2.0)
]
CAD_WEIGHTS = (0.5, 0.75, 1.0)  # w in the combination max(detector score, w * CAD score)


def cad_scores(files: list[Any], cfg: dict[str, Any] | None, probation: Any = None) -> dict[str, np.ndarray]:
    """CAD OSE's scores per file: streaming with `cfg`, or (cfg None) the published NAB setup (look-ahead)."""
    out = {}
    for df in files:
        vals = [float(v) for v in df.values]
        if cfg is None:
            det = CadDetector(min_value=min(vals), max_value=max(vals), rest_pts=int(probation(df.n) / 5.0))
        else:
            det = CadDetector(**cfg)
        upd = det.update
        out[df.relpath] = np.asarray([upd(0.0, v) for v in vals])
    return out


def load_nabscore(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("nabscore", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot load the NAB scorer from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split(files: list[Any], rng: np.random.Generator | None = None) -> tuple[list[Any], list[Any]]:
    """Half A and half B: within each category, files sorted by name (or shuffled by `rng`) go alternately to A and
    to B (a category's odd file goes to A, or with `rng` to a random half)."""
    cats: dict[str, list[Any]] = {}
    for df in files:
        cats.setdefault(df.relpath.split("/")[0], []).append(df)
    a: list[Any] = []
    b: list[Any] = []
    for cat in sorted(cats):
        members = sorted(cats[cat], key=lambda d: d.relpath)
        first = 0
        if rng is not None:
            members = [members[i] for i in rng.permutation(len(members))]
            first = int(rng.integers(2))
        for k, df in enumerate(members):
            (a if k % 2 == first else b).append(df)
    return a, b


def resplit(ns: Any, comp: Composed, grid: list[dict[str, Any]], files: list[Any], profiles: dict[str, Any],
            n: int, seed: int) -> dict[str, Any]:
    """The protocol on `n` random splits (by file, within each category): the held-out standard score of the
    candidate chosen on the other half, both directions of every split, as (min, median, max) and all values."""
    weights = {"standard": profiles["standard"]}
    cands = [comp.scores(cfg) for cfg in grid]
    rng = np.random.default_rng(seed)
    held: list[float] = []
    for _ in range(n):
        halves = split(files, rng)
        score = [[ns.evaluate(h, sc, weights)["standard"]["score"] for h in halves] for sc in cands]
        for t in (0, 1):
            best = max(range(len(cands)), key=lambda i: score[i][t])
            held.append(score[best][1 - t])
    return {"min": min(held), "median": float(np.median(held)), "max": max(held), "held_out": held}


def run(files: list[Any], cfg: dict[str, Any]) -> tuple[dict[str, np.ndarray], float]:
    """Scores of a fresh KpiDetector(**cfg) per file (no look-ahead); and points/s of the detector alone."""
    out: dict[str, np.ndarray] = {}
    busy, n = 0.0, 0
    for df in files:
        secs = [_epoch_s(s) for s in df.times_str]
        upd = KpiDetector(**detector_kwargs(cfg, df.n)).update
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
        self.art: dict[tuple[Any, float, float], dict[str, np.ndarray]] = {}
        for df in files:
            det = KpiDetector(channels=("seasonal", "profile"))
            sc, led = [], []
            for t, v in zip(self.secs[df.relpath], df.values):
                sc.append(det.update(t, float(v))[0])
                led.append(det.decided_by == "profile")
            self.led[df.relpath] = (np.asarray(sc), np.asarray(led))
        self.line = KpiDetector().threshold

    def scores(self, cfg: dict[str, Any], share: float = PROBATION_FRACTION) -> dict[str, np.ndarray]:
        key = (cfg["art_learn_pts"], cfg["art_range_margin"], share)
        if key not in self.art:
            self.art[key] = {}
            for df in self.files:
                a = ArtDetector(learn_pts=learn_pts(key[0], df.n, share), range_margin=key[1])
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
    ap.add_argument("--cad", action="store_true", help="also CAD OSE, alone and combined (slow: pure Python)")
    ap.add_argument("--splits", type=int, default=20, metavar="N",
                    help="also the protocol on N random category-stratified splits, both grids (default 20; 0: none)")
    ap.add_argument("--seed", type=int, default=12, help="seed of the random splits")
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()
    ns = load_nabscore(args.nabscore)
    files = ns.load_corpus(str(args.nab_dir))
    profiles = ns.load_profiles(str(args.nab_dir / "config" / "profiles.json"))
    half_a, half_b = split(files)
    print("half A:", ", ".join(df.relpath for df in half_a))
    print("half B:", ", ".join(df.relpath for df in half_b))
    report: dict[str, Any] = {"A": [df.relpath for df in half_a], "B": [df.relpath for df in half_b]}

    chosen: dict[str, dict[str, np.ndarray]] = {}  # fixed grid: the detector's scores chosen on each half
    if not args.defaults_only:
        comp = Composed(files)
        print(f"composition check (largest score difference vs the real detector): {comp.check(GRID[0]):.2e}, "
              f"{comp.check(FIXED_GRID[0]):.2e}")
        print("== learning period = each file's NAB probationary period (as cityops nab-detect runs) ==")
        report["probation"] = protocol(ns, comp, GRID, half_a, half_b, profiles, {})
        for share in PROBATION_SHARES:
            cfg = {"art_learn_pts": "probation", "art_range_margin": ArtDetector(learn_pts=MIN_LEARN_PTS).range_margin,
                   "art_threshold": KpiDetector.ART_THRESHOLD}
            sc = comp.scores(cfg, share)
            res = {h: evaluate(ns, f, sc, profiles) for h, f in (("all", files), ("A", half_a), ("B", half_b))}
            print(f"  not chosen, for the record: learning period {share:.0%} of the file (at most 750), shipped "
                  f"margin and threshold: " + "   ".join(f"{h} {_line(r)}" for h, r in res.items()))
            report[f"probation_share_{share}"] = {h: {p: x["score"] for p, x in r.items()} for h, r in res.items()}
        print("== fixed learning period (a stream of unknown length, as the KPI rules run) ==")
        report["fixed"] = protocol(ns, comp, FIXED_GRID, half_a, half_b, profiles, chosen)
        if args.splits:
            print(f"== the protocol on {args.splits} random splits (seed {args.seed}), held-out standard score of "
                  "both directions: min / median / max ==")
            for name, grid in (("probation", GRID), ("fixed", FIXED_GRID)):
                r = resplit(ns, comp, grid, files, profiles, args.splits, args.seed)
                report[f"{name}_splits"] = r
                print(f"  learning period {name:9s} {r['min']:6.2f} / {r['median']:6.2f} / {r['max']:6.2f}   "
                      f"({sum(v >= 65 for v in r['held_out'])} of {len(r['held_out'])} held-out halves >= 65)")

    if args.cad:
        report["cad"] = cad_study(ns, files, half_a, half_b, profiles, chosen)

    for label, key, cfg in (("as cityops nab-detect runs them (learning period: NAB probation)", "defaults",
                             {"art_learn_pts": "probation"}),
                            ("with the fixed learning period (KpiDetector(), as a KPI rule streams)", "defaults_fixed",
                             {})):
        sc, pps = run(files, cfg)
        print(f"shipped defaults {label}:")
        for name, sub in (("all 25", files), ("half A", half_a), ("half B", half_b)):
            res = evaluate(ns, sub, sc, profiles)
            print(f"  {name:7s} " + "  ".join(f"{p} {r['score']:.2f}" for p, r in res.items())
                  + f"  (standard threshold {res['standard']['threshold']:.3f})")
            report[f"{key}_{name.replace(' ', '_')}"] = {p: r["score"] for p, r in res.items()}
        print(f"  detector speed in this run: {pps:,.0f} points/s (machine-dependent; see bench_detector.py)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def protocol(ns: Any, comp: Composed, grid: list[dict[str, Any]], half_a: list[Any], half_b: list[Any],
             profiles: dict[str, Any], chosen: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every candidate on both halves; each parameter value's mean; the choice on each half and its held-out score.

    Fills `chosen[tune half]` with the chosen candidate's scores (for the CAD combination)."""
    rep: dict[str, Any] = {}
    rows = []
    for cfg in grid:
        sc = comp.scores(cfg)
        ra, rb = evaluate(ns, half_a, sc, profiles), evaluate(ns, half_b, sc, profiles)
        rows.append((cfg, sc, ra, rb))
        print(f"  {fmt(cfg):65s} A {ra['standard']['score']:6.2f}   B {rb['standard']['score']:6.2f}", flush=True)
    rep["grid"] = [{"cfg": c, "A": ra["standard"]["score"], "B": rb["standard"]["score"]} for c, _, ra, rb in rows]
    # Parameter by parameter: each value's mean score over the other parameters, per half. A value is kept
    # only where both halves agree it is (about) best; the argmax per half is fragile on a rough surface.
    print("mean standard score of each parameter value over the rest of the grid:")
    for key in grid[0]:
        vals = sorted({c[key] for c, *_ in rows}, key=str)
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
        chosen[tune] = sc
        rep[f"tuned_on_{tune}"] = {"cfg": cfg, "tune_score": best[ti]["standard"]["score"],
                                   "held_out": {p: r["score"] for p, r in own.items()},
                                   "held_out_at_tuning_threshold": fixed["standard"]["score"]}
    return rep


def _line(res: dict[str, Any]) -> str:
    return " / ".join(f"{r['score']:.2f}" for r in res.values())


def cad_study(ns: Any, files: list[Any], half_a: list[Any], half_b: list[Any], profiles: dict[str, Any],
              chosen: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """CAD OSE alone (published setup; streaming candidates chosen per half) and combined with the detector."""
    rep: dict[str, Any] = {}
    halves = {"A": half_a, "B": half_b}
    print("CAD OSE (profiles standard / reward_low_FP / reward_low_FN):")
    t0 = time.perf_counter()
    ref = cad_scores(files, None, ns.probation_rows)
    rep["published_setup"] = {h: {p: r["score"] for p, r in ns.evaluate(f, ref, profiles).items()}
                              for h, f in (("all", files), ("A", half_a), ("B", half_b))}
    print("  published NAB setup (file range and length handed over: look-ahead): "
          + "  ".join(f"{h} {_line(ns.evaluate(f, ref, profiles))}" for h, f in (("all 25", files), ("A", half_a),
                                                                             ("B", half_b))))
    cands = []
    for cfg in CAD_GRID:
        sc = cad_scores(files, cfg)
        ra, rb = ns.evaluate(half_a, sc, profiles), ns.evaluate(half_b, sc, profiles)
        cands.append((cfg, sc, {"A": ra, "B": rb}))
        print(f"  streaming {fmt(cfg) if cfg else 'range seen so far':40s} A {_line(ra)}   B {_line(rb)}", flush=True)
    pts = sum(df.n for df in files) * (len(CAD_GRID) + 1)
    print(f"  ({pts / (time.perf_counter() - t0):,.0f} points/s over these runs)")
    rep["streaming"] = [{"cfg": c, "A": r["A"]["standard"]["score"], "B": r["B"]["standard"]["score"]}
                        for c, _, r in cands]
    for tune, held in (("A", "B"), ("B", "A")):
        cfg, _, r = max(cands, key=lambda c: c[2][tune]["standard"]["score"])
        print(f"  alone, chosen on {tune}: {fmt(cfg) if cfg else 'range seen so far'}; {tune} "
              f"{r[tune]['standard']['score']:.2f}; held-out {held}: {_line(r[held])}")
        rep[f"alone_tuned_on_{tune}"] = {"cfg": cfg, "held_out": {p: x["score"] for p, x in r[held].items()}}
    for tune, held in (("A", "B"), ("B", "A")):
        if tune not in chosen:
            continue
        kpi = chosen[tune]
        best = None
        for cfg, sc, _ in cands:
            for w in CAD_WEIGHTS:
                comb = {k: np.maximum(kpi[k], w * sc[k]) for k in kpi}
                st = ns.evaluate(halves[tune], comb, profiles)["standard"]["score"]
                if best is None or st > best[0]:
                    best = (st, cfg, w, comb)
        assert best is not None
        st, cfg, w, comb = best
        res = ns.evaluate(halves[held], comb, profiles)
        alone = ns.evaluate(halves[held], kpi, profiles)
        print(f"  detector + CAD channel (max(detector, w*CAD)), chosen on {tune}: {fmt(cfg) if cfg else 'range seen so far'} w={w}; {tune} "
              f"{st:.2f}; held-out {held}: {_line(res)} (the detector alone: {_line(alone)})")
        rep[f"combined_tuned_on_{tune}"] = {"cfg": cfg, "w": w, "tune_score": st,
                                            "held_out": {p: x["score"] for p, x in res.items()},
                                            "detector_alone_held_out": {p: x["score"] for p, x in alone.items()}}
    # The composition is what KpiDetector's "cad" channel computes: check it on the shipped ART parameters.
    cfg = {"cad_range_pts": 312, "cad_range_margin": 1.0, "cad_weight": 0.5}
    sc = next(c[1] for c in cands if c[0] == {"range_pts": 312, "range_margin": 1.0})
    real, pps = run(files, {"channels": KpiDetector.DEFAULT_CHANNELS + ("cad",), **cfg})
    base, _ = run(files, {})
    comp = {k: np.maximum(base[k], 0.5 * sc[k]) for k in base}
    print(f"  KpiDetector(channels=art, seasonal, profile, cad), shipped ART parameters, {fmt(cfg)}: "
          + "  ".join(f"{h} {_line(ns.evaluate(f, real, profiles))}" for h, f in (("all 25", files), ("A", half_a),
                                                                              ("B", half_b)))
          + f"; {pps:,.0f} points/s; composition check {max(float(np.abs(real[k] - comp[k]).max()) for k in real):.1e}")
    rep["kpi_with_cad_channel"] = {h: {p: r["score"] for p, r in ns.evaluate(f, real, profiles).items()}
                                   for h, f in (("all", files), ("A", half_a), ("B", half_b))}
    return rep


if __name__ == "__main__":
    sys.exit(main())
