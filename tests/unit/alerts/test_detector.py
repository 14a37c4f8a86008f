"""Behavioural tests for SeasonalDetector and the NAB runner."""

from __future__ import annotations

import csv
import math
import pickle
import random
from pathlib import Path

import pytest

from cityops.alerts import nab
from cityops.alerts.detector import ProfileDetector, SeasonalDetector, detector_from_state

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



def test_nab_detect_cli_scores_a_rules_exact_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`nab-detect --rule X` runs X's sensitivity and detector arguments; bad arguments exit 2 naming them."""
    from cityops import cli

    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(5)
    with (data / "s.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["timestamp", "value"])
        for i in range(3 * DAY_PTS):
            ts = T0 + i * STEP
            wr.writerow([f"{__import__('datetime').datetime.utcfromtimestamp(ts):%Y-%m-%d %H:%M:%S}",
                         f"{20 + 10 * math.sin(2 * math.pi * i / DAY_PTS) + rng.gauss(0, 1):.3f}"])
    rules = tmp_path / "agents"
    rules.mkdir()
    (rules / "probe.yml").write_text(
        "agent: probe\nrules:\n  - alert: ProbeAnomaly\n    kind: kpi_anomaly\n"
        "    summary: probe {direction}\n"
        "    params: {measurement: m, field: f, sensitivity: 2.0, detector: {noise: poisson}}\n")
    (rules / "probe.md").write_text("# probe\n\n## ProbeAnomaly\n\nWhat it means.\n")

    def scores(*extra: str) -> list[str]:
        out = tmp_path / ("out" + "".join(extra).replace("/", "_").replace("{", "").replace("}", "")[:40])
        assert cli.main(["nab-detect", str(data), str(out), *extra]) == 0
        with (out / "s.csv").open() as fh:
            return [r.split(",")[1] for r in fh.read().splitlines()[1:]]

    plain = scores()
    by_rule = scores("--rule", "ProbeAnomaly", "--rules-dir", str(rules))
    # --rule scores the rule as it streams: the detector's own learning period, not the file's NAB probation.
    by_args = scores("--sensitivity", "2.0", "--learning-period", "detector", "--detector",
                     '{"noise": "poisson", "weekend": true, "utc_offset_s": 28800}')
    assert by_rule == by_args and by_rule != plain
    err = capsys.readouterr().err
    assert "rule ProbeAnomaly: sensitivity=2.0" in err and "'weekend': True" in err  # its calendar too
    assert cli.main(["nab-detect", str(data), str(tmp_path / "x"), "--detector", '{"no_such": 1}']) == 2
    assert "no_such" in capsys.readouterr().err
    assert cli.main(["nab-detect", str(data), str(tmp_path / "x"), "--rule", "Nope", "--rules-dir", str(rules)]) == 2

def test_new_record_beyond_seen_range_alerts_once_per_rest_period() -> None:
    """The range channel: a value 10% of the range beyond every value seen so far alerts even when
    the seasonal model finds it unremarkable (flat uniform noise), a second record soon after does
    not (rest period), one after the rest does, and inside the range it adds nothing."""
    rng = random.Random(7)
    pts = [(T0 + i * STEP, rng.uniform(0.0, 10.0)) for i in range(2000)]
    det, ref = SeasonalDetector(), SeasonalDetector(ext_frac=0.0)  # ext_frac=0: seasonal channels only
    for t, v in pts:
        inside = det.ext_lo <= v <= det.ext_hi
        assert det.update(t, v) == ref.update(t, v) or not inside
    lo, hi = det.ext_lo, det.ext_hi
    t = pts[-1][0]
    record = hi + 0.1 * (hi - lo)
    s, d, a = det.update(t + STEP, record)
    s_ref, _, a_ref = ref.update(t + STEP, record)
    assert a and d == "high" and s >= det.threshold
    assert not a_ref and s_ref < s
    assert det.score_one(t + 2 * STEP, record + 1.0)[0] < det.threshold  # resting
    for k in range(2, 2 + det.ext_rest_pts):
        v = rng.uniform(0.0, 10.0)
        assert det.update(t + k * STEP, v) == ref.update(t + k * STEP, v)
    t += (2 + det.ext_rest_pts) * STEP
    low = lo - 0.1 * (det.ext_hi - lo)
    s, d, a = det.update(t, low)
    assert a and d == "low" and s >= det.threshold
    assert not ref.update(t, low)[2]


def test_range_channel_state_round_trip() -> None:
    pts = daily(3 * DAY_PTS, seed=4)
    det = SeasonalDetector()
    feed(det, pts)
    clone = SeasonalDetector.from_state(pickle.loads(pickle.dumps(det.to_state())))
    assert (clone.ext_lo, clone.ext_hi, clone.ext_n) == (det.ext_lo, det.ext_hi, det.ext_n)
    t = pts[-1][0]
    tail = [(t + STEP, 200.0), (t + 2 * STEP, 50.0), (t + 3 * STEP, 300.0), (t + 4 * STEP, -100.0)]
    assert feed(det, tail) == feed(clone, tail)


# ------------------------------------------------------------------------------------ ProfileDetector
MIN = 60.0


def taps(day: int, minute: int) -> float:
    """Expected taps/min of a line open 06:00-23:00 (no windows at night), with a morning rush."""
    h = minute / 60
    return 0.0 if h < 6 or h >= 23 else 30.0 + 40.0 * math.exp(-((h - 8) ** 2) / 2)


def poisson(rng: random.Random, lam: float) -> int:
    # Knuth; small lambdas only
    k, p, lim = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= lim:
            return k
        k += 1


def count_day(rng: random.Random, day: int, rate=taps, factor=None) -> list[tuple[float, float]]:
    out = []
    for m in range(1440):
        lam = rate(day, m)
        if lam <= 0:
            continue  # closed: no events, so no window
        if factor is not None:
            lam *= factor(m)
        out.append((T0 + day * 86400 + m * MIN, float(poisson(rng, lam))))
    return out


def test_profile_learns_opening_step_from_one_day_and_ignores_gaps() -> None:
    rng = random.Random(1)
    det = ProfileDetector(noise="poisson")
    res = [det.update(t, v) for t, v in count_day(rng, 0)]
    assert not any(a for _, _, a in res)  # day 1: nothing is judged yet
    for day in (1, 2):
        res = [det.update(t, v) for t, v in count_day(rng, day)]
        assert not any(a for _, _, a in res), [r for r in res if r[2]][:3]


def test_profile_flags_count_collapse_within_two_windows_and_does_not_learn_it() -> None:
    rng = random.Random(2)
    det = ProfileDetector(noise="poisson")
    for day in (0, 1):
        for t, v in count_day(rng, day):
            det.update(t, v)
    start = 10 * 60  # 10:00 on day 3, 20 min at 20 %
    pts = count_day(rng, 2, factor=lambda m: 0.2 if start <= m < start + 20 else 1.0)
    before = det.to_state()["state"]["mean"]
    flagged = [(t, d) for t, (s, d, a) in zip((t for t, _ in pts), (det.update(t, v) for t, v in pts)) if a]
    first = flagged[0]
    assert first[1] == "low"
    t_start = T0 + 2 * 86400 + start * MIN
    assert t_start <= first[0] <= t_start + 2 * MIN
    assert all(t_start <= t < t_start + 20 * MIN for t, _ in flagged)
    # The collapse's bins were not pulled towards it (learning resumed after it, in the same bins).
    b = det._bin(t_start)[0]
    assert det.to_state()["state"]["mean"][b] == pytest.approx(before[b], rel=0.05)


def test_profile_sparse_counts_never_alert_low_and_single_outliers_need_persistence() -> None:
    rng = random.Random(3)
    det = ProfileDetector(noise="poisson", min_expected=5.0)
    lot = lambda day, m: 1.5  # a quiet parking lot: 0-5 cars a minute
    for day in range(3):
        res = [det.update(t, v) for t, v in count_day(rng, day, rate=lot)]
        assert not any(a for _, _, a in res)
    t = T0 + 3 * 86400 + 12 * 3600
    assert det.update(t, 0.0)[2] is False and det.update(t + MIN, 0.0)[2] is False  # expected 1.5 < min_expected
    gauss = ProfileDetector()
    for day in range(2):
        for m in range(1440):
            gauss.update(T0 + day * 86400 + m * MIN, 60.0 + rng.gauss(0, 2))
    t = T0 + 2 * 86400 + 3600
    s, d, a = gauss.update(t, 45.0)  # 5 scales (the 5 % floor, 3) low: a candidate, not yet an alert
    assert not a and s >= gauss.threshold and d == "low"
    assert gauss.update(t + MIN, 60.0)[2] is False  # back to normal: the run is broken
    assert gauss.update(t + 2 * MIN, 10.0)[2] is True  # a crash-sized drop alerts at once (strong)


def test_profile_unseen_time_of_day_is_not_judged() -> None:
    det = ProfileDetector(min_days=1.0)
    for m in range(600):
        det.update(T0 + m * MIN, 50.0 + (m % 3))
    assert det.score_one(T0 + 86400 + 20 * 3600, 1e6) == (0.0, "high")  # 20:00 never seen
    assert det.score_one(T0 + 86400 + 5 * 3600, 1e6)[0] > det.threshold   # 05:00 seen yesterday


def test_profile_state_round_trip_and_dispatch() -> None:
    rng = random.Random(4)
    det = ProfileDetector(noise="poisson")
    pts = count_day(rng, 0) + count_day(rng, 1, factor=lambda m: 0.2 if 600 <= m < 620 else 1.0)
    for t, v in pts[:1200]:
        det.update(t, v)
    clone = detector_from_state(pickle.loads(pickle.dumps(det.to_state())))
    assert isinstance(clone, ProfileDetector)
    assert [det.update(t, v) for t, v in pts[1200:]] == [clone.update(t, v) for t, v in pts[1200:]]
    assert isinstance(detector_from_state(SeasonalDetector().to_state()), SeasonalDetector)
    with pytest.raises(ValueError):
        ProfileDetector(noise="laplace")


def test_profile_persistent_shift_is_eventually_accepted() -> None:
    rng = random.Random(6)
    det = ProfileDetector()
    pts = [(T0 + m * MIN, 50.0 + rng.gauss(0, 1)) for m in range(4 * 1440)]
    for t, v in pts[:2 * 1440]:
        det.update(t, v)
    res = [det.update(t, v + 20.0) for t, v in pts[2 * 1440:]]
    assert res[1][2] and res[1][1] == "high"
    assert not any(a for _, _, a in res[-720:])


# ------------------------------------------------------------------------------------ KpiDetector
def test_kpi_detector_channels_run_the_channel_code_unchanged() -> None:
    """Channel subsets give exactly the channel classes' outputs; the default runs ART, seasonal and profile."""
    from cityops.alerts.art import ArtDetector
    from cityops.alerts.detector import KpiDetector

    rng = random.Random(11)
    pts = count_day(rng, 0) + count_day(rng, 1, factor=lambda m: 0.2 if 600 <= m < 620 else 1.0)
    assert KpiDetector().channels == ("art", "seasonal", "profile")
    # The ART channel alone: ArtDetector's confidences, mapped monotonically onto the common score scale
    # (art_threshold onto the flag line), flagged from art_threshold on.
    kr, ar = KpiDetector(channels=("art",), art_learn_pts=200), ArtDetector(learn_pts=200)
    walk, x = [], 50.0
    for i in range(3000):
        x += rng.gauss(0, 1) + (40.0 if i == 2000 else 0.0)
        walk.append((T0 + i * STEP, x))
    out_k = [kr.update(t, v) for t, v in walk]
    out_a = [ar.update(t, v) for t, v in walk]
    assert [s > 0 for s, _, _ in out_k] == [c > 0 for c in out_a] and any(c > 0 for c in out_a)
    assert [a for _, _, a in out_k] == [c >= kr.art_threshold for c in out_a]
    pairs = sorted((c, s) for c, (s, _, _) in zip(out_a, out_k) if c > 0)
    assert all(s1 <= s2 for (_, s1), (_, s2) in zip(pairs, pairs[1:]))  # monotone
    assert all((s >= kr.threshold) == (c >= kr.art_threshold) for c, s in pairs)
    kd, sd = KpiDetector(channels=("seasonal", "range")), SeasonalDetector()
    assert [kd.update(t, v) for t, v in pts] == [sd.update(t, v) for t, v in pts]
    kp, pd = KpiDetector(channels=["profile"], noise="poisson"), ProfileDetector(noise="poisson")
    res = [kp.update(t, v) for t, v in pts]
    assert res == [pd.update(t, v) for t, v in pts] and any(a for _, _, a in res)
    kz, pz = KpiDetector(channels=["profile"], profile_z_threshold=6.0), ProfileDetector(z_threshold=6.0)
    assert [kz.update(t, v) for t, v in pts] == [pz.update(t, v) for t, v in pts]
    # Counts: the seasonal channel judges them on the Anscombe scale.
    ka = KpiDetector(channels=("seasonal", "range"), noise="poisson")
    sa = SeasonalDetector()
    assert [ka.update(t, v) for t, v in pts] == [sa.update(t, 2.0 * math.sqrt(v + 0.375)) for t, v in pts]


def test_kpi_detector_all_channels_state_round_trips() -> None:
    from cityops.alerts.detector import KpiDetector

    rng = random.Random(12)
    pts = count_day(rng, 0) + count_day(rng, 1, factor=lambda m: 0.2 if 600 <= m < 620 else 1.0)
    det = KpiDetector(noise="poisson")
    for t, v in pts[:1200]:  # day 2 until 09:00
        det.update(t, v)
    clone = detector_from_state(pickle.loads(pickle.dumps(det.to_state())))
    assert isinstance(clone, KpiDetector) and clone.channels == det.channels
    assert (clone.err_s, clone.err_p, clone.err_n) == (det.err_s, det.err_p, det.err_n) and det.err_n > 0
    a, b = [det.update(t, v) for t, v in pts[1200:]], [clone.update(t, v) for t, v in pts[1200:]]
    assert a == b and any(x[2] for x in a)
    # Legacy states are adopted with the matching channels.
    assert KpiDetector.from_state(ProfileDetector().to_state()).channels == ("profile",)
    assert KpiDetector.from_state(SeasonalDetector().to_state()).channels == ("seasonal", "range")
    with pytest.raises(ValueError):
        KpiDetector(channels=["fourier"])
    with pytest.raises(TypeError):
        KpiDetector(no_such_knob=1)
    with pytest.raises(ValueError):
        KpiDetector(lead_skill=0)
    with pytest.raises(ValueError):
        KpiDetector(sensitivity=0)


# ------------------------------------------------------------- KpiDetector: which model decides
def _city_days(rng: random.Random, days: int, rate=taps) -> list[tuple[float, float]]:
    return [p for d in range(days) for p in count_day(rng, d, rate=rate)]


def test_profile_leads_on_a_daily_count_series_and_catches_a_collapse_without_learning_it() -> None:
    from cityops.alerts.detector import KpiDetector

    rng = random.Random(21)
    det = KpiDetector(noise="poisson", warmup_pts=1440)  # as the kpi_anomaly rules build it
    for t, v in _city_days(rng, 2):
        det.update(t, v)
    start = 10 * 60
    day = count_day(rng, 2, factor=lambda m: 0.2 if start <= m < start + 20 else 1.0)
    flags, leads = [], 0
    for t, v in day:
        s, d, a = det.update(t, v)
        leads += det._p.judged and det._p.calibrated and det.err_p <= det.err_s
        if a:
            flags.append((t, d))
    assert leads > 0.9 * len(day)  # the profile explains this series: it leads nearly everywhere
    t_start = T0 + 2 * 86400 + start * MIN
    assert flags and flags[0][1] == "low" and t_start <= flags[0][0] <= t_start + 2 * MIN
    assert all(t_start <= t < t_start + 20 * MIN for t, _ in flags)  # and nothing else all day
    # Neither model learned the collapse: the next day at 10:00 is normal, not "high".
    nxt = [det.update(t, v) for t, v in count_day(rng, 3)]
    assert not any(a for _, _, a in nxt)


def test_lead_single_window_blip_is_not_an_alert_but_a_lasting_one_is() -> None:
    """A one-minute spike on a 1-minute series is not confirmed; the same spike lasting 5 minutes is."""
    from cityops.alerts.detector import KpiDetector

    rng = random.Random(22)
    flat = lambda day, m: 0.0 if m < 360 or m >= 1380 else 20.0
    det = KpiDetector(noise="poisson", warmup_pts=1440)
    for t, v in _city_days(rng, 3, rate=flat):
        det.update(t, v)
    t = T0 + 3 * 86400 + 12 * 3600
    for k in range(30):
        det.update(t + k * MIN, 20.0)
    t += 30 * MIN
    s, d, a = det.update(t, 38.0)
    assert det._s.ep_last == t and d == "high"  # the seasonal channel flags it,
    assert det.lead_confirm_z <= det._p.last_z < det.lead_strong_z  # the profile sees it too,
    assert not a  # but one minute is not enough (lead_confirm_s = 150 s)
    # The same surprise in a series sampled every 5 minutes stands for 5 minutes: confirmed.
    det5 = KpiDetector(noise="poisson")
    for day in range(6):
        for m in range(0, 1440, 5):
            det5.update(T0 + day * 86400 + m * MIN, float(poisson(rng, 20.0)))
    t5 = T0 + 6 * 86400 + 12 * 3600
    s, d, a = det5.update(t5, 50.0)
    assert det5._s.ep_last == t5 and det5.lead_confirm_z <= det5._p.last_z < det5.lead_strong_z
    assert det5._p.judged and det5._p.calibrated and det5.err_p <= det5.err_s
    assert a and d == "high" and s >= det5.threshold


def _random_walk(seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    x, pts = 50.0, []
    for i in range(8 * DAY_PTS):
        x += rng.gauss(0, 0.5)
        pts.append((T0 + i * STEP, x))
    return pts


def test_seasonal_decides_where_the_time_of_day_explains_nothing_with_the_former_channels() -> None:
    """A random walk: the profile is not calibrated or loses on error; with the channels the detector had
    before the ART channel (seasonal, range, profile), the seasonal channels decide alone."""
    from cityops.alerts.detector import KpiDetector

    pts = _random_walk(23)
    kd, sd = KpiDetector(channels=("seasonal", "range", "profile")), SeasonalDetector()
    out_k = [kd.update(t, v) for t, v in pts]
    out_s = [sd.update(t, v) for t, v in pts]
    lead = not (kd._p.calibrated and kd.err_p <= kd.err_s)
    assert lead  # the profile does not lead at the end
    # Wherever it did not lead, the output is the seasonal detector's, point for point.
    same = sum(a == b for a, b in zip(out_k, out_s))
    assert same > 0.9 * len(pts)


def test_art_decides_where_the_time_of_day_explains_nothing() -> None:
    """The same random walk with the default channels: wherever the profile does not lead, the output is the
    ART channel's (ArtDetector's confidence, mapped), point for point, and that is nearly everywhere."""
    from cityops.alerts.art import ArtDetector
    from cityops.alerts.detector import KpiDetector

    pts = _random_walk(23)
    kd, ad = KpiDetector(), ArtDetector()
    by, agree = [], 0
    for t, v in pts:
        s, d, a = kd.update(t, v)
        c = ad.update(t, v)
        by.append(kd.decided_by)
        if kd.decided_by == "art":
            agree += (s > 0) == (c > 0) and a == (c >= kd.art_threshold) and (c <= 0 or kd._a.high == (d == "high"))
    assert by.count("art") > 0.9 * len(pts)
    assert agree == by.count("art")
    assert not (kd._p.calibrated and kd.err_p <= kd.err_s)  # the profile does not lead at the end


def test_profile_calibration_and_step_uncertainty() -> None:
    # A noise-free square wave: without step uncertainty its edges surprise the profile every day.
    def square(i: int) -> float:
        m = (i * 5) % 1440
        return 68.0 if 9 * 60 <= m < 18 * 60 else 20.0
    pts = [(T0 + i * STEP, square(i)) for i in range(6 * DAY_PTS)]
    with_unc, without = ProfileDetector(), ProfileDetector(step_unc=0.0)
    fa = sum(with_unc.update(t, v)[2] for t, v in pts)
    fb = sum(without.update(t, v)[2] for t, v in pts)
    assert fa == 0 and fb > 0
    assert with_unc.calibrated
    # Random spikes that flag each time: every flagged run counts once, and the profile is not calibrated.
    rng = random.Random(24)
    spiky = ProfileDetector()
    for i in range(6 * DAY_PTS):
        spiky.update(T0 + i * STEP, rng.choice([0.0] * 9 + [rng.uniform(1, 10)]))
    assert not spiky.calibrated and spiky.cal_rate > spiky.cal_max_rate


def test_profile_weekend_calendar() -> None:
    """With weekend profiles a quieter weekend is learned on Saturday and judged on Sunday; without, it alerts."""
    rng = random.Random(31)
    # 2023-11-13 was a Monday; weekend days carry 60 % of the weekday volume.
    monday = 1_699_833_600.0
    def day_pts(day: int) -> list[tuple[float, float]]:
        f = 0.6 if day % 7 in (5, 6) else 1.0
        return [(monday + day * 86400 + m * MIN, float(poisson(rng, f * taps(day, m))))
                for m in range(1440) if taps(day, m) > 0]
    pts = [p for d in range(14) for p in day_pts(d)]
    cal = ProfileDetector(noise="poisson", weekend=True)
    flat = ProfileDetector(noise="poisson")
    flags_cal = [t for t, v in pts if cal.update(t, v)[2]]
    flags_flat = [t for t, v in pts if flat.update(t, v)[2]]
    assert flags_cal == []
    sat = monday + 5 * 86400
    assert any(sat <= t < sat + 86400 for t in flags_flat)  # one profile for every day: Saturday "collapses"
    # Local time decides the day type: 8 h east of UTC, Saturday begins at Friday 16:00 UTC.
    east = ProfileDetector(weekend=True, utc_offset_s=8 * 3600)
    assert east._bin(sat - 8 * 3600)[0] >= east.bins > east._bin(sat - 8 * 3600 - 1)[0]
