"""Behavioural tests for the ARTime channel (ArtDetector) and its dual-vigilance fuzzy ART."""

from __future__ import annotations

import json
import math
import random

import msgspec
import numpy as np
import pytest

from cityops.alerts.art import ART_STATE_VERSION, ArtDetector, _Dvfa, _code, _shape


def periodic(n: int, seed: int = 1, period: int = 48, noise: float = 0.3) -> list[float]:
    rng = random.Random(seed)
    return [10.0 + 5.0 * math.sin(2 * math.pi * i / period) + rng.gauss(0, noise) for i in range(n)]


def test_shape_is_the_orthonormal_haar_transform_scaled() -> None:
    w = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    out = _shape(w)
    assert len(out) == 8 and min(out) == 0.0 and max(out) == 1.0
    # Of a ramp every finest detail coefficient is equal (and so is every level-2 one).
    assert out[5:] == pytest.approx([out[4]] * 3) and out[3] == pytest.approx(out[2])
    # A window and its shifted, scaled copy have the same shape features; a flat window has none.
    assert _shape([3.0 * v + 7.0 for v in w]) == pytest.approx(out)
    assert _shape([2.0] * 8) == [0.0] * 8


def test_dvfa_resonance_new_category_and_new_cluster() -> None:
    art = _Dvfa(8)
    f = [0.5] * 16
    assert art.step(_code(f), 0.5, 0.9)[2] == -1  # nothing learned yet: a new cluster
    a, _, label = art.step(_code(f), 0.5, 0.9)
    assert a == pytest.approx(1.0) and label == 2  # the same vector resonates with its own category
    g = [0.5] * 15 + [0.45]  # a slightly different newest level: below rho_ub, above rho_lb
    a, _, label = art.step(_code(g), 0.5, 0.99)
    assert 0.5 <= a < 0.99 and label == 2 and art.k == 3  # a new category of the same cluster
    h = [1.0] * 8 + [0.0] * 8
    assert art.step(_code(h), 0.9, 0.99)[2] == -1 and art.n_clusters == 3


def test_dvfa_is_bounded_and_replaces_the_longest_unused_category() -> None:
    art = _Dvfa(4)
    for k in range(10):
        art.step(_code([k / 10.0] * 16), 0.99, 0.99)
    assert art.k == 4 and len(art.labels) == 4
    assert art.W[0].tolist() == [1.0] * 32  # the setup category stays


def test_periodic_series_is_quiet_and_a_novel_shape_is_reported_once_learned() -> None:
    xs = periodic(3000)
    det = ArtDetector(learn_pts=312)
    out = [det.update(float(i), v) for i, v in enumerate(xs)]
    assert all(s == 0.0 for s in out[:312])  # the learning period reports nothing
    quiet = sum(s > 0 for s in out[1500:])
    spike_at = 3000
    xs2 = xs + [v + (30.0 if 0 <= i - 20 < 6 else 0.0) for i, v in enumerate(periodic(200, seed=2))]
    out2 = []
    for i, v in enumerate(xs2[3000:], start=3000):
        out2.append(det.update(float(i), v))
        if i == spike_at + 22:
            high = det.high
    assert high  # the excursion is above the usual level
    at = [i for i, s in enumerate(out2, start=3000) if s > 0 and spike_at + 20 <= i <= spike_at + 27]
    assert at  # the excursion (beyond the range seen) is reported while it lasts
    top = max(range(len(out2)), key=out2.__getitem__) + 3000
    assert spike_at + 20 <= top <= spike_at + 27 and out2[top - 3000] > 0.3  # and scores highest
    assert quiet <= 5  # a learned rhythm is seldom reported (a few new clusters in 1500 noisy points)


def test_no_look_ahead() -> None:
    xs = periodic(1500, seed=3)
    full = ArtDetector()
    a = [full.update(float(i), v) for i, v in enumerate(xs)]
    part = ArtDetector()
    b = [part.update(float(i), v) for i, v in enumerate(xs[:900])]
    assert a[:900] == b


