"""`cityops nab-detect`: the ART channel learns for each file's NAB probationary period; values never looked ahead."""

from __future__ import annotations

import csv
import math
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cityops.alerts import nab
from cityops.alerts.art import MIN_LEARN_PTS
from cityops.alerts.detector import KpiDetector

STEP = 300.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % 86400


def _series(n: int, seed: int, spike_at: int | None = None) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        v = 50.0 + 20.0 * math.sin(2 * math.pi * i / 288) + rng.gauss(0.0, 1.0)
        if spike_at is not None and i >= spike_at:
            v += 80.0 if i % 17 else -60.0  # a new regime from `spike_at` on
        stamp = datetime.fromtimestamp(T0 + i * STEP, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((stamp, round(v, 3)))
    return rows


def _write(path: Path, rows: list[tuple[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["timestamp", "value"])
        wr.writerows(rows)


def _scores(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return [r[1] for r in list(csv.reader(fh))[1:]]


@pytest.mark.parametrize("n,expected", [(500, 75), (1127, 169), (2500, 375), (4032, 604), (5000, 750),
                                        (22695, 750)])
def test_probation_is_nabs_rule(n: int, expected: int) -> None:
    """min(floor(0.15 n), 750): the rows NAB's scorer ignores (values from NAB's own files of those lengths)."""
    assert nab.probation_pts(n) == expected


def test_each_file_learns_for_its_probation_and_scores_match_a_detector_fed_point_by_point(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    files = {"a/short.csv": _series(500, 1, spike_at=420), "b/long.csv": _series(3000, 2, spike_at=2600)}
    for name, rows in files.items():
        _write(data / name, rows)
    stats = nab.run(data, out)
    assert stats["learning_period"] == "probation" and stats["files"] == 2
    for name, rows in files.items():
        learn = nab.art_learning_pts(len(rows))
        assert learn == {"a/short.csv": MIN_LEARN_PTS, "b/long.csv": 450}[name]  # 75 < 104; 0.15 x 3000
        det = KpiDetector(art_learn_pts=learn)
        secs = [nab._epoch_s(s) for s, _ in rows]
        want = [f"{det.update(t, v)[0]:.6f}" for t, (_, v) in zip(secs, rows)]
        got = _scores(out / name)
        assert got == want
        # The learning period matters: the detector's fixed default gives other scores on the long file.
        if name == "b/long.csv":
            fixed = KpiDetector()
            assert [f"{fixed.update(t, v)[0]:.6f}" for t, (_, v) in zip(secs, rows)] != got
        # The new regime is reported (after the learning period), so the comparison above is not of zeros.
        assert max(float(s) for s in got[learn:]) >= KpiDetector().threshold


def test_no_value_is_looked_ahead(tmp_path: Path) -> None:
    """Two files of one length that agree up to row k get the same scores up to row k, whatever follows."""
    k = 2000
    base = _series(3000, 3)
    other = base[:k] + [(s, v + 500.0) for s, v in base[k:]]  # the file's range, mean and tail all differ
    _write(tmp_path / "d1" / "x.csv", base)
    _write(tmp_path / "d2" / "x.csv", other)
    nab.run(tmp_path / "d1", tmp_path / "o1")
    nab.run(tmp_path / "d2", tmp_path / "o2")
    s1, s2 = _scores(tmp_path / "o1" / "x.csv"), _scores(tmp_path / "o2" / "x.csv")
    assert s1[:k] == s2[:k]
    assert s1[k:] != s2[k:]


def test_learning_period_detector_runs_the_detectors_own(tmp_path: Path) -> None:
    rows = _series(3000, 4, spike_at=2500)
    _write(tmp_path / "d" / "x.csv", rows)
    assert nab.run(tmp_path / "d", tmp_path / "o", learning_period="detector")["learning_period"] == "detector"
    det = KpiDetector()
    want = [f"{det.update(nab._epoch_s(s), v)[0]:.6f}" for s, v in rows]
    assert _scores(tmp_path / "o" / "x.csv") == want
    with pytest.raises(ValueError, match="learning_period must be one of probation, detector"):
        nab.run(tmp_path / "d", tmp_path / "o", learning_period="file")
    with pytest.raises(ValueError, match="art_learn_pts is given"):
        nab.run(tmp_path / "d", tmp_path / "o", detector={"art_learn_pts": 416})


def test_cli_learning_period_defaults_and_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cityops import cli

    rows = _series(3000, 2, spike_at=2600)  # (a file where the learning period changes scores)
    _write(tmp_path / "d" / "x.csv", rows)

    def run(*extra: str) -> list[str]:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert cli.main(["nab-detect", str(tmp_path / "d"), str(out), *extra]) == 0
        return _scores(out / "x.csv")

    default = run()
    assert default == run("--learning-period", "probation")
    assert "'learning_period': 'probation'" in capsys.readouterr().out
    fixed = run("--learning-period", "detector")
    assert fixed != default
    # An explicit art_learn_pts is the detector's own learning period: it is kept, not overridden per file.
    assert run("--detector", '{"art_learn_pts": 312}') == fixed
    capsys.readouterr()
    assert cli.main(["nab-detect", str(tmp_path / "d"), str(tmp_path / "bad"), "--learning-period", "probation",
                     "--detector", '{"art_learn_pts": 312}']) == 2
    err = capsys.readouterr().err
    assert "--learning-period probation" in err and "art_learn_pts is given (=312" in err
