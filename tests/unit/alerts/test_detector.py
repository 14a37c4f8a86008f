"""Behavioural tests for SeasonalDetector and the NAB runner."""

from __future__ import annotations

import csv
import math
import pickle
import random
from pathlib import Path

import pytest

from cityops.alerts import nab
from cityops.alerts.detector import SeasonalDetector

STEP = 300.0           # 5-minute samples
DAY_PTS = int(86400 / STEP)
T0 = 1_700_000_000.0 - 1_700_000_000.0 % 86400   # midnight UTC


def daily(n: int, seed: int = 1, noise: float = 1.0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * STEP
        out.append((ts, 50.0 + 20.0 * math.sin(2 * math.pi * i / DAY_PTS) + rng.gauss(0.0, noise)))
    return out


def feed(det: SeasonalDetector, pts: list[tuple[float, float]]) -> list[tuple[float, str, bool]]:
    return [det.update(t, v) for t, v in pts]


def test_clean_daily_sinusoid_has_no_anomaly_after_warmup() -> None:
    det = SeasonalDetector()
    res = feed(det, daily(14 * DAY_PTS))
    after = res[3 * DAY_PTS:]
    assert not any(a for _, _, a in after)
    assert max(s for s, _, _ in after) < det.threshold


def test_spike_is_flagged_high_and_drop_low() -> None:
    pts = daily(10 * DAY_PTS)
    det = SeasonalDetector()
    feed(det, pts[: 8 * DAY_PTS])
    t, v = pts[8 * DAY_PTS]
    s, d, a = det.update(t, v + 40.0)
    assert a and d == "high" and s >= det.threshold
    feed(det, pts[8 * DAY_PTS + 1: 9 * DAY_PTS])
    t, v = pts[9 * DAY_PTS]
    s, d, a = det.update(t, v - 40.0)
    assert a and d == "low" and s >= det.threshold


def test_score_one_does_not_learn() -> None:
    pts = daily(4 * DAY_PTS)
    det = SeasonalDetector()
    feed(det, pts)
    before = det.to_state()
    det.score_one(pts[-1][0] + STEP, 1e6)
    assert det.to_state() == before


def test_flagged_points_are_not_learned() -> None:
    """A 5-hour excursion (shorter than `relearn_s`) is flagged throughout and leaves the
    baseline untouched, while a copy that learns from every point moves its baseline to it."""
    pts = daily(9 * DAY_PTS)
    gated, learner = SeasonalDetector(), SeasonalDetector()
    feed(gated, pts[: 7 * DAY_PTS])
    feed(learner, pts[: 7 * DAY_PTS])
    start, hours = 7 * DAY_PTS, 5
    excursion = [(t, v + 30.0) for t, v in pts[start: start + hours * 12]]
    assert hours * 3600 < gated.relearn_s
    keys = ("level", "drift", "scale", "day", "wk")
    before = {k: gated.to_state()["state"][k] for k in keys}
    assert all(a for _, _, a in feed(gated, excursion))
    assert {k: gated.to_state()["state"][k] for k in keys} == before
    base_before = learner.level + learner.drift
    for t, v in excursion:
        learner.learn_one(t, v)
    assert learner.level + learner.drift - base_before > 10.0


def test_persistent_shift_is_eventually_accepted() -> None:
    pts = daily(10 * DAY_PTS)
    det = SeasonalDetector()
    feed(det, pts[: 7 * DAY_PTS])
    res = feed(det, [(t, v + 30.0) for t, v in pts[7 * DAY_PTS:]])
    assert res[0][2]
    assert not any(a for _, _, a in res[-DAY_PTS:])


def test_state_round_trip_gives_identical_scores() -> None:
    pts = daily(6 * DAY_PTS, seed=3)
    pts[5 * DAY_PTS + 10] = (pts[5 * DAY_PTS + 10][0], 200.0)
    det = SeasonalDetector()
    feed(det, pts[: 5 * DAY_PTS])
    clone = SeasonalDetector.from_state(pickle.loads(pickle.dumps(det.to_state())))
    assert feed(det, pts[5 * DAY_PTS:]) == feed(clone, pts[5 * DAY_PTS:])


@pytest.mark.parametrize("seed", [5, 6])
def test_higher_sensitivity_flags_at_least_as_much(seed: int) -> None:
    rng = random.Random(seed)
    pts = daily(8 * DAY_PTS, seed=seed, noise=2.0)
    for k in range(3 * DAY_PTS, len(pts), 97):
        t, v = pts[k]
        pts[k] = (t, v + rng.choice([-1, 1]) * rng.uniform(5.0, 25.0))
    counts = []
    for sens in (0.5, 1.0, 2.0):
        det = SeasonalDetector(sensitivity=sens)
        scores = [det.score_one(t, v)[0] >= det.threshold or det.learn_one(t, v) for t, v in pts]
        counts.append(sum(bool(s) for s in scores))
    assert counts[0] <= counts[1] <= counts[2]
    assert counts[2] > counts[0]
    thresholds = [SeasonalDetector(sensitivity=s).threshold for s in (0.5, 1.0, 2.0)]
    assert thresholds[0] > thresholds[1] > thresholds[2]


def test_nab_run_writes_same_rows(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "catA").mkdir(parents=True)
    rows = {}
    for name, n in (("catA/one.csv", 280), ("two.csv", 50)):
        path = data / name
        with path.open("w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["timestamp", "value"])
            rows[name] = [(f"2014-04-01 {i // 12:02d}:{(i % 12) * 5:02d}:00", str(i % 7)) for i in range(n)]
            wr.writerows(rows[name])
    stats = nab.run(data, out)
    assert stats["files"] == 2 and stats["points"] == 330 and stats["points_per_s"] > 0
    for name, src in rows.items():
        with (out / name).open(newline="") as fh:
            got = list(csv.reader(fh))
        assert got[0] == ["timestamp", "anomaly_score"]
        assert [r[0] for r in got[1:]] == [r[0] for r in src]
        assert all(0.0 <= float(r[1]) <= 1.0 for r in got[1:])
