"""Online seasonal anomaly detector for one KPI series: robust daily/weekly baseline, scored one point at a time."""

from __future__ import annotations

import math
from typing import Any

from cityops.alerts.art import ART_STATE_VERSION, ArtDetector
from cityops.alerts.cad import CadDetector

__all__ = ["KpiDetector", "ProfileDetector", "SeasonalDetector", "detector_from_state"]

_STATE_VERSION = 1
_PROFILE_VERSION = "profile-1"
_KPI_VERSION = "kpi-2"
_KPI_VERSIONS = ("kpi-1", _KPI_VERSION)  # kpi-1: before the ART channel (its states restore as they were)
_HIGH = "high"
_LOW = "low"
_ART_QUIET = (0.0, _HIGH, False)  # the ART channel's decision at all but its reported anomalies (one shared tuple)


def _bin_step(old: float, dev: float, lim2: float, g: float) -> float:
    """A seasonal bin's value after learning `dev` at rate `g`, dev clipped to old +- lim2.

    The conditionals are max(old - lim2, min(old + lim2, dev)), NaN included, without two builtin calls (the
    bins learn on every point)."""
    hi = old + lim2
    c = dev if dev < hi else hi
    lo = old - lim2
    return old + g * ((c if c > lo else lo) - old)


def _restore(det: Any, state: dict[str, Any]) -> None:
    """Set a detector's state attributes from a `to_state()["state"]` dict (lists copied, not shared).

    A key the detector has no slot for is not state of this version and is skipped (before the detectors had
    `__slots__` it became an attribute nothing read)."""
    for k, v in state.items():
        if k in type(det).__slots__:
            setattr(det, k, list(v) if isinstance(v, list) else v)


