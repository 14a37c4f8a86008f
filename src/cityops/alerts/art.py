"""Streaming ARTime detector: adaptive-resonance (dual-vigilance fuzzy ART) clustering of short windows of a series.

Method and constants from ARTime (Mark Hampton, 2021; ARTimeNAB.jl, AGPL-3.0; its NAB result: standard score 74.9
on the full Numenta Anomaly Benchmark), itself built on dual-vigilance fuzzy ART (DVFA: da Silva, Elnabarawy &
Wunsch 2019, "Dual vigilance fuzzy adaptive resonance theory", Neural Networks 109) as in AdaptiveResonance.jl
(Petrenko & Wunsch). Written here from those descriptions; no code is copied.

What it does, point by point (all constants are ARTime's unless said otherwise):

1. Downsample: every `sstep` points the last `sstep` values become one sample, the extreme (max or min, whichever
   is further from a running average of the block means), or the block mean when the extreme is within 10 % of it.
2. Normalise to [0, 1] with the range of the learning period (below), discretise to 80 levels, and snap to the
   running median level when within 0.075 of it (small wobbles around the usual level are not shape).
3. Features of the last 8 samples: their Haar wavelet transform (of the window scaled to [0, 1]: its shape) and
   the 8 samples themselves (its level): 16 numbers in [0, 1], complement-coded to 32.
4. DVFA: a sample resonates with the categories whose match (fuzzy-AND overlap)^3 * (match of the newest
   sample's level)^2 reaches the upper vigilance `rho_ub` (they learn it); if none but the best reaches the lower
   vigilance `rho_lb`, it founds a new category of a known cluster; below `rho_lb` it founds a new cluster: a
   candidate anomaly. A candidate is reported unless it falls in a masking period (after an anomaly, after new
   clusters, after a vigilance update) where it must also be well below the last anomaly's similarity.
5. The vigilances start from the mean similarity of the learning period's windows replayed in an order of
   increasing typicality, and then follow the series: `rho_ub` is the running mean similarity (capped at 0.97),
   `rho_lb` rises towards the lowest recent similarity and decays when similarities fall below `rho_ub`.
6. The score of a reported anomaly is its distance below the vigilances and the mismatch of its level; all other
   points score 0.

Where ARTime reads the whole file first (NAB hands a detector the file's minimum, maximum and length), this one
sees only the past: the learning period is a fixed `learn_pts` points (NAB's own probation is at most 750), its
range, widened by `range_margin` on each side, is the normalisation range, and later values are clipped to it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ArtDetector", "ART_STATE_VERSION", "MIN_LEARN_PTS"]

ART_STATE_VERSION = "art-1"

# ARTime's constants (see the module doc); not tuned here.
_WINDOW = 8              # samples per feature window
_WINDOWS_PER_LEARN = 13  # feature windows per learning period: sets the downsampling step
_LEVELS = 80             # discretisation levels of the normalised value
_CHOMP = 0.075           # snap to the running median level within this (normalised) distance
_INITIAL_RHO = 0.80      # vigilance of the replay that sets the first vigilances
_RHO_UB_CAP = 0.97
_RHO_RISE = 0.19         # share of the gap to the lowest recent similarity that rho_lb rises by
_DIFF_MIN, _DIFF_CAP = 0.05, 0.37
MIN_LEARN_PTS = _WINDOW * _WINDOWS_PER_LEARN  # the shortest learning period: one sample per point
_MASK = int(_WINDOW * 1.5)  # samples masked after an anomaly or a vigilance update
_DIM = 2 * _WINDOW
_CODED = 2 * _DIM
# The complement-coded vector is laid out [f[:15], 1 - f[:15], f[15], 1 - f[15]] (f = 8 wavelet coefficients,
# then the 8 levels, newest last), so the newest level and its complement, which ARTime's match weighs apart,
# are the last two columns. Level coordinates (lower corners) and their complements (upper corners):
_LEVEL_COLS = np.array(list(range(_WINDOW, _DIM - 1)) + [_CODED - 2])
_LEVEL_COMP_COLS = np.array(list(range(_DIM - 1 + _WINDOW, 2 * _DIM - 2)) + [_CODED - 1])
_S = math.sqrt(0.5)


def _shape(w: list[float]) -> list[float]:
    """The window scaled to [0, 1], its orthonormal Haar transform [a3, d3, d2, d2, d1 x 4], scaled to [0, 1]."""
    lo = min(w)
    hi = max(w) - lo
    if hi != 0:
        w = [(v - lo) / hi for v in w]
    else:
        w = [0.0] * _WINDOW
    w0, w1, w2, w3, w4, w5, w6, w7 = w
    a0, a1, a2, a3 = (w0 + w1) * _S, (w2 + w3) * _S, (w4 + w5) * _S, (w6 + w7) * _S
    b0, b1 = (a0 + a1) * _S, (a2 + a3) * _S
    c = [(b0 + b1) * _S, (b0 - b1) * _S, (a0 - a1) * _S, (a2 - a3) * _S,
         (w0 - w1) * _S, (w2 - w3) * _S, (w4 - w5) * _S, (w6 - w7) * _S]
    lo = min(c)
    hi = max(c) - lo
    return [(v - lo) / hi for v in c] if hi != 0 else [v - lo for v in c]


def _floats(v: Any) -> np.ndarray:
    """Floats stored as little-endian float64 bytes, or as a (nested) list of numbers."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return np.frombuffer(v, dtype="<f8").astype(float)
    return np.asarray(v, dtype=float).ravel()