def test_state_is_plain_data_and_round_trips_through_msgpack_and_json() -> None:
    xs = periodic(2000, seed=4)
    det = ArtDetector()
    for i, v in enumerate(xs[:1200]):
        det.update(float(i), v)
    st = det.to_state()
    assert st["version"] == ART_STATE_VERSION
    # The state store's encoding (MessagePack of plain data): the categories travel as bytes.
    clone = ArtDetector.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(st)))
    assert clone.to_state() == st
    # JSON has no bytes: the categories given as lists of numbers are read too.
    art = st["state"]["art"]
    as_lists = {**st, "state": {**st["state"], "art": {**art, "W": np.frombuffer(art["W"], "<f8").tolist(),
                                                        "last": np.frombuffer(art["last"], "<f8").tolist(),
                                                        "den": np.frombuffer(art["den"], "<f8").tolist()}}}
    twin = ArtDetector.from_state(json.loads(json.dumps(as_lists)))
    rest = list(enumerate(xs[1200:], start=1200))
    out = [det.update(float(i), v) for i, v in rest]
    assert out == [clone.update(float(i), v) for i, v in rest] == [twin.update(float(i), v) for i, v in rest]
    assert det.to_state() == clone.to_state() == twin.to_state()
    assert det.to_state() != st  # the stored state is a copy: the detector went on learning, it did not
    with pytest.raises(ValueError):
        ArtDetector.from_state({**st, "version": "art-0"})


def _wandering(n: int, seed: int) -> list[float]:
    """A random walk with a rhythm and spikes: it fills the 256 categories and keeps changing them."""
    rng = random.Random(seed)
    out, x = [], 50.0
    for i in range(n):
        x += rng.gauss(0, 1.0) - 0.001 * (x - 50.0)
        out.append(x + 10.0 * math.sin(i / 40.0) + rng.choice([0.0] * 30 + [25.0, -25.0]))
    return out


def test_restored_detector_continues_exactly_as_the_uninterrupted_one() -> None:
    """Stopped and restored from its state at any point, the detector gives bit for bit the scores it would have.

    The match denominators cached while learning (computed over the resonating rows) can differ in the last bits
    from one product over all rows, so they travel in the state; a state without them is still read."""
    xs = _wandering(20000, seed=3)
    det = ArtDetector()
    restored = []
    for i, v in enumerate(xs):
        det.update(float(i), v)
        if i % 2000 == 1999:
            restored.append((i, ArtDetector.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(det.to_state())))))
    assert det.art.k == det.max_categories  # full: categories are replaced, not only added
    for start, twin in restored:
        assert np.array_equal(twin.art.den[:twin.art.k], ArtDetector.from_state(twin.to_state()).art.den[:twin.art.k])
    tails = {start: [] for start, _ in restored}
    ref = ArtDetector()
    full = [ref.update(float(i), v) for i, v in enumerate(xs)]
    for start, twin in restored:
        tails[start] = [twin.update(float(i), v) for i, v in enumerate(xs[start + 1:], start=start + 1)]
        assert tails[start] == full[start + 1:], f"restored at {start} diverged"
    assert sum(1 for c in full if c > 0) > 10  # the comparison is over reported anomalies, not only zeros
    # A state written before the denominators were kept: read, the denominators recomputed.
    old = det.to_state()
    del old["state"]["art"]["den"]
    again = ArtDetector.from_state(old)
    assert again.art.den[:again.art.k] == pytest.approx(det.art.den[:det.art.k])


def test_range_widening_maps_learned_categories() -> None:
    """After a value beyond the range, the categories still describe the old levels: the old rhythm is not new."""
    xs = periodic(2000, seed=5)
    det = ArtDetector()
    for i, v in enumerate(xs):
        det.update(float(i), v)
    lo, hi = det.lo, det.hi
    w_before = det.art.W[1: det.art.k].copy()
    det._rescale(lo - (hi - lo), hi)  # twice as wide
    w = det.art.W[1: det.art.k]
    # A level x maps to (x + 1) / 2; its complement column 1 - x to 1 - (x + 1) / 2.
    assert w[:, 8] == pytest.approx((w_before[:, 8] + 1.0) / 2.0)
    assert w[:, 23] == pytest.approx(1.0 - ((1.0 - w_before[:, 23]) + 1.0) / 2.0)
    assert w[:, :8] == pytest.approx(w_before[:, :8])  # the shape columns are scale-free
    assert sum(det.medbin) == det.dsi


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        ArtDetector(learn_pts=50)
    with pytest.raises(ValueError):
        ArtDetector(range_margin=-0.1)
    with pytest.raises(ValueError):
        ArtDetector(max_categories=1)
    det = ArtDetector(learn_pts=750)
    assert (det.sstep, det.trend_window) == (7, 107)  # ARTime's step for NAB's longest probation
    assert ArtDetector().sstep == 3
    assert np.isfinite(ArtDetector().art.W).all()