class SeasonalDetector:
    """Streaming detector for one series (one metro line's `taps_in`, one segment's `speed_kmh`, ...).

    Model: value = level + season[time-of-day (or time-of-week) bin] + short-term drift + noise.
    `level` follows the series slowly (time constant `level_tau_s`), the seasonal bins learn the
    value's offset from that level, `drift` follows what the seasonal model misses over the last
    few points (`drift_tau_s`). The residual is scaled by a robust running mean absolute deviation.

    Two evidence channels, the larger wins: the point's own z-score (spikes and drops) and a short
    exponential average of z-scores (sustained shifts too small to stand out point by point).

    Scoring is apart from deciding (like river's `score_one`/`learn_one`): `score_one` never learns,
    `learn_one` always learns, `update` learns only when the point was not flagged, so an anomaly
    does not become the new normal. If flags persist for `relearn_s` seconds the detector accepts
    the new level (a real change in the series, say a closed lane), instead of alerting forever.
    Within one alert episode only the onset reports the full score, later points report a damped
    score (`repeat_factor`): one episode, one alert. Series with heavy tails are judged against
    their largest recent unflagged surprise (`peak_tau_pts`, `peak_ref`). A flag at the same time
    of day as a flag of the same sign the day before is taken as unlearned rhythm (`recur_n`).
    A noise-free series has a running scale near zero, so `scale_floor` (a fraction of the
    series' typical distance from its level) keeps float-rounding wobbles from scoring as huge z.
    A third channel, apart from the seasonal model, watches the series' range: a value beyond the
    largest (smallest) value seen so far, by `ext_frac` of the range seen so far, scores like a
    z of `z_threshold` (scaled linearly), then that channel rests for `ext_rest_pts` points, so a
    climbing series alerts once, not at every new record. The range learns from every point.
    Defaults were tuned once, for all files together, on the NAB subset in ../shared/data/nab.

    All times are epoch seconds; spacing may be irregular.
    """

    # Slots, not a __dict__: with more than 30 attributes an instance's dict stops sharing its keys and CPython
    # 3.11 then no longer specialises `self.method(...)` calls and attribute stores on it; `update` runs for every
    # point of every series (benchmarks/bench_detector.py). Every attribute must be declared here.
    __slots__ = (
        # parameters and constants derived from them
        "sensitivity", "season_s", "week", "bins", "week_bins", "level_tau_s", "drift_tau_s", "season_rate",
        "scale_tau_pts", "sustain_pts", "clip_z", "z_threshold", "relearn_s", "episode_gap_s", "week_min_visits",
        "warmup_pts", "repeat_factor", "peak_tau_pts", "peak_ref", "recur_n", "recur_bins", "season_drift",
        "scale_floor", "ext_frac", "ext_rest_pts", "seasonal", "_ext_gain", "_peak_decay", "z_flag", "threshold",
        "_a_scale", "_a_sustain", "_sustain_norm", "_keep_sustain", "_zcap", "_dt", "_a_lvl", "_a_dft",
        # state (to_state)
        "n", "last_ts", "level", "drift", "scale", "spread", "zbar", "peak", "day", "day_n", "wk", "wk_n",
        "flag_ts", "flag_n", "ep_start", "ep_last", "ep_resid", "ext_n", "ext_lo", "ext_hi", "ext_last",
    )

    def __init__(
        self,
        *,
        sensitivity: float = 1.0,
        season_s: float = 86400.0,
        week: bool = True,
        bins: int = 288,
        week_bins: int = 336,
        level_tau_s: float = 6 * 3600.0,
        drift_tau_s: float = 1800.0,
        season_rate: float = 0.25,
        scale_tau_pts: float = 100.0,
        sustain_pts: float = 12.0,
        clip_z: float = 3.0,
        z_threshold: float = 5.0,
        relearn_s: float = 6 * 3600.0,
        episode_gap_s: float = 6 * 3600.0,
        week_min_visits: int = 3,
        warmup_pts: int = 30,
        repeat_factor: float = 0.25,
        peak_tau_pts: float = 1000.0,
        peak_ref: float = 4.0,
        recur_n: int = 1,
        recur_bins: int = 0,
        season_drift: float = 1.0,
        scale_floor: float = 0.0005,
        ext_frac: float = 0.02,
        ext_rest_pts: int = 100,
        seasonal: bool = True,
    ) -> None:
        if sensitivity <= 0:
            raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
        self.sensitivity = float(sensitivity)
        self.season_s = float(season_s)
        self.week = bool(week)
        self.bins = int(bins)
        self.week_bins = int(week_bins)
        self.level_tau_s = float(level_tau_s)
        self.drift_tau_s = float(drift_tau_s)
        self.season_rate = float(season_rate)
        self.scale_tau_pts = float(scale_tau_pts)
        self.sustain_pts = float(sustain_pts)
        self.clip_z = float(clip_z)
        self.z_threshold = float(z_threshold)
        self.relearn_s = float(relearn_s)
        self.episode_gap_s = float(episode_gap_s)
        self.week_min_visits = int(week_min_visits)
        self.warmup_pts = int(warmup_pts)
        self.repeat_factor = float(repeat_factor)
        self.peak_tau_pts = float(peak_tau_pts)
        self.peak_ref = float(peak_ref)
        self.recur_n = int(recur_n)
        self.recur_bins = int(recur_bins)
        self.season_drift = float(season_drift)
        self.scale_floor = float(scale_floor)
        self.ext_frac = float(ext_frac)
        self.ext_rest_pts = int(ext_rest_pts)
        self.seasonal = bool(seasonal)  # False: the range channel alone (the seasonal model is not fitted)
        # z of the range channel per unit of overshoot (as a fraction of the range seen so far).
        self._ext_gain = self.z_threshold / self.ext_frac if self.ext_frac > 0 else 0.0
        self._peak_decay = math.exp(-1.0 / self.peak_tau_pts) if self.peak_tau_pts > 0 else 0.0
        # Higher sensitivity lowers the z needed to flag; the score maps z to [0, 1).
        self.z_flag = self.z_threshold / self.sensitivity
        self.threshold = self._z_to_score(self.z_flag)
        self._a_scale = 1.0 / self.scale_tau_pts
        self._a_sustain = 1.0 / self.sustain_pts
        # Normalises the averaged z so that pure noise has unit variance in both channels.
        self._sustain_norm = math.sqrt((2.0 - self._a_sustain) / self._a_sustain)
        # Per-point speed (update runs for every point of every series): constants of the hot path computed
        # once, and the time-based rates of the last spacing (a regular series has one spacing, so the two
        # exp() calls are made once per series, not per point). None of this is state.
        self._keep_sustain = 1.0 - self._a_sustain
        self._zcap = self.clip_z * 4
        self._dt = math.nan  # the spacing _a_lvl and _a_dft were computed for (nan: none yet)
        self._a_lvl = self._a_dft = 0.0
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.n = 0
        self.last_ts: float | None = None
        self.level = 0.0
        self.drift = 0.0
        self.scale = 0.0
        self.spread = 0.0
        self.zbar = 0.0
        self.peak = 0.0
        self.day = [0.0] * self.bins
        self.day_n = [0] * self.bins
        self.wk = [0.0] * self.week_bins
        self.wk_n = [0] * self.week_bins
        self.flag_ts = [-1e18] * self.bins     # last flag per day bin, to spot recurring "anomalies"
        self.flag_n = [0] * self.bins
        self.ep_start: float | None = None   # first flag of the current alert episode
        self.ep_last: float | None = None    # last flag of the current alert episode
        self.ep_resid = 0.0                  # mean residual while flagged, for relearning
        self.ext_n = 0                       # points seen by the range channel
        self.ext_lo = 0.0                    # smallest and largest value seen so far
        self.ext_hi = 0.0
        self.ext_last = -(10**9)             # ext_n of the range channel's last flag

    @staticmethod
    def _z_to_score(z: float) -> float:
        # Smooth, monotone, saturating: z = 6 maps to 0.5, z = 12 to 0.8.
        z2 = z * z
        return z2 / (z2 + 36.0)

    def _ext_z(self, value: float) -> float:
        """Signed z of the range channel (0 inside the range seen so far, or while resting); no side effects."""
        if not self._ext_gain or self.ext_n < self.warmup_pts or self.ext_n - self.ext_last < self.ext_rest_pts:
            return 0.0
        lo, hi = self.ext_lo, self.ext_hi
        if lo <= value <= hi:
            return 0.0
        rng = hi - lo
        if rng <= 0.0:
            return math.copysign(1e6, value - hi)  # constant so far: any change is a new record
        return self._ext_gain * ((value - hi) if value > hi else (value - lo)) / rng

    def _ext_learn(self, value: float, ze: float) -> None:
        if self.ext_n == 0:
            self.ext_lo = self.ext_hi = value
        elif value > self.ext_hi:
            self.ext_hi = value
        elif value < self.ext_lo:
            self.ext_lo = value
        if abs(ze) >= self.z_flag:
            self.ext_last = self.ext_n
        self.ext_n += 1

    def to_state(self) -> dict[str, Any]:
        """Plain dict (floats, ints, lists) that survives MessagePack/JSON; `from_state` restores it."""
        params = {
            k: getattr(self, k)
            for k in (
                "sensitivity", "season_s", "week", "bins", "week_bins", "level_tau_s", "drift_tau_s",
                "season_rate", "scale_tau_pts", "sustain_pts", "clip_z", "z_threshold", "relearn_s",
                "episode_gap_s", "week_min_visits", "warmup_pts", "repeat_factor", "peak_tau_pts", "peak_ref", "recur_n", "recur_bins", "season_drift", "scale_floor",
                "ext_frac", "ext_rest_pts", "seasonal",
            )
        }
        state = {
            k: getattr(self, k)
            for k in ("n", "last_ts", "level", "drift", "scale", "spread", "zbar", "peak", "ep_start", "ep_last", "ep_resid",
                      "ext_n", "ext_lo", "ext_hi", "ext_last")
        }
        state.update(
            day=list(self.day), day_n=list(self.day_n), wk=list(self.wk), wk_n=list(self.wk_n),
            flag_ts=list(self.flag_ts), flag_n=list(self.flag_n),
        )
        return {"version": _STATE_VERSION, "params": params, "state": state}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SeasonalDetector:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('version')!r}")
        det = cls(**state["params"])
        _restore(det, state["state"])
        return det

    # ---------------------------------------------------------------- scoring
    def _bins(self, ts: float) -> tuple[int, int]:
        b = int((ts % self.season_s) / self.season_s * self.bins)
        w = int((ts % (7 * 86400.0)) / (7 * 86400.0) * self.week_bins)
        return b, w

    def _season(self, b: int, w: int) -> float:
        if self.week and self.wk_n[w] >= self.week_min_visits:
            return self.wk[w]
        return self.day[b] if self.day_n[b] else 0.0

    def predict(self, ts: float) -> float:
        """The seasonal model's expected value at `ts` (level + season + drift); no side effects."""
        b, w = self._bins(ts)
        return self.level + self._season(b, w) + self.drift

    def _z(self, ts: float, value: float) -> tuple[float, float, float, int, int]:
        """(point z, sustained z, residual, day bin, week bin); no side effects."""
        # _bins and _season inlined (the hottest method of the channel: every point calls it).
        season_s = self.season_s
        b = int((ts % season_s) / season_s * self.bins)
        w = int((ts % (7 * 86400.0)) / (7 * 86400.0) * self.week_bins)
        if self.week and self.wk_n[w] >= self.week_min_visits:
            season = self.wk[w]
        else:
            season = self.day[b] if self.day_n[b] else 0.0
        r = value - (self.level + season + self.drift)
        scale = self.scale
        # A noise-free series would otherwise make any rounding-sized wobble infinitely surprising.
        fl = self.scale_floor * self.spread
        if scale < fl:
            scale = fl
        if scale <= 0.0:
            # Constant series so far: any change is infinitely surprising, which we cap.
            z = 0.0 if r == 0.0 else math.copysign(1e6, r)
        else:
            z = r / scale
        # z clipped to +-4 clip_z; written as max(-cap, min(cap, z)) does it (same result, NaN included).
        cap = self._zcap
        zc = z if z < cap else cap
        zc = zc if zc > -cap else -cap
        zs = self._keep_sustain * self.zbar + self._a_sustain * zc
        return z, zs * self._sustain_norm, r, b, w

    def score_one(self, ts: float, value: float) -> tuple[float, str]:
        """Anomaly score in [0, 1) and direction ('high'/'low') of `value` at `ts`; does not learn."""
        ze = self._ext_z(value)
        if self.n < self.warmup_pts or not self.seasonal:
            a, zz = 0.0, 0.0
        else:
            z, zs, _, _, _ = self._z(ts, value)
            zz = z if abs(z) >= abs(zs) else zs
            a = abs(zz)
            if self._peak_decay and self.peak > self.peak_ref:
                a *= self.peak_ref / self.peak
        if abs(ze) > a:
            a, zz = abs(ze), ze
        return self._z_to_score(a), (_HIGH if zz >= 0 else _LOW)

    def learn_one(self, ts: float, value: float) -> None:
        """Update level, seasonal bins, drift and scale with this point (Huber-clipped), and the range."""
        self._ext_learn(value, self._ext_z(value))
        if not self.seasonal:
            self.last_ts = ts
            return
        z, zs, r, b, w = self._z(ts, value) if self.n else (0.0, 0.0, 0.0, *self._bins(ts))
        if self._peak_decay and self.n >= self.warmup_pts:
            az = max(abs(z), abs(zs))
            pk = self.peak * self._peak_decay
            self.peak = az if az > pk else pk
        self._learn(ts, value, z, zs, r, b, w)

    def _learn(self, ts: float, value: float, z: float, zs: float, r: float, b: int, w: int) -> None:
        n = self.n
        if n == 0:
            self.level = value
            self.n = 1
            self.last_ts = ts
            return
        last = self.last_ts
        dt = ts - last if last is not None else 0.0
        if dt < 0.0:
            dt = 0.0
        self.last_ts = ts
        n += 1
        self.n = n
        scale = self.scale
        # Huber clip: a single wild point moves the baseline by at most clip_z scales.
        lim = self.clip_z * scale if scale > 0.0 else abs(r)
        rc = r if -lim <= r <= lim else (lim if r > 0 else -lim)
        self.zbar = zs / self._sustain_norm
        # Time-based rates, so irregular or sparse sampling does not change the time constants.
        if dt != self._dt:  # computed again only when the spacing changes
            self._dt = dt
            self._a_lvl = 1.0 - math.exp(-dt / self.level_tau_s)
            self._a_dft = 1.0 - math.exp(-dt / self.drift_tau_s)
        a_lvl = self._a_lvl
        drift = self.drift
        level = self.level + a_lvl * (rc + drift)
        drift += self._a_dft * rc - a_lvl * drift
        self.level = level
        self.drift = drift
        # Bins learn the offset from the slow level, not from level + drift: the fast drift would
        # otherwise explain the rhythm first and the bins would never learn its full amplitude.
        dev = value - level - self.season_drift * drift
        g = self.season_rate
        lim2 = lim * 2
        # A learned bin moves towards dev clipped to +-2 lim around it; a new one takes dev.
        day_n = self.day_n
        self.day[b] = _bin_step(self.day[b], dev, lim2, g) if day_n[b] else dev
        day_n[b] += 1
        if self.week:
            wk_n = self.wk_n
            self.wk[w] = _bin_step(self.wk[w], dev, lim2, g) if wk_n[w] else dev
            wk_n[w] += 1
        ar = abs(rc)
        self.spread += self._a_scale * 0.1 * (abs(value - level) - self.spread)
        if n <= self.warmup_pts:
            self.scale = scale + (ar - scale) / n
        else:
            self.scale = scale + self._a_scale * (ar - scale)

    def update(self, ts: float, value: float, zc: tuple[float, float, float, int, int] | None = None
               ) -> tuple[float, str, bool]:
        """Score, then learn unless flagged (score >= threshold); returns (score, direction, is_anomaly).

        `zc`: `_z(ts, value)` if the caller computed it already on this very state (it is pure).

        The returned score is the alert score: the raw score at an episode's onset, damped to
        a quarter for further flags of the same episode (is_anomaly stays True for them), or the
        range channel's score when that is larger. Only the seasonal channel's flags stop the
        seasonal model from learning; the range always learns.
        """
        ze = self._ext_z(value) if self._ext_gain else 0.0  # (no range channel: skip the call)
        self._ext_learn(value, ze)
        if self.seasonal:
            score, direction, flagged = self._update_seasonal(ts, value, zc)
        else:
            score, direction, flagged = 0.0, _HIGH, False
            self.last_ts = ts
        if ze:
            a = abs(ze)
            z2 = a * a
            se = z2 / (z2 + 36.0)
            if se > score:
                score, direction = se, (_HIGH if ze > 0 else _LOW)
            if a >= self.z_flag:
                flagged = True
        return score, direction, flagged

    def _update_seasonal(self, ts: float, value: float, zc: tuple[float, float, float, int, int] | None = None
                         ) -> tuple[float, str, bool]:
        """`update` for the seasonal channels alone (level, bins, drift, scale, episodes)."""
        if self.n < self.warmup_pts:
            if self.n:
                z, zs, r, b, w = zc if zc is not None else self._z(ts, value)
            else:
                z, zs, r = 0.0, 0.0, 0.0
                b, w = self._bins(ts)
            self._learn(ts, value, z, zs, r, b, w)
            return 0.0, _HIGH, False
        z, zs, r, b, w = zc if zc is not None else self._z(ts, value)
        zz = z if abs(z) >= abs(zs) else zs
        a = abs(zz)
        direction = _HIGH if zz >= 0 else _LOW
        if self._peak_decay:
            pk = self.peak
            # Heavy-tailed series: judge a point against the largest recent normal surprise.
            if pk > self.peak_ref:
                a *= self.peak_ref / pk
        z2 = a * a
        score = z2 / (z2 + 36.0)
        if a < self.z_flag:
            if self._peak_decay:
                az = abs(zz)
                self.peak = az if az > pk * self._peak_decay else pk * self._peak_decay
            self._learn(ts, value, z, zs, r, b, w)
            return score, direction, False
        # A flag at the same time of day on previous days is rhythm the bins have not learned
        # (they never learn from flags): after `recur_n` such days, learn it.
        nb = self.bins
        prev = max(self.flag_ts[(b + k) % nb] for k in range(-self.recur_bins, self.recur_bins + 1))
        age = ts - prev
        # Signed count: a drop today does not confirm yesterday's spike.
        sgn = 1 if r > 0 else -1
        cnt = self.flag_n[b]
        cnt = cnt + sgn if 0.5 * self.season_s < age < 1.5 * self.season_s and cnt * sgn > 0 else sgn
        self.flag_n[b] = cnt
        self.flag_ts[b] = ts
        if cnt * sgn > self.recur_n:
            self.flag_n[b] = 0
            self._learn(ts, value, z, zs, r, b, w)
            return self.repeat_factor * score, direction, False
        # Flagged: do not learn, but remember the residual in case this is the new normal.
        if self.ep_last is None or ts - self.ep_last > self.episode_gap_s:
            self.ep_start = ts
            self.ep_resid = r
            onset = True
        else:
            self.ep_resid += 0.1 * (r - self.ep_resid)
            onset = False
        self.ep_last = ts
        self.last_ts = ts
        if ts - self.ep_start >= self.relearn_s:
            # Persistent change: move the baseline to it and restart the episode clock.
            self.drift += self.ep_resid
            self.ep_start = ts
            self.zbar = 0.0
        return (score if onset else self.repeat_factor * score), direction, True


