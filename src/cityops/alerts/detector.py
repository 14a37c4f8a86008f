"""Online seasonal anomaly detector for one KPI series: robust daily/weekly baseline, scored one point at a time."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SeasonalDetector"]

_STATE_VERSION = 1
_HIGH = "high"
_LOW = "low"


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
    Defaults were tuned once, for all files together, on the NAB subset in /work/shared/data/nab.

    All times are epoch seconds; spacing may be irregular.
    """

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
        self._peak_decay = math.exp(-1.0 / self.peak_tau_pts) if self.peak_tau_pts > 0 else 0.0
        # Higher sensitivity lowers the z needed to flag; the score maps z to [0, 1).
        self.z_flag = self.z_threshold / self.sensitivity
        self.threshold = self._z_to_score(self.z_flag)
        self._a_scale = 1.0 / self.scale_tau_pts
        self._a_sustain = 1.0 / self.sustain_pts
        # Normalises the averaged z so that pure noise has unit variance in both channels.
        self._sustain_norm = math.sqrt((2.0 - self._a_sustain) / self._a_sustain)
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

    @staticmethod
    def _z_to_score(z: float) -> float:
        # Smooth, monotone, saturating: z = 6 maps to 0.5, z = 12 to 0.8.
        z2 = z * z
        return z2 / (z2 + 36.0)

    def to_state(self) -> dict[str, Any]:
        """Plain dict (floats, ints, lists) that survives pickling/JSON; `from_state` restores it."""
        params = {
            k: getattr(self, k)
            for k in (
                "sensitivity", "season_s", "week", "bins", "week_bins", "level_tau_s", "drift_tau_s",
                "season_rate", "scale_tau_pts", "sustain_pts", "clip_z", "z_threshold", "relearn_s",
                "episode_gap_s", "week_min_visits", "warmup_pts", "repeat_factor", "peak_tau_pts", "peak_ref", "recur_n", "recur_bins", "season_drift", "scale_floor",
            )
        }
        state = {
            k: getattr(self, k)
            for k in ("n", "last_ts", "level", "drift", "scale", "spread", "zbar", "peak", "ep_start", "ep_last", "ep_resid")
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
        for k, v in state["state"].items():
            setattr(det, k, list(v) if isinstance(v, list) else v)
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

    def _z(self, ts: float, value: float) -> tuple[float, float, float, int, int]:
        """(point z, sustained z, residual, day bin, week bin); no side effects."""
        b, w = self._bins(ts)
        r = value - (self.level + self._season(b, w) + self.drift)
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
        zs = ((1.0 - self._a_sustain) * self.zbar + self._a_sustain * max(-self.clip_z * 4, min(self.clip_z * 4, z)))
        return z, zs * self._sustain_norm, r, b, w

    def score_one(self, ts: float, value: float) -> tuple[float, str]:
        """Anomaly score in [0, 1) and direction ('high'/'low') of `value` at `ts`; does not learn."""
        if self.n < self.warmup_pts:
            return 0.0, _HIGH
        z, zs, _, _, _ = self._z(ts, value)
        zz = z if abs(z) >= abs(zs) else zs
        a = abs(zz)
        if self._peak_decay and self.peak > self.peak_ref:
            a *= self.peak_ref / self.peak
        return self._z_to_score(a), (_HIGH if zz >= 0 else _LOW)

    def learn_one(self, ts: float, value: float) -> None:
        """Update level, seasonal bins, drift and scale with this point (Huber-clipped)."""
        z, zs, r, b, w = self._z(ts, value) if self.n else (0.0, 0.0, 0.0, *self._bins(ts))
        if self._peak_decay and self.n >= self.warmup_pts:
            az = max(abs(z), abs(zs))
            pk = self.peak * self._peak_decay
            self.peak = az if az > pk else pk
        self._learn(ts, value, z, zs, r, b, w)

    def _learn(self, ts: float, value: float, z: float, zs: float, r: float, b: int, w: int) -> None:
        if self.n == 0:
            self.level = value
            self.n = 1
            self.last_ts = ts
            return
        dt = ts - self.last_ts if self.last_ts is not None else 0.0
        if dt < 0.0:
            dt = 0.0
        self.last_ts = ts
        self.n += 1
        scale = self.scale
        # Huber clip: a single wild point moves the baseline by at most clip_z scales.
        lim = self.clip_z * scale if scale > 0.0 else abs(r)
        rc = r if -lim <= r <= lim else (lim if r > 0 else -lim)
        self.zbar = zs / self._sustain_norm
        # Time-based rates, so irregular or sparse sampling does not change the time constants.
        a_lvl = 1.0 - math.exp(-dt / self.level_tau_s)
        a_dft = 1.0 - math.exp(-dt / self.drift_tau_s)
        self.level += a_lvl * (rc + self.drift)
        self.drift += a_dft * rc - a_lvl * self.drift
        # Bins learn the offset from the slow level, not from level + drift: the fast drift would
        # otherwise explain the rhythm first and the bins would never learn its full amplitude.
        dev = value - self.level - self.season_drift * self.drift
        g = self.season_rate
        d_old = self.day[b] if self.day_n[b] else dev
        self.day[b] = d_old + g * (max(d_old - lim * 2, min(d_old + lim * 2, dev)) - d_old) if self.day_n[b] else dev
        self.day_n[b] += 1
        if self.week:
            w_old = self.wk[w] if self.wk_n[w] else dev
            self.wk[w] = w_old + g * (max(w_old - lim * 2, min(w_old + lim * 2, dev)) - w_old) if self.wk_n[w] else dev
            self.wk_n[w] += 1
        ar = abs(rc)
        self.spread += self._a_scale * 0.1 * (abs(value - self.level) - self.spread)
        if self.n <= self.warmup_pts:
            self.scale += (ar - self.scale) / self.n
        else:
            self.scale += self._a_scale * (ar - self.scale)

    def update(self, ts: float, value: float) -> tuple[float, str, bool]:
        """Score, then learn unless flagged (score >= threshold); returns (score, direction, is_anomaly).

        The returned score is the alert score: the raw score at an episode's onset, damped to
        a quarter for further flags of the same episode (is_anomaly stays True for them).
        """
        if self.n < self.warmup_pts:
            if self.n:
                z, zs, r, b, w = self._z(ts, value)
            else:
                z, zs, r = 0.0, 0.0, 0.0
                b, w = self._bins(ts)
            self._learn(ts, value, z, zs, r, b, w)
            return 0.0, _HIGH, False
        z, zs, r, b, w = self._z(ts, value)
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