def _code(f: list[float]) -> np.ndarray:
    """Complement coding of the 16 features in the layout above."""
    head = f[:-1]
    # map: 1 - v without a comprehension; fromiter with the known length skips np.array's dtype and shape discovery.
    return np.fromiter(head + list(map((1.0).__sub__, head)) + [f[-1], 1.0 - f[-1]], float, _CODED)


class ArtDetector:
    """ARTime on one series, one point at a time (see the module doc for the method and its source).

    `learn_pts`: points of the learning period (nothing is reported during it; its range normalises the series);
    `range_margin`: the normalisation range is the learning period's [min, max] widened by this fraction of its
    width on each side; a later value beyond it widens it (every learned category is mapped to the new range).
    `max_categories` bounds the state (see `_Dvfa`). `update(ts, value)` returns the anomaly score in [0, 1]
    (0 for all but reported anomalies); `high` then tells whether the sample lies above its running median.
    ARTime is blind to the clock: `ts` is only remembered (`last_ts`). State is plain data (`to_state`).
    """

    def __init__(self, *, learn_pts: int = 312, range_margin: float = 0.5, max_categories: int = 256) -> None:
        if learn_pts < MIN_LEARN_PTS:
            raise ValueError(f"learn_pts must be >= {MIN_LEARN_PTS}, got {learn_pts}")
        if not range_margin >= 0:
            raise ValueError(f"range_margin must be >= 0, got {range_margin}")
        self.learn_pts = int(learn_pts) - int(learn_pts) % 2
        self.range_margin = float(range_margin)
        if max_categories < 2:
            raise ValueError(f"max_categories must be >= 2, got {max_categories}")
        self.max_categories = int(max_categories)
        self.sstep = max(1, round(self.learn_pts // (_WINDOW * _WINDOWS_PER_LEARN)))
        self.trend_window = self.learn_pts // self.sstep
        self.i = 0                     # points seen
        self.last_ts: float | None = None
        self.high = True               # the last sample is at or above the running median level (a direction)
        self.dsi = 0                   # samples (downsampled points) seen
        self.block: list[float] = []   # values of the current downsampling block
        self.lo = math.inf             # raw range of the learning period, then the normalisation range
        self.hi = -math.inf
        self.ds_ma = 0.0
        self.raw_ds: list[float] = []  # the learning period's samples, before normalisation
        self.medbin = [0] * (_LEVELS + 1)
        self.medlevel = 0
        self.belowmed = 0
        self.abovemed = 0
        self.f_window = [0.0] * _WINDOW
        # DVFA
        self.art = _Dvfa(self.max_categories)
        self.rho_lb = 0.0
        self.rho_ub = 0.0
        # ARTime's adaptation of the vigilances
        self.last_anomaly_i = 0
        self.last_anomaly_sim = 0.0
        self.last_rho_update_i = 0
        self.mask_after_cat = False
        self.no_new_cat_count = 0
        # Similarities of the reported anomalies (each the lowest within its masking period): count, sum, last.
        self.anom_n = 0
        self.anom_sum = 0.0
        self.anom_last = 0.0
        self.sim_sum = 0.0
        self.sim_n = 0
        self.sim_window = [1.0] * (self.trend_window // 2 + 1)
        self.sim_diff_window = [0.0] * (self.trend_window + 1)

    # ------------------------------------------------------------------ state
    _STATE = ("i", "last_ts", "high", "dsi", "block", "lo", "hi", "ds_ma", "raw_ds", "medbin", "medlevel", "belowmed", "abovemed",
              "f_window", "rho_lb", "rho_ub", "last_anomaly_i", "last_anomaly_sim",
              "last_rho_update_i", "mask_after_cat", "no_new_cat_count", "anom_n", "anom_sum", "anom_last", "sim_sum", "sim_n",
              "sim_window", "sim_diff_window")

    def to_state(self) -> dict[str, Any]:
        """Plain dict of numbers, lists and two byte strings (the categories); `from_state` restores it, also
        with those given as lists of numbers (JSON)."""
        st = {k: (list(v) if isinstance(v := getattr(self, k), list) else v) for k in self._STATE}
        for k in ("lo", "hi"):
            st[k] = None if math.isinf(st[k]) else st[k]
        st["art"] = self.art.to_state()
        params = {"learn_pts": self.learn_pts, "range_margin": self.range_margin, "max_categories": self.max_categories}
        return {"version": ART_STATE_VERSION, "params": params, "state": st}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ArtDetector:
        if state.get("version") != ART_STATE_VERSION:
            raise ValueError(f"unsupported ART detector state version {state.get('version')!r}")
        det = cls(**state["params"])
        st = dict(state["state"])
        det.art = _Dvfa.from_state(st.pop("art"))
        for k, v in st.items():
            setattr(det, k, list(v) if isinstance(v, list) else v)
        det.lo = math.inf if st["lo"] is None else float(st["lo"])
        det.hi = -math.inf if st["hi"] is None else float(st["hi"])
        return det

    # ---------------------------------------------------------------- scoring
    def update(self, ts: float, value: float) -> float:
        """Feed one point; returns its anomaly score in [0, 1] (0 unless a reported anomaly)."""
        self.i += 1
        self.last_ts = ts
        if self.dsi < self.trend_window:
            if value < self.lo:
                self.lo = value
            if value > self.hi:
                self.hi = value
        blk = self.block
        blk.append(value)
        if len(blk) < self.sstep:
            return 0.0
        self.block = []
        return self._sample(blk)

    def _sample(self, blk: list[float]) -> float:
        mean = sum(blk) / len(blk)
        mx, mn = max(blk), min(blk)
        self.dsi += 1
        if self.dsi == 1:
            self.ds_ma = mean
        self.ds_ma = (self.ds_ma + mean) / 2.0
        ds = mx if abs(mx - self.ds_ma) >= abs(mn - self.ds_ma) else mn
        if abs(ds - mean) < 0.1 * abs(mean):  # a spike must be at least 10 % off the block mean
            ds = mean
        if self.dsi < self.trend_window:
            self.raw_ds.append(ds)
            return 0.0
        if self.dsi == self.trend_window:
            self.raw_ds.append(ds)
            self._learn_period()
            return 0.0
        return self._detect(self._features(ds), self.dsi)

    def _features(self, ds: float) -> list[float] | None:
        """Normalise, discretise, snap to the running median, push into the window; the feature vector or None."""
        if self.dsi > self.trend_window and not self.lo <= ds <= self.hi:
            self._rescale(min(self.lo, ds), max(self.hi, ds))
        span = self.hi - self.lo
        x = (ds - self.lo) / span if span > 0 else 0.5
        level = min(_LEVELS, max(0, round(x * _LEVELS)))
        x = level / _LEVELS
        mb = self.medbin
        mb[level] += 1
        n = self.dsi
        if n == 1:
            self.medlevel = level
        if self.medlevel > level:
            self.belowmed += 1
        elif self.medlevel < level:
            self.abovemed += 1
        # Not strictly a running median but close enough (ARTime's own words).
        medpos = n // 2
        if medpos < self.abovemed:
            self.belowmed += mb[self.medlevel]
            self.medlevel += 1
            while mb[self.medlevel] == 0:
                self.medlevel += 1
            self.abovemed -= mb[self.medlevel]
        elif medpos < self.belowmed:
            self.abovemed += mb[self.medlevel]
            self.medlevel -= 1
            while mb[self.medlevel] == 0:
                self.medlevel -= 1
            self.belowmed -= mb[self.medlevel]
        med = self.medlevel / _LEVELS
        self.high = x >= med
        if abs(x - med) < _CHOMP:
            x = med
        fw = self.f_window
        fw.pop(0)
        fw.append(x)
        if n < _WINDOW:
            return None
        return _shape(fw) + fw

    def _rescale(self, lo: float, hi: float) -> None:
        """Widen the normalisation range to [lo, hi]: every learned level moves to where it lies in the new range.

        A fuzzy-ART category is a box (lower corner W[:d], upper corner 1 - W[d:]); a linear map of one
        coordinate maps the box to a box, so the level coordinates of every category are mapped exactly
        (the wavelet coordinates are scale-free). The running-median histogram is re-binned.
        """
        old_lo, old_span = self.lo, self.hi - self.lo
        span = hi - lo
        if span <= 0:
            return
        a, b = old_span / span, (old_lo - lo) / span  # x_new = a * x_old + b
        self.lo, self.hi = lo, hi
        art = self.art
        W = art.W[1:art.k]
        W[:, _LEVEL_COLS] = W[:, _LEVEL_COLS] * a + b
        W[:, _LEVEL_COMP_COLS] = 1.0 - ((1.0 - W[:, _LEVEL_COMP_COLS]) * a + b)
        art.refresh()
        self.f_window = [x * a + b for x in self.f_window]
        mb = [0] * (_LEVELS + 1)
        for lv, c in enumerate(self.medbin):
            if c:
                mb[min(_LEVELS, max(0, round((lv / _LEVELS * a + b) * _LEVELS)))] += c
        self.medbin = mb
        self.medlevel = min(_LEVELS, max(0, round((self.medlevel / _LEVELS * a + b) * _LEVELS)))
        self.belowmed = sum(mb[: self.medlevel])
        self.abovemed = sum(mb[self.medlevel + 1:])

    def _learn_period(self) -> None:
        """End of the learning period: fix the range, replay its samples to set the vigilances, then learn them."""
        lo, hi = self.lo, self.hi
        m = self.range_margin * (hi - lo)
        self.lo, self.hi = lo - m, hi + m
        raw, self.raw_ds = self.raw_ds, []
        feats: list[list[float] | None] = []
        for k, ds in enumerate(raw, start=1):
            self.dsi = k
            feats.append(self._features(ds))
        rho = self._init_rho([f for f in feats if f is not None])
        self.rho_lb = self.rho_ub = rho
        for k, f in enumerate(feats, start=1):
            self._detect(f, k)
        self.dsi = len(raw)

    def _init_rho(self, X: list[list[float]]) -> float:
        """Mean best-match similarity of the learning windows replayed least typical first, at vigilance 0.8."""
        if len(X) < 2:
            return _INITIAL_RHO
        M = np.array(X)
        nrm = np.linalg.norm(M, axis=1)
        safe = np.where(nrm > 0, nrm, 1.0)
        sim = (M @ M.T) / np.outer(safe, safe)
        # ARTime's similarity of a zero vector to another: 1 - |other|.
        zero = nrm == 0
        if zero.any():
            sim[zero, :] = 1.0 - nrm[None, :]
            sim[:, zero] = 1.0 - nrm[:, None]
        np.fill_diagonal(sim, 1.0)
        order = np.argsort(sim.sum(axis=0), kind="stable")
        art = _Dvfa(len(order) + 1)
        sims: list[float] = [0.0]  # the first window only sets up the all-ones category (as in DVFA's setup)
        for j in order[1:]:
            sims.append(art.step(_code(X[j]), _INITIAL_RHO, _INITIAL_RHO)[0])
        tail = sims[self.trend_window // 2 - 1:]
        return float(np.mean(tail)) if tail else _INITIAL_RHO

    def _detect(self, f: list[float] | None, i: int) -> float:
        """ARTime's detect!: train the DVFA on sample `i`'s features, report a new cluster, adapt the vigilances."""
        mask = _MASK
        since = i - self.last_anomaly_i
        update_after_anomaly = since == mask
        update_for_trend = i - self.last_rho_update_i >= self.trend_window // 2
        mask_after_anomaly = since <= mask
        if i > self.trend_window + mask and self.mask_after_cat and self.no_new_cat_count >= mask:
            self.mask_after_cat = False
        if f is None or i < _WINDOW:
            # No full window yet: not learned (ARTime scores it against the categories, the first sample 0).
            if i == 1:
                a = ae = 0.0
            else:
                a, ae, _ = self.art.step(_code([0.0] * _DIM), self.rho_lb, self.rho_ub, learning=False)
            cat = -1
        else:
            a, ae, cat = self.art.step(_code(f), self.rho_lb, self.rho_ub)
        self.no_new_cat_count = 0 if cat == -1 else self.no_new_cat_count + 1
        self.sim_n += 1
        self.sim_sum += a
        self.sim_window.pop(0)
        self.sim_window.append(a)
        self.sim_diff_window.pop(0)
        self.sim_diff_window.append(self.rho_ub - a)
        if since < mask and self.anom_n and a < self.anom_last:
            self.anom_sum += a - self.anom_last
            self.anom_last = a
        masking = self.mask_after_cat or mask_after_anomaly
        below_last = a < self.last_anomaly_sim * (0.90 if mask_after_anomaly else 0.70)
        score = 0.0
        if i > self.trend_window and cat == -1 and (not masking or below_last):
            score = self._confidence(a, ae)
            self.anom_n += 1
            self.anom_sum += a
            self.anom_last = a
            self.last_anomaly_sim = a
            self.last_anomaly_i = i
        self.mask_after_cat = cat == -1 or self.mask_after_cat
        if i > self.trend_window and (update_after_anomaly or update_for_trend):
            self._update_rho(i)
        return score

    def _update_rho(self, i: int) -> None:
        min_sim = min(self.sim_window)
        ub = min(_RHO_UB_CAP, self.sim_sum / self.sim_n)
        lb = self.rho_lb
        if lb <= min_sim:
            lb += (min_sim - lb) * _RHO_RISE
        else:
            decr = 0.0
            if i > self.trend_window * 2:
                below = [min(_DIFF_CAP, d) for d in self.sim_diff_window if d > _DIFF_MIN]
                if below:
                    decr = sum(below) / len(below)
            lb -= max(0.01, decr) / 2.0
            if self.anom_n:
                lb = max(self.anom_sum / self.anom_n, lb)
        self.rho_lb = min(ub, lb)
        self.rho_ub = ub
        self.last_rho_update_i = i
        self.mask_after_cat = True

    def _confidence(self, sim: float, energy: float) -> float:
        sim = min(0.999, sim)
        ub = (self.rho_ub - sim) / (1.0 - sim)
        lb = (self.rho_lb - sim) / (1.0 - sim)
        s = ub * 0.35 + lb * 0.65 + (1.0 - energy) * 1.5
        return max(0.0, min(1.0, s))


class _Dvfa:
    """Dual-vigilance fuzzy ART over complement-coded feature vectors, at most `cap` categories.

    Match of category j: (|min(x, W_j)|_1 / |W_j|_1)^3 times the same over the newest sample's level and its
    complement, squared (ARTime's variant). A sample resonates with every category matching at least `rho_ub`
    (they learn it: W_j <- min(x, W_j), fuzzy ART's fast learning); else, if the best match reaches `rho_lb`,
    it founds a category of the best one's cluster; else it founds a new cluster (returned as label -1).
    When full, a new category replaces the one that resonated longest ago (keeps the state bounded on an
    endless stream; ARTime has no bound, NAB's files being finite).
    """

    __slots__ = ("W", "den", "labels", "last", "k", "n_clusters", "t", "open", "_buf", "_num")

    # em @ _SUMS: each row's total and the sum of its last two columns (the newest level's box) in one product.
    _SUMS = np.zeros((_CODED, 2))
    _SUMS[:, 0] = 1.0
    _SUMS[-2:, 1] = 1.0

    def __init__(self, cap: int) -> None:
        self.W = np.ones((cap, _CODED))  # row 0: DVFA's setup category (all ones); rows >= k unused
        self.den = np.empty((cap, 2))     # W @ _SUMS, the match's denominators (a zero one stored as inf)
        self.den[:] = (float(_CODED), 2.0)
        self.labels = [1]
        self.last = np.zeros(cap)         # step of each category's last resonance or founding
        self.k = 1
        self.n_clusters = 1
        self.t = 0
        self.open = False                 # some category's level box spans every level (see refresh)
        self._buf = np.empty((cap, _CODED))
        self._num = np.empty((cap, 2))

    def refresh(self) -> None:
        """Recompute the cached denominators after W was changed in place."""
        k = self.k
        d = self.W[:k] @ self._SUMS
        # A zero denominator: the box spans every value of that coordinate (0/0 in ARTime). The level match
        # of such a box is taken as 1 below; inf here makes its ratio 0 so that a fix-up can spot it.
        d[d <= 0] = np.inf
        self.den[:k] = d
        self.open = bool(np.isinf(d[:, 1]).any())

    def step(self, x: np.ndarray, rho_lb: float, rho_ub: float, learning: bool = True) -> tuple[float, float, int]:
        """(best match, its level match, label or -1 for a new cluster) of coded `x`; learns when `learning`."""
        self.t += 1
        k = self.k
        em = np.minimum(self.W[:k], x, out=self._buf[:k])
        r = np.matmul(em, self._SUMS, out=self._num[:k])
        r /= self.den[:k]
        if self.open:
            r[np.isinf(self.den[:k, 1]), 1] = 1.0
        fs, es = r[:, 0], r[:, 1]
        m = fs * fs
        m *= fs
        m *= es
        m *= es
        best = int(m.argmax())
        a, ae = m.item(best), r.item(best, 1)  # (as Python floats, without numpy scalars in between)
        if not learning:
            return a, ae, -1
        if a >= rho_ub:
            res = (m >= rho_ub).nonzero()[0]  # (np.flatnonzero's result, without its Python-level wrapper)
            sub = em.take(res, 0)  # = em[res], faster than fancy indexing
            self.W[res] = sub
            d = sub @ self._SUMS
            # (.any() of a tiny array costs a reduction's set-up; a float 0.0 spares an int scalar's conversion)
            if np.count_nonzero(d <= 0.0):
                d[d <= 0.0] = np.inf
                self.open = True
            self.den[res] = d
            self.last[res] = self.t
            return a, ae, self.labels[best]
        if a >= rho_lb:
            label = self.labels[best]
        else:
            self.n_clusters += 1
            label = -1
        if k < self.W.shape[0]:
            j = k
            self.k = k + 1
            self.labels.append(0)
        else:
            j = 1 + int(self.last[1:].argmin())
        self.W[j] = x
        self.den[j] = (float(_DIM), 1.0)  # x + (1 - x) sums to 1 per feature
        self.last[j] = self.t
        self.labels[j] = self.n_clusters if label == -1 else label
        return a, ae, label

    def to_state(self) -> dict[str, Any]:
        k = self.k
        # The categories as little-endian float64 bytes (row-major, k rows of 32), not lists: the KPI rules store
        # a detector's state after every window, and a few thousand floats copy (and MessagePack) as one block.
        # `from_state` also takes them as (nested or flat) lists of numbers, e.g. from JSON.
        # The cached denominators too: recomputed in one product over all k rows they can differ in the last bits
        # from the ones computed row subset by row subset while learning (the BLAS result depends on the matrix
        # shape), and a restored detector must continue exactly as the uninterrupted one.
        return {"cap": self.W.shape[0], "k": k, "W": self.W[:k].astype("<f8").tobytes(), "labels": list(self.labels),
                "last": self.last[:k].astype("<f8").tobytes(), "n_clusters": self.n_clusters, "t": self.t,
                "den": self.den[:k].astype("<f8").tobytes()}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> _Dvfa:
        d = cls(int(st["cap"]))
        k = int(st["k"])
        W, last = _floats(st["W"]), _floats(st["last"])
        if not 1 <= k <= d.W.shape[0] or len(st["labels"]) != k or W.size != k * _CODED or last.size != k:
            raise ValueError("ART state: categories do not fit their capacity")
        d.k = k
        d.W[:k] = W.reshape(k, _CODED)
        if st.get("den") is None:  # a state written before the denominators were kept: recomputed
            d.refresh()
        else:
            den = _floats(st["den"])
            if den.size != 2 * k:
                raise ValueError("ART state: denominators do not fit the categories")
            d.den[:k] = den.reshape(k, 2)
            d.open = bool(np.isinf(d.den[:k, 1]).any())
        d.labels = [int(v) for v in st["labels"]]
        d.last[:k] = last
        d.n_clusters, d.t = int(st["n_clusters"]), int(st["t"])
        return d