class ProfileDetector:
    """Streaming detector for a KPI with a strong daily rhythm, learned per time-of-day bin.

    Model: the expected value at a time of day is the running mean of the values seen in that
    time-of-day bin (`bin_s` wide) on earlier days, linearly interpolated towards the neighbouring
    bin; the noise is that bin's running mean absolute deviation, floored at `rel_floor` of the
    expected value. A bin first seen less than `min_days` days ago (or with fewer than
    `min_bin_pts` points) scores 0: an opening or closing step is rhythm once it was seen a day
    before, and a time of day never seen is not judged. Gaps (no point for hours) need no care.

    `noise="poisson"` is for counts (taps per minute): values are scored on the Anscombe scale
    2*sqrt(x + 3/8), where Poisson noise has unit variance whatever the level, so a quiet parking
    lot's 0 -> 4 is not a spike; a low value is never flagged while the expected count is below
    `min_expected`. `noise="gauss"` (speeds, waiting times) scores the value itself.

    Points with |z| >= `run_min_z` of one direction, each within `persist_s` of the previous, form
    a run; the run's evidence is its mean |z| times sqrt(its length, at most `run_cap`). A point is
    flagged (is_anomaly) once the run has `persist` points and evidence >= `run_threshold`, or at
    once when |z| >= `strong` * `z_threshold` (a crash-sized drop); all thresholds are divided by
    `sensitivity`. Two windows at 3.5 sd, or three at 2.9 sd, alert; a lone spike does not.

    With `weekend=True` (and a daily season), weekdays and weekend days (Saturday, Sunday in local time,
    `utc_offset_s` east of UTC) keep separate profiles: a Saturday without commuter peaks is not a
    collapse, and Sunday is judged against Saturday; the first weekend is learned, not judged.
    (Holidays are not known to it.) Off by default: most series are not tied to a known calendar
    (on NAB it costs 2.8 points); the `kpi_anomaly` rules declare it for city KPIs.

    Run points are never learned (like river's threshold filter), except a lone one below
    `z_threshold`; learned points are Huber-clipped at `clip_z` scales around the expected value.
    When a run lasts `relearn_s`, the profile shifts by its typical residual (a new normal).
    All times are epoch seconds; spacing may be irregular. The state is a few hundred numbers.
    """

    # Slots, not a __dict__: see SeasonalDetector.__slots__ (the same reason). Every attribute must be declared here.
    __slots__ = (
        # parameters and constants derived from them
        "sensitivity", "noise", "season_s", "bin_s", "cap_pts", "min_bin_pts", "min_days", "warmup_pts",
        "z_threshold", "strong", "persist", "persist_s", "run_cap", "run_min_z", "run_threshold", "rel_floor",
        "min_expected", "relearn_s", "clip_z", "step_unc", "weekend", "utc_offset_s", "cal_tau_pts", "cal_min_pts",
        "cal_max_rate", "bins", "_types", "z_flag", "z_run", "z_run_flag", "threshold", "_poisson", "_ready_s",
        # state (_STATE)
        "n", "last_ts", "mean", "dev", "cnt", "first", "run", "run_ts", "run_start", "run_resid", "run_z",
        "run_flagged", "cal_n", "cal_rate", "calm_ts",
        # per point, not state
        "evidence", "judged", "onset", "last_z", "span", "_ec_ts", "_ec", "_bin_ts", "_bin_v",
    )

    def __init__(
        self,
        *,
        sensitivity: float = 1.0,
        noise: str = "gauss",
        season_s: float = 86400.0,
        bin_s: float = 900.0,
        cap_pts: int = 40,
        min_bin_pts: int = 3,
        min_days: float = 1.0,
        warmup_pts: int = 30,
        z_threshold: float = 4.0,
        strong: float = 3.0,
        persist: int = 2,
        persist_s: float = 300.0,
        run_min_z: float = 2.0,
        run_threshold: float = 5.0,
        run_cap: int = 3,
        rel_floor: float = 0.05,
        min_expected: float = 5.0,
        relearn_s: float = 6 * 3600.0,
        clip_z: float = 2.0,
        step_unc: float = 1.0,
        weekend: bool = False,
        utc_offset_s: float = 0.0,
        cal_tau_pts: float = 500.0,
        cal_min_pts: int = 30,
        cal_max_rate: float = 0.06,
    ) -> None:
        if sensitivity <= 0:
            raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
        if not cal_tau_pts > 0 or not 0 < cal_max_rate <= 1:
            raise ValueError("need cal_tau_pts > 0 and 0 < cal_max_rate <= 1")
        if noise not in ("gauss", "poisson"):
            raise ValueError(f"noise must be 'gauss' or 'poisson', got {noise!r}")
        if not season_s > 0 or not bin_s > 0 or bin_s > season_s:
            raise ValueError(f"need 0 < bin_s <= season_s, got bin_s={bin_s}, season_s={season_s}")
        if min(cap_pts, persist, min_bin_pts, run_cap) < 1:
            raise ValueError("cap_pts, persist, min_bin_pts and run_cap must be >= 1")
        self.sensitivity = float(sensitivity)
        self.noise = noise
        self.season_s = float(season_s)
        self.bin_s = float(bin_s)
        self.cap_pts = int(cap_pts)
        self.min_bin_pts = int(min_bin_pts)
        self.min_days = float(min_days)
        self.warmup_pts = int(warmup_pts)
        self.z_threshold = float(z_threshold)
        self.strong = float(strong)
        self.persist = int(persist)
        self.persist_s = float(persist_s)
        self.run_cap = int(run_cap)
        self.run_min_z = float(run_min_z)
        self.run_threshold = float(run_threshold)
        self.rel_floor = float(rel_floor)
        self.min_expected = float(min_expected)
        self.relearn_s = float(relearn_s)
        self.clip_z = float(clip_z)
        self.step_unc = float(step_unc)
        self.weekend = bool(weekend)
        self.utc_offset_s = float(utc_offset_s)
        self.cal_tau_pts = float(cal_tau_pts)
        self.cal_min_pts = int(cal_min_pts)
        self.cal_max_rate = float(cal_max_rate)
        self.bins = max(1, int(round(self.season_s / self.bin_s)))
        # Weekdays and weekend days have profiles of their own (a Saturday has no commuter peak); a
        # weekend time of day is judged once seen on an earlier weekend day, like any other bin.
        self._types = 2 if self.weekend and self.season_s == 86400.0 else 1
        self.z_flag = self.z_threshold / self.sensitivity
        self.z_run = self.run_min_z / self.sensitivity
        self.z_run_flag = self.run_threshold / self.sensitivity
        self.threshold = SeasonalDetector._z_to_score(self.z_flag)
        self.n = 0
        self.last_ts: float | None = None
        size = self.bins * self._types      # day-type major: weekday bins, then weekend bins
        self.mean = [0.0] * size
        self.dev = [0.0] * size
        self.cnt = [0] * size
        self.first = [0.0] * size          # ts of the bin's first point (valid when cnt > 0)
        self.run = 0                       # signed length of the current run (+ high, - low)
        self.run_ts = 0.0                  # ts of the run's last point
        self.run_start = 0.0               # ts of the run's first point
        self.run_resid = 0.0               # running mean residual of the run (for relearning)
        self.run_z = 0.0                   # sum of the run's z-scores
        self.run_flagged = False           # the current run has flagged already (its onset is past)
        self.evidence = 0.0                # the last point's run evidence (0 outside a run; per point)
        self.cal_n = 0                     # judged points that fed the calibration rate
        self.cal_rate = 0.0                # running share of judged, unflagged points with |z| >= run_min_z
        self.judged = False                # the last point was judged (its time of day is learned; per point)
        self.onset = False                 # the last point was its run's first flag (not state: per point)
        self.last_z = 0.0                  # the last judged point's z (not state: per point)
        self.calm_ts: float | None = None  # ts of the last point that was not a run candidate
        self._ec_ts: float | None = None   # _expect's cache: the ts it was last asked for, and its answer
        self._ec: tuple[float, float] | None = None
        self.span = 0.0                    # how long the current surprise has lasted (ts - calm_ts; per point)
        # Per-point speed, not state: _bin's last answer (a point asks for its bin twice: expect, learn) and
        # constants of the hot path.
        self._bin_ts: float | None = None
        self._bin_v = (0, 0.0)
        self._poisson = self.noise == "poisson"
        self._ready_s = self.min_days * self.season_s - self.bin_s  # a bin judges once its first point is this old

    _PARAMS = ("sensitivity", "noise", "season_s", "bin_s", "cap_pts", "min_bin_pts", "min_days", "warmup_pts",
               "z_threshold", "strong", "persist", "persist_s", "run_min_z", "run_threshold", "run_cap",
               "rel_floor", "min_expected", "relearn_s", "clip_z", "step_unc", "weekend", "utc_offset_s",
               "cal_tau_pts", "cal_min_pts", "cal_max_rate")
    _STATE = ("n", "last_ts", "mean", "dev", "cnt", "first", "run", "run_ts", "run_start", "run_resid", "run_z",
              "run_flagged", "cal_n", "cal_rate", "calm_ts")

    def to_state(self) -> dict[str, Any]:
        """Plain dict (floats, ints, lists) that survives MessagePack/JSON; `from_state` restores it."""
        state = {k: (list(v) if isinstance(v := getattr(self, k), list) else v) for k in self._STATE}
        return {"version": _PROFILE_VERSION, "params": {k: getattr(self, k) for k in self._PARAMS}, "state": state}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProfileDetector:
        if state.get("version") != _PROFILE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('version')!r}")
        det = cls(**state["params"])
        _restore(det, state["state"])
        det._check_size()
        return det

    def _check_size(self) -> None:
        """A restored state must have this configuration's number of bins (e.g. not one from before day types)."""
        size = self.bins * self._types
        if not len(self.mean) == len(self.dev) == len(self.cnt) == len(self.first) == size:
            raise ValueError(f"profile state has {len(self.mean)} bins, this configuration {size}")

    # ---------------------------------------------------------------- scoring
    def _y(self, value: float) -> float:
        if self._poisson:
            return 2.0 * math.sqrt((0.0 if 0.0 > value else value) + 0.375)  # max(value, 0.0), NaN included
        return value

    def _bin(self, ts: float) -> tuple[int, float]:
        """(bin index, position inside the bin in [0, 1)) of `ts` in local time."""
        if ts == self._bin_ts:
            return self._bin_v
        local = ts + self.utc_offset_s
        pos = (local % self.season_s) / self.bin_s
        b = int(pos)
        last = self.bins - 1
        if last < b:  # min(int(pos), bins - 1)
            b = last
        if self._types == 2 and (int(local // 86400.0) + 3) % 7 >= 5:  # 1970-01-01 was a Thursday
            v = self.bins + b, pos - b
        else:
            v = b, pos - b
        self._bin_ts, self._bin_v = ts, v
        return v

    def _ready(self, b: int, ts: float) -> bool:
        return self.cnt[b] >= self.min_bin_pts and ts - self.first[b] >= self._ready_s

    def _expect(self, ts: float) -> tuple[float, float] | None:
        """(expected y, noise scale of y) at `ts`, or None when this time of day is not learned yet."""
        if ts == self._ec_ts:
            return self._ec  # asked again for the same point before any learning (a point asks up to 3 times)
        e = self._expect_new(ts)
        self._ec_ts, self._ec = ts, e
        return e

    def _expect_new(self, ts: float) -> tuple[float, float] | None:
        b, frac = self._bin(ts)
        cnt, first, min_pts, ready_s = self.cnt, self.first, self.min_bin_pts, self._ready_s  # _ready, inlined
        if not (cnt[b] >= min_pts and ts - first[b] >= ready_s):
            return None
        mean, dev = self.mean, self.dev
        m, d = mean[b], dev[b]
        # Towards the neighbouring bin's centre (same day type), when that bin is learned too (follows ramps).
        bins = self.bins
        k = b % bins
        nb = b - k + ((k + 1) % bins if frac >= 0.5 else (k - 1) % bins)
        step = 0.0
        if nb != b and cnt[nb] >= min_pts and ts - first[nb] >= ready_s:
            w = abs(frac - 0.5)
            step = w * (mean[nb] - m)
            m += step
            d += w * (dev[nb] - d)
        scale = 1.25 * d  # mean absolute deviation -> standard deviation (normal noise)
        if step:
            # Where the rhythm steps between bins the interpolated value is uncertain by about the
            # interpolation itself (a square wave's edge falls anywhere inside a bin).
            scale = math.hypot(scale, self.step_unc * step)
        if self._poisson and 1.0 > scale:  # max(scale, 1.0)
            scale = 1.0
        # max(scale, rel_floor * |m|, 1e-9), as conditionals (the first of equals wins, as max's does).
        fl = self.rel_floor * abs(m)
        if fl > scale:
            scale = fl
        if 1e-9 > scale:
            scale = 1e-9
        return m, scale

    def _count(self, y: float) -> float:
        return max(0.0, (y / 2.0) ** 2 - 0.375) if self.noise == "poisson" else y

    def _zr(self, ts: float, value: float) -> tuple[float, float] | None:
        """(z, residual on the scored scale), or None when this time of day is not judged yet."""
        if self.n < self.warmup_pts:
            return None
        e = self._expect(ts)
        if e is None:
            return None
        m, scale = e
        r = self._y(value) - m
        if r < 0 and self._poisson and self._count(m) < self.min_expected:
            return 0.0, r  # too few expected to call a drop
        return r / scale, r

    def _z(self, ts: float, value: float) -> float | None:
        zr = self._zr(ts, value)
        return None if zr is None else zr[0]

    def score_one(self, ts: float, value: float) -> tuple[float, str]:
        """Anomaly score in [0, 1) and direction ('high'/'low') of `value` at `ts`; does not learn."""
        z = self._z(ts, value)
        if z is None:
            return 0.0, _HIGH
        return SeasonalDetector._z_to_score(abs(z)), (_HIGH if z >= 0 else _LOW)

    def learn_one(self, ts: float, value: float) -> None:
        """Add this point to its time-of-day bin (running mean and mean absolute deviation)."""
        self._learn(ts, self._y(value), self._expect(ts) if self.n >= self.warmup_pts else None)

    def _learn(self, ts: float, y: float, e: tuple[float, float] | None) -> None:
        """`learn_one` of the scored value `y`, given `e` = `_expect(ts)` (None: not judged yet)."""
        b = self._bin(ts)[0]
        n = self.n
        if e is not None:
            # Huber clip: a point the model already judges can move its bin by at most clip_z scales
            # (min(max(y, m - lim), m + lim), as conditionals).
            m = e[0]
            lim = self.clip_z * e[1]
            lo = m - lim
            if lo > y:
                y = lo
            hi = m + lim
            if hi < y:
                y = hi
        cnt = self.cnt
        c = cnt[b]
        if c == 0:
            self.first[b] = ts
            self.mean[b] = y
            self.dev[b] = 0.0
        else:
            mean, dev = self.mean, self.dev
            c1 = c + 1
            cap = self.cap_pts
            a = 1.0 / (cap if cap < c1 else c1)
            mb = mean[b]
            dev[b] += a * (abs(y - mb) - dev[b])
            mean[b] = mb + a * (y - mb)
        cnt[b] = c + 1
        self._ec_ts = None
        self.n = n + 1
        self.last_ts = ts

    @property
    def calibrated(self) -> bool:
        """The profile explains this series: few of its judged points surprise it (`cal_max_rate`).

        Under a right model with normal noise about 5% of points have |z| >= 2; a series the time of
        day does not explain (a random walk, a drifting temperature) surprises a per-time-of-day mean
        much more often. A flagged run counts once: one incident is little evidence against the model,
        a series whose every spike flags is much.
        """
        return self.cal_n >= self.cal_min_pts and self.cal_rate <= self.cal_max_rate

    def update(self, ts: float, value: float) -> tuple[float, str, bool]:
        """Score, then learn unless part of a run; returns (score, direction, is_anomaly)."""
        # _zr and learn_one inlined: the expectation and the scored value are computed once per point.
        e = self._expect(ts) if self.n >= self.warmup_pts else None
        y = 2.0 * math.sqrt((0.0 if 0.0 > value else value) + 0.375) if self._poisson else value  # _y(value)
        prev_ts = self.last_ts
        if e is None:
            self.run = 0
            self.evidence = self.span = self.last_z = 0.0
            self.calm_ts = ts
            self.judged = self.onset = False
            self._learn(ts, y, e)
            return 0.0, _HIGH, False
        self.judged = True
        self.onset = False
        m = e[0]
        r = y - m
        if r < 0 and self._poisson and self._count(m) < self.min_expected:
            z = 0.0  # too few expected to call a drop
        else:
            z = r / e[1]
        self.last_z = z
        a = abs(z)
        sgn = 1 if z >= 0 else -1
        z2 = a * a
        score, direction = z2 / (z2 + 36.0), (_HIGH if sgn > 0 else _LOW)  # SeasonalDetector._z_to_score(a)
        if a < self.z_run:
            self.run = 0
            self.evidence = self.span = 0.0
            self.calm_ts = ts
            self._calibrate(False)
            self._learn(ts, y, e)
            return score, direction, False
        if self.run * sgn > 0 and ts - self.run_ts <= self.persist_s:
            self.run += sgn
            self.run_z += z
            self.run_resid += 0.1 * (r - self.run_resid)
        else:
            self.run, self.run_z, self.run_start, self.run_resid = sgn, z, ts, r
            self.run_flagged = False
            if prev_ts is not None:
                self.calm_ts = prev_ts
        self.run_ts = ts
        # A point stands for the time since the previous one: one 5-minute sample is 5 minutes.
        self.span = ts - self.calm_ts if self.calm_ts is not None else 0.0
        n = abs(self.run)
        # Evidence of the run: its mean z, worth sqrt(points) up to `run_cap` points.
        evidence = abs(self.run_z) / n * math.sqrt(min(n, self.run_cap))
        self.evidence = evidence
        flagged = a >= self.strong * self.z_flag or (n >= self.persist and evidence >= self.z_run_flag)
        if n == 1 and a < self.z_flag:
            self._learn(ts, y, e)  # a lone mild surprise is ordinary noise (learned, clipped)
        else:
            self.last_ts = ts  # a candidate: never learned
        if ts - self.run_start >= self.relearn_s:
            # A change this long is the new normal (a closed lane, a new timetable): move every
            # learned bin by the run's typical residual, and start over.
            self.mean = [m + self.run_resid if c else m for m, c in zip(self.mean, self.cnt)]
            self._ec_ts = None
            self.run = 0
            return score, direction, False
        if flagged:
            self.onset = not self.run_flagged
            self.run_flagged = True
        if not flagged or self.onset:
            self._calibrate(True)  # a run's later flags are one incident, counted once
        return score, direction, flagged

    def _calibrate(self, surprised: bool) -> None:
        n = self.cal_n + 1
        self.cal_n = n
        tau = self.cal_tau_pts
        a = 1.0 / (tau if tau < n else n)  # min(n, tau)
        self.cal_rate += a * ((1.0 if surprised else 0.0) - self.cal_rate)


class KpiDetector:
    """The KPI anomaly detector: one class, used by the `kpi_anomaly` alert rules and by `cityops nab-detect`.

    Four scoring channels over one series, each enabled by name in `channels` (default: art, seasonal,
    profile, the configuration both `nab-detect` and the shipped KPI rules run):

    * "art": `ArtDetector` (cityops.alerts.art), ARTime's adaptive-resonance clustering of short windows
      (published: 74.9 on the full Numenta Anomaly Benchmark), run online; the general-purpose channel;
    * "seasonal": `SeasonalDetector`'s level + daily/weekly bins + drift model (point and sustained z);
    * "range": `SeasonalDetector`'s range channel (a value beyond the range seen so far); off by default;
    * "profile": `ProfileDetector`'s per time-of-day profile learned from earlier days, alerting on
      persistent runs.
    * "cad" (opt-in, not a default): `CadDetector` (cityops.alerts.cad), CAD OSE (Smirnov 2016; published 69.9 on
      the full NAB when handed each file's range), on the range of its first `cad_range_pts` (312) points widened
      by `cad_range_margin` (1.0) of it on each side; its score times `cad_weight` (0.5) joins the decision of the
      other channels, whichever led, by the larger score (a flag from `threshold` up after `warmup_pts` points).
      Chosen by benchmarks/nab_holdout.py --cad on each half alone (both chose these); it costs ~10x the time of
      the default channels per point and its state grows with the contexts it meets, so it stays opt-in.

    With `noise="poisson"` (counts, e.g. taps per minute) every channel judges the value on the
    variance-stabilised Anscombe scale 2*sqrt(x + 3/8), where Poisson noise has unit variance.

    Which model decides is itself learned, point by point. The profile *leads* while it is
    calibrated (few of its points surprise it, see `ProfileDetector.calibrated`) and predicts the
    series at least as well as the seasonal model (running mean absolute one-step error, both on
    the judged scale, times `lead_skill`). City KPIs in 1-minute windows, with a strong daily rhythm
    and counting noise, are such series; a drifting machine temperature or a series of random spikes
    is not. While the profile leads (at a time of day it has not learned yet it sees nothing, so
    nothing is flagged there):

    * a profile run of at least `lead_persist` points is an anomaly when the seasonal model agrees on
      the direction (its z, against the largest recent surprise for heavy tails, at least
      `lead_agree_z`); the score is the run's evidence on the seasonal z scale (at least the
      threshold) at the run's first flag, `repeat_factor` of it later; no channel learns the point;
    * a seasonal-channel flag (not the range channel's: records are common while a series is young)
      stands when the profile sees the point off the same way by `lead_confirm_z` and the surprise
      has lasted `lead_confirm_s` seconds of the series' time (a point stands for the time since the
      previous one: one 5-minute sample is 5 minutes, one 1-minute window is not enough) or is
      `lead_strong_z` off (thresholds divided by `sensitivity`);
    * anything else is not an anomaly; the score is `lead_damp` of the seasonal score.

    Elsewhere the ART channel decides: an anomaly is a reported ARTime anomaly whose confidence reaches
    `art_threshold` (divided by `sensitivity`) after `warmup_pts` points; its score is the confidence mapped
    monotonically onto the common scale (`art_threshold` onto `threshold`, the seasonal z threshold's score),
    its direction whether the sample lies above its running median. Without the ART channel the seasonal and
    range channels decide there exactly as `SeasonalDetector` does. For counts a drop is not called while the
    seasonal model expects fewer than `min_expected`. Each channel learns by its own rule (`decided_by` names
    the rule that gave the last output). The ART channel's parameters (`art_learn_pts`, `art_range_margin`,
    `art_threshold`; `art_max_categories` bounds its state) were chosen with a held-out protocol on the NAB
    subset (benchmarks/nab_holdout.py); the lead rules and the seasonal/profile parameters are the ones chosen
    before on the NAB subset and the simulated city KPIs (they decide only where the profile leads).

    Parameters are flat keyword arguments. `sensitivity`, `season_s`, `warmup_pts` and `relearn_s`
    go to every enabled channel; `noise` to every channel (see above); any other `SeasonalDetector`
    argument goes to "seasonal"/"range"; any other `ProfileDetector` argument to "profile", where the
    two names both classes use with different meanings are prefixed: `profile_z_threshold`,
    `profile_clip_z`; `profile_warmup_pts` overrides `warmup_pts` for the profile channel alone; the
    `lead_*` and `skill_tau_pts` arguments are this class's own. Arguments of a channel that is not
    enabled are accepted and kept (so a rule can switch channels) but unused.
    """

    CHANNELS: tuple[str, ...] = ("art", "cad", "seasonal", "range", "profile")
    DEFAULT_CHANNELS: tuple[str, ...] = ("art", "seasonal", "profile")
    # This class's own arguments and their defaults (see the class doc).
    LEAD_DEFAULTS: dict[str, float] = {
        "lead_skill": 1.0, "lead_persist": 2, "lead_agree_z": 2.0, "lead_confirm_z": 2.5,
        "lead_confirm_s": 150.0, "lead_strong_z": 5.0, "lead_damp": 0.5, "skill_tau_pts": 500.0,
    }
    _SHARED = ("season_s", "warmup_pts", "relearn_s")
    # The ART channel's arguments (ArtDetector's, prefixed) and its flag threshold.
    _ART = {"art_learn_pts": "learn_pts", "art_range_margin": "range_margin", "art_max_categories": "max_categories"}
    ART_THRESHOLD = 0.4
    # The CAD OSE channel's arguments (CadDetector's, prefixed) and its weight (chosen by benchmarks/nab_holdout.py
    # --cad on each half alone: both halves chose these).
    _CAD = {"cad_range_pts": "range_pts", "cad_range_margin": "range_margin"}
    CAD_DEFAULTS: dict[str, float] = {"cad_range_pts": 312, "cad_range_margin": 1.0, "cad_weight": 0.5}
    _PROFILE_ONLY = ("noise", "bin_s", "cap_pts", "min_bin_pts", "min_days", "strong", "persist", "persist_s",
                     "run_min_z", "run_threshold", "run_cap", "rel_floor", "min_expected", "step_unc",
                     "weekend", "utc_offset_s", "cal_tau_pts", "cal_min_pts", "cal_max_rate")
    _PROFILE_PREFIXED = {"profile_z_threshold": "z_threshold", "profile_clip_z": "clip_z",
                         "profile_warmup_pts": "warmup_pts"}
    _SEASONAL_ONLY = ("week", "bins", "week_bins", "level_tau_s", "drift_tau_s", "season_rate", "scale_tau_pts",
                      "sustain_pts", "clip_z", "z_threshold", "episode_gap_s", "week_min_visits", "repeat_factor",
                      "peak_tau_pts", "peak_ref", "recur_n", "recur_bins", "season_drift", "scale_floor",
                      "ext_frac", "ext_rest_pts")

    def __init__(self, *, channels: Any = DEFAULT_CHANNELS, sensitivity: float = 1.0, **kw: Any) -> None:
        if isinstance(channels, str):
            channels = (channels,)
        chans = tuple(dict.fromkeys(str(c) for c in channels))
        bad = [c for c in chans if c not in self.CHANNELS]
        if bad or not chans:
            raise ValueError(f"channels must be a non-empty subset of {list(self.CHANNELS)}, got {list(channels)!r}")
        known = (set(self._SHARED) | set(self._PROFILE_ONLY) | set(self._PROFILE_PREFIXED) | set(self._SEASONAL_ONLY)
                 | set(self.LEAD_DEFAULTS) | set(self._ART) | {"art_threshold"} | set(self.CAD_DEFAULTS))
        unknown = sorted(set(kw) - known)
        if unknown:
            raise TypeError(f"unexpected detector argument(s) {unknown}")
        if not sensitivity > 0:
            raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
        self.channels = chans
        self.sensitivity = float(sensitivity)
        self.kw = dict(kw)
        # Counts are judged on the variance-stabilised (Anscombe) scale by every channel.
        self._anscombe = kw.get("noise", "gauss") == "poisson"
        self._min_expected = float(kw.get("min_expected", 5.0))
        lead = {k: float(kw.get(k, v)) for k, v in self.LEAD_DEFAULTS.items()}
        if lead["lead_skill"] <= 0 or lead["skill_tau_pts"] < 1 or lead["lead_persist"] < 1 or lead["lead_damp"] < 0:
            raise ValueError("need lead_skill > 0, skill_tau_pts >= 1, lead_persist >= 1 and lead_damp >= 0")
        self.lead_skill = lead["lead_skill"]
        self.lead_persist = int(lead["lead_persist"])
        self.lead_agree_z = lead["lead_agree_z"]
        self.lead_confirm_z = lead["lead_confirm_z"] / self.sensitivity
        self.lead_confirm_s = lead["lead_confirm_s"]
        self.lead_strong_z = lead["lead_strong_z"] / self.sensitivity
        self.lead_damp = lead["lead_damp"]
        self.skill_tau_pts = lead["skill_tau_pts"]
        s_kw = {k: v for k, v in kw.items() if k in self._SHARED or k in self._SEASONAL_ONLY}
        p_kw = {k: v for k, v in kw.items() if k in self._SHARED or k in self._PROFILE_ONLY}
        p_kw.update({self._PROFILE_PREFIXED[k]: v for k, v in kw.items() if k in self._PROFILE_PREFIXED})
        a_kw = {self._ART[k]: v for k, v in kw.items() if k in self._ART}
        self.art_threshold = float(kw.get("art_threshold", self.ART_THRESHOLD))
        if not 0 < self.art_threshold <= 1:
            raise ValueError(f"art_threshold must be in (0, 1], got {self.art_threshold}")
        # Higher sensitivity, lower threshold (as for the other channels' z thresholds).
        self._art_flag = min(1.0, self.art_threshold / self.sensitivity)
        self._art_warmup = int(kw.get("warmup_pts", 30))
        ad = ArtDetector(**a_kw)
        self._a: ArtDetector | None = ad if "art" in chans else None
        cad = {k: kw.get(k, v) for k, v in self.CAD_DEFAULTS.items()}
        self.cad_weight = float(cad.pop("cad_weight"))
        if not 0 < self.cad_weight <= 1:
            raise ValueError(f"cad_weight must be in (0, 1], got {self.cad_weight}")
        cd = CadDetector(range_pts=int(cad["cad_range_pts"]), range_margin=float(cad["cad_range_margin"]))
        self._c: CadDetector | None = cd if "cad" in chans else None
        use_s, use_r = "seasonal" in chans, "range" in chans
        if not use_r:
            s_kw["ext_frac"] = 0.0
        # Built (and so validated) even when unused: a bad argument fails at configuration time.
        sd = SeasonalDetector(sensitivity=sensitivity, seasonal=use_s, **s_kw)
        pd = ProfileDetector(sensitivity=sensitivity, **p_kw)
        self._s: SeasonalDetector | None = sd if (use_s or use_r) else None
        self._p: ProfileDetector | None = pd if "profile" in chans else None
        # One score scale for every channel: the seasonal z threshold's score (z = 5 -> 0.41) is the flag line, and
        # the ART channel's confidence is mapped onto it (`_art_score`), its `art_threshold` landing on the line.
        self.threshold = sd.threshold if (use_s or use_r or self._a is not None or self._c is not None) else pd.threshold
        self.decided_by = ""  # which channel's rule gave the last output (per point, not state)
        # Running mean absolute one-step error of each model's prediction, over points both predicted.
        self.err_s = 0.0
        self.err_p = 0.0
        self.err_n = 0
        self._cad_score = 0.0  # the CAD channel's score of the current point (per point, not state)
        self._cad_expect = 0.0

    # ------------------------------------------------------------------ state
    @property
    def n(self) -> int:
        """Points learned (by the channel that learned most)."""
        return max([d.n for d in (self._s, self._p) if d is not None] + [d.i for d in (self._a, self._c) if d is not None])

    @property
    def last_ts(self) -> float | None:
        """Time of the last point seen (None before the first)."""
        ts = [d.last_ts for d in (self._s, self._p, self._a, self._c) if d is not None and d.last_ts is not None]
        return max(ts) if ts else None

    def to_state(self) -> dict[str, Any]:
        """Plain dict (floats, ints, lists, str) that survives MessagePack/JSON; `from_state` restores it."""
        params = {"channels": list(self.channels), "sensitivity": self.sensitivity, **self.kw}
        state = {
            "seasonal": self._s.to_state()["state"] if self._s is not None else None,
            "profile": self._p.to_state()["state"] if self._p is not None else None,
            "art": self._a.to_state()["state"] if self._a is not None else None,
            "cad": self._c.to_state()["state"] if self._c is not None else None,
            "err": {"err_s": self.err_s, "err_p": self.err_p, "err_n": self.err_n},
        }
        return {"version": _KPI_VERSION, "params": params, "state": state}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KpiDetector:
        """Restore from `to_state`; also adopts a `SeasonalDetector` or `ProfileDetector` state."""
        version = state.get("version")
        if version in _KPI_VERSIONS:
            det = cls(**state["params"])
            subs = state["state"]
        elif version in (_STATE_VERSION, _PROFILE_VERSION):
            params = dict(state["params"])
            sens = params.pop("sensitivity")
            if version == _PROFILE_VERSION:
                params.update({p: params.pop(k) for p, k in cls._PROFILE_PREFIXED.items() if k in params})
                det = cls(channels=("profile",), sensitivity=sens, **params)
                subs = {"profile": state["state"]}
            else:
                chans = [c for c, on in (("seasonal", params.pop("seasonal", True)),
                                          ("range", params.get("ext_frac", 0.0) > 0)) if on]
                det = cls(channels=chans or ("seasonal",), sensitivity=sens, **params)
                subs = {"seasonal": state["state"]}
        else:
            raise ValueError(f"unsupported detector state version {version!r}")
        for d, sub in ((det._s, subs.get("seasonal")), (det._p, subs.get("profile"))):
            if d is not None and sub is not None:
                _restore(d, sub)
        if det._a is not None and subs.get("art") is not None:
            a = det._a
            params = {"learn_pts": a.learn_pts, "range_margin": a.range_margin, "max_categories": a.max_categories}
            det._a = ArtDetector.from_state({"version": ART_STATE_VERSION, "params": params, "state": subs["art"]})
        if det._c is not None and subs.get("cad") is not None:
            det._c = CadDetector.from_state({**det._c.to_state(), "state": subs["cad"]})
        if det._p is not None:
            det._p._check_size()
        err = subs.get("err")
        if isinstance(err, dict):
            det.err_s, det.err_p, det.err_n = float(err["err_s"]), float(err["err_p"]), int(err["err_n"])
        elif err:  # states written before the skill tracker's fields were named: [err_s, err_p, err_n]
            det.err_s, det.err_p, det.err_n = float(err[0]), float(err[1]), int(err[2])
        return det

    # ---------------------------------------------------------------- scoring
    def score_one(self, ts: float, value: float) -> tuple[float, str]:
        """Largest channel score in [0, 1) and its direction; does not learn (the profile channel's raw score)."""
        best, direction = 0.0, _HIGH
        for d in (self._s, self._p):
            if d is not None:
                sc, dr = d.score_one(ts, self._ys(value) if d is self._s else value)
                if sc > best:
                    best, direction = sc, dr
        return best, direction

    def learn_one(self, ts: float, value: float) -> None:
        """Every enabled channel learns this point."""
        if self._s is not None:
            self._s.learn_one(ts, self._ys(value))
        if self._p is not None:
            self._p.learn_one(ts, value)

    def _few_expected(self, ts: float) -> bool:
        """Counts: the seasonal model expects fewer than `min_expected` at `ts` (a drop cannot be called)."""
        s = self._s
        if not self._anscombe or s is None or not s.seasonal or s.n == 0:
            return False
        y = s.predict(ts)
        return max(0.0, (y / 2.0) ** 2 - 0.375) < self._min_expected

    def _ys(self, value: float) -> float:
        """The value as the seasonal and range channels see it."""
        return 2.0 * math.sqrt((0.0 if 0.0 > value else value) + 0.375) if self._anscombe else value  # max(value, 0.0)

    def _art(self, ts: float, yv: float) -> tuple[float, str, bool]:
        """The ART channel's (score, direction, is_anomaly) for this point (it learns every point by its own rule)."""
        c = self._a.update(ts, yv)  # type: ignore[union-attr]
        if c <= 0.0:
            return _ART_QUIET
        return self._art_decide(ts, c)

    def _art_decide(self, ts: float, c: float) -> tuple[float, str, bool]:
        """`_art` for an ART confidence `c` > 0 (a reported anomaly)."""
        a = self._a
        d = _HIGH if a.high else _LOW  # type: ignore[union-attr]
        flag = c >= self._art_flag and a.i > self._art_warmup  # type: ignore[union-attr]
        if flag and d == _LOW and self._few_expected(ts):
            flag = False
        # Piecewise linear and monotone: [0, art_flag] -> [0, threshold], [art_flag, 1] -> [threshold, 1].
        thr, fl = self.threshold, self._art_flag
        sc = c * thr / fl if c < fl else thr + (c - fl) * (1.0 - thr) / (1.0 - fl) if fl < 1.0 else thr
        return sc, d, flag

    def _cad(self, ts: float, yv: float, res: tuple[float, str, bool]) -> tuple[float, str, bool]:
        """`res` (the other channels' decision, whichever led) combined with the CAD OSE channel's: the larger score.

        The CAD score c (learned from every point, before this call) counts as `cad_weight` * c on the common scale;
        it is a flag from `threshold` up, after `warmup_pts` points; its direction is the point's side of the
        seasonal model's expectation (high without a seasonal model).
        """
        c = self._cad_score
        sc = self.cad_weight * c
        if sc <= 0.0:
            return res
        s = self._s
        d = _HIGH if s is None or not s.seasonal or s.n == 0 or yv >= self._cad_expect else _LOW
        flag = sc >= self.threshold and self._c.i > self._art_warmup  # type: ignore[union-attr]
        if flag and d == _LOW and self._few_expected(ts):
            flag = False
        if sc > res[0]:
            self.decided_by = "cad"
            return sc, d, res[2] or flag
        return res[0], res[1], res[2] or flag

    def update(self, ts: float, value: float) -> tuple[float, str, bool]:
        """Score with every channel, each learning by its own rule; returns (score, direction, is_anomaly)."""
        res = self._update(ts, value)
        if self._c is not None:
            return self._cad(ts, self._ys(value), res)
        return res

    def _agrees(self, s: SeasonalDetector, zc: tuple[float, float, float, int, int] | None, direction: str) -> bool:
        """The seasonal model sees this point off in `direction` by `lead_agree_z` (its z, or its sustained z when
        larger; against its largest recent surprise for heavy tails; 0 before its second point)."""
        zs = 0.0
        if s.n >= 2 and zc is not None:
            z1, z2 = zc[0], zc[1]
            zs = z1 if abs(z1) >= abs(z2) else z2
            if s._peak_decay and s.peak > s.peak_ref:
                zs *= s.peak_ref / s.peak  # a heavy-tailed series: against its largest recent surprise
        return zs >= self.lead_agree_z if direction == _HIGH else zs <= -self.lead_agree_z

    def _update(self, ts: float, value: float) -> tuple[float, str, bool]:
        s, p = self._s, self._p
        yv = 2.0 * math.sqrt((0.0 if 0.0 > value else value) + 0.375) if self._anscombe else value  # _ys(value)
        if self._c is not None:
            self._cad_score = self._c.update(ts, yv)
            if self._cad_score > 0.0 and s is not None and s.seasonal and s.n:
                self._cad_expect = s.predict(ts)  # before the seasonal model learns this point
        ad = self._a
        if ad is None:
            art = None
        else:  # self._art(ts, yv), its common case inlined: no anomaly reported
            c = ad.update(ts, yv)
            art = _ART_QUIET if c <= 0.0 else self._art_decide(ts, c)
        self.decided_by = "art" if art is not None else "seasonal" if s is not None else "cad" if p is None else "profile"
        if p is None:
            if s is None:
                return art if art is not None else (0.0, _HIGH, False)
            few = self._few_expected(ts)
            ss, sd, sf = s.update(ts, yv)
            return art if art is not None else (ss, sd, sf and not (few and sd == _LOW))
        # The seasonal model's z of this point, computed once (pure): the skill, the lead rules and its update use it.
        zc = s._z(ts, yv) if s is not None and s.seasonal and s.n >= 1 else None
        if zc is not None and s.n >= 2 and p.n >= p.warmup_pts:  # type: ignore[union-attr]
            e = p._expect(ts)
            if e is not None:
                n = self.err_n + 1
                self.err_n = n
                tau = self.skill_tau_pts
                a = 1.0 / (tau if tau < n else n)  # min(n, tau)
                # Both models' one-step errors on the scale they judge (yv: the profile's y, also for counts);
                # the seasonal one is its residual.
                self.err_s += a * (abs(zc[2]) - self.err_s)
                self.err_p += a * (abs(yv - e[0]) - self.err_p)
        ps, pd, pf = p.update(ts, value)
        if s is None:
            if art is None:
                return ps, pd, pf
            # Profile + ART: the profile decides where it is calibrated, the ART channel elsewhere.
            if p.calibrated:
                self.decided_by = "profile"
                return ps, pd, pf
            return art
        if not s.seasonal:
            # Profile + range only: no seasonal model to compare with, so either channel's flag stands.
            ss, sd, sf = s.update(ts, yv)
            if pf and (ps > ss or not sf):
                return max(ps, ss), pd, True
            return ss, sd, sf or pf
        lead = p.calibrated and self.err_p <= self.lead_skill * self.err_s
        if lead:
            self.decided_by = "profile"
        # Where the profile leads, its persistent runs decide (the seasonal model agreeing on the direction).
        if lead and pf and abs(p.run) >= self.lead_persist and self._agrees(s, zc, pd):
            # Flagged: the seasonal model must not learn it either (it may still be warming up,
            # when it learns every point); the range learns every point, as always.
            s._ext_learn(yv, s._ext_z(yv))
            s.last_ts = ts
            z = max(p.evidence, s.z_flag)
            sc = SeasonalDetector._z_to_score(z)
            return (sc if p.onset else s.repeat_factor * sc), pd, True
        few = self._anscombe and self._few_expected(ts)  # (the call returns False at once for other series)
        ss, sd, sf = s.update(ts, yv, zc)
        if few and sd == _LOW:
            sf = False  # too few counts expected to call a drop (the profile's `min_expected`, for this channel too)
        if not lead:
            return art if art is not None else (ss, sd, sf)
        if (sf and s.ep_last == ts  # the seasonal channel's own flag, not the range channel's
                and (p.last_z >= self.lead_confirm_z if sd == _HIGH else p.last_z <= -self.lead_confirm_z)
                and (p.span >= self.lead_confirm_s or abs(p.last_z) >= self.lead_strong_z)):
            return ss, sd, True
        return self.lead_damp * ss, sd, False


def detector_from_state(state: dict[str, Any]) -> KpiDetector | SeasonalDetector | ProfileDetector:
    """Restore any detector from its `to_state` dict (the version tells which)."""
    if state.get("version") in _KPI_VERSIONS:
        return KpiDetector.from_state(state)
    if state.get("version") == _PROFILE_VERSION:
        return ProfileDetector.from_state(state)
    return SeasonalDetector.from_state(state)
