"""Behavioural tests for CAD OSE (CadDetector): hand-checked outputs, no look-ahead, determinism, the rest period."""

from __future__ import annotations

import json
import math
import random

import msgspec
import pytest

from cityops.alerts.cad import CadDetector
from cityops.alerts.detector import KpiDetector


def test_constant_series_hand_checked() -> None:
    # Point 1: nothing predicted, no context selected, no context possible: (1 - 0 + 0) / 2 = 0.5.
    # Point 2: nothing predicted; its one potential context (point 1 -> point 2) is new: (1 - 0 + 1) / 2 = 1.0.
    # Point 3 on: that context predicts the point: 0.
    det = CadDetector(min_value=0.0, max_value=7.0, rest_pts=0)
    assert [det.update(float(i), 3.0) for i in range(6)] == [0.5, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert det.n_contexts == 1


def test_alternating_series_hand_checked() -> None:
    # Levels 0 and 7 share no fact (bits 000 and 111). Point 3: the context 0->7 exists but 7->0 is new and
    # nothing predicted 0: 1.0. Point 4 on: 0->7 and 7->0 predict every point: 0.
    det = CadDetector(min_value=0.0, max_value=7.0, rest_pts=0)
    out = [det.update(float(i), 0.0 if i % 2 == 0 else 7.0) for i in range(12)]
    assert out[:4] == [0.5, 1.0, 1.0, 0.0]
    assert out[4:] == [0.0] * 8


def test_rest_period_reports_nothing_after_a_high_score() -> None:
    # The same series with a rest of 1 point: point 2 (1.0 >= base_threshold 0.75) makes point 3 report 0;
    # the first point rests too (the detector starts resting).
    det = CadDetector(min_value=0.0, max_value=7.0, rest_pts=1)
    out = [det.update(float(i), 0.0 if i % 2 == 0 else 7.0) for i in range(6)]
    assert out == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_novel_value_after_learning_scores_and_is_one_episode() -> None:
    det = CadDetector(min_value=0.0, max_value=7.0, rest_pts=5)
    pattern = [0.0, 2.0, 4.0, 6.0]
    out = [det.update(float(i), pattern[i % 4]) for i in range(400)]
    assert all(s == 0.0 for s in out[200:])  # a learned cycle is fully predicted
    s = det.update(400.0, 7.0)  # a level never seen after 6 (or ever)
    assert s >= 0.5
    after = [det.update(401.0 + i, pattern[(i + 1) % 4]) for i in range(5)]
    assert after == [0.0] * 5  # resting (and the cycle resumes)


def test_no_look_ahead_and_determinism() -> None:
    rng = random.Random(5)
    xs = [math.sin(i / 9.0) * 10 + rng.gauss(0, 1) for i in range(600)]
    ys = xs[:300] + [v * 3 + 50 for v in xs[300:]]  # a different future after point 300

    def run(series: list[float]) -> list[float]:
        det = CadDetector(rest_pts=30)  # the range seen so far
        return [det.update(float(i), v) for i, v in enumerate(series)]

    a, b = run(xs), run(ys)
    assert a[:300] == b[:300]  # a score depends on the past only
    assert run(xs) == a  # same input, same scores (ties broken by the facts, not by memory addresses)
    assert all(0.0 <= s <= 1.0 for s in a + b)
    assert a[300:] != b[300:]


def test_learning_period_range_clips_later_values() -> None:
    det = CadDetector(rest_pts=0, range_pts=4, range_margin=0.5)
    for i, v in enumerate([0.0, 4.0, 2.0, 1.0]):
        det.update(float(i), v)
    assert (det.lo, det.hi) == (-2.0, 6.0)  # the first 4 points' range, widened by half of it on each side
    det.update(4.0, 100.0)
    assert (det.lo, det.hi) == (-2.0, 6.0)  # frozen: a later value is clipped to the top level


@pytest.mark.parametrize("kw", [{"base_threshold": 0.0}, {"rest_pts": -1}, {"value_bits": 0},
                                {"min_value": 1.0}, {"min_value": 2.0, "max_value": 1.0}])
def test_bad_parameters_fail(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CadDetector(**kw)  # type: ignore[arg-type]


def test_state_round_trip_through_json_continues_exactly() -> None:
    rng = random.Random(11)
    xs = [5 * math.sin(i / 7.0) + rng.gauss(0, 0.7) + (9.0 if i == 700 else 0.0) for i in range(900)]
    live = CadDetector(rest_pts=20, range_pts=100, range_margin=1.0)
    for i, v in enumerate(xs[:400]):
        live.update(float(i), v)
    restored = CadDetector.from_state(json.loads(json.dumps(live.to_state())))
    assert restored.n_contexts == live.n_contexts > 0
    a = [live.update(float(i), v) for i, v in enumerate(xs[400:], 400)]
    b = [restored.update(float(i), v) for i, v in enumerate(xs[400:], 400)]
    assert a == b and max(a) > 0.0
    with pytest.raises(ValueError):
        CadDetector.from_state({**live.to_state(), "version": "cad-0"})


def test_kpi_detector_cad_channel_is_the_weighted_cad_score() -> None:
    rng = random.Random(3)
    xs = [3 * math.sin(i / 5.0) + rng.gauss(0, 0.5) + (12.0 if i == 500 else 0.0) for i in range(700)]
    cad = CadDetector(range_pts=312, range_margin=1.0)
    det = KpiDetector(channels=("cad",), warmup_pts=30)
    scores = []
    for i, v in enumerate(xs):
        c = cad.update(60.0 * i, v)
        sc, _, flag = det.update(60.0 * i, v)
        assert sc == 0.5 * c  # cad_weight 0.5 on the common scale
        assert flag == (sc >= det.threshold and i + 1 > 30)
        scores.append(sc)
    assert max(range(320, 700), key=scores.__getitem__) == 500  # the spike scores highest after the range is set


def test_kpi_detector_with_cad_keeps_the_other_channels_decisions_where_cad_is_lower() -> None:
    rng = random.Random(4)
    xs = [10 + 4 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 0.3) for i in range(1500)]
    plain = KpiDetector()
    both = KpiDetector(channels=KpiDetector.DEFAULT_CHANNELS + ("cad",))
    for i, v in enumerate(xs):
        a = plain.update(300.0 * i, v)
        b = both.update(300.0 * i, v)
        assert b[0] >= a[0] and (b[2] or not a[2])  # the larger score; a flag of the others stands
        if b[0] == a[0]:
            assert b[2] == a[2] or b[0] >= both.threshold
    # State round trip with the CAD channel (MessagePack, as the state store keeps it): it continues exactly.
    restored = KpiDetector.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(both.to_state())))
    more = [10 + 4 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 0.3) for i in range(1500, 1700)]
    assert [both.update(300.0 * i, v) for i, v in enumerate(more, 1500)] == \
        [restored.update(300.0 * i, v) for i, v in enumerate(more, 1500)]
