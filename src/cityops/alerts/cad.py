"""Streaming CAD OSE: the Contextual Anomaly Detector, open-source edition (Smirnov 2016), one series, point by point.

Source: Mikhail Smirnov, "Contextual Anomaly Detector - Open Source Edition" (2016, github.com/smirmik/CAD; the NAB
detector `context_ose`, AGPL-3.0). Its published result on the full 58-series Numenta Anomaly Benchmark: standard
69.9, reward_low_FP 67.0, reward_low_FN 73.2, with the parameters kept here. Written here from its description; no
code is copied.

What it does, point by point:

1. Encode: the value is placed on one of 2**`value_bits` (8) levels of its range; each bit of the level is a
   *fact* (bit number, bit value), so a point is 3 facts.
2. Contexts: a context is a pair (left facts, right facts): the left facts are the previous point's facts plus
   the *active neurons* of the previous step (contexts that fired, as facts of their own); the right facts are
   what followed. Every new (previous left facts, current facts) pair is remembered as a zero-level context;
   where a new zero-level context appears, partial overlaps of remembered zero-level contexts with the present
   (at most `max_left_facts` left facts) are remembered as new contexts too.
3. Each context counts how often its left part was present (selected), how many of its right facts then came,
   and how often all of them came (it was active). Up to `max_active_neurons` active contexts (most often
   active first) become the next step's neuron facts; the contexts whose left part is present and whose
   right part came most reliably predict the next point's facts.
4. Score: 0 when every fact of the point was predicted; otherwise (1 - share of the selected contexts that
   were active + share of the potential new contexts that were new) / 2. A score is reported only if no score
   of the last `rest_pts` points reached `base_threshold` (one alert per episode); the scores of the first
   `rest_pts` points are not reported.

The published detector is handed each file's minimum and maximum (NAB gives every detector the file's range)
and rests `probationary period / 5` points (150 on a file of 5,000 points or more). Given the same (`min_value`,
`max_value`, `rest_pts`), this implementation reproduces the published per-file NAB results (results/contextOSE in
numenta/NAB, standard profile at the published threshold) on 18 of the 25 files in ../shared/data/nab;
the others differ by which of equally active contexts become neurons (the published run broke those ties with
Python 2 hashes and dict order). A stream has no file range, so without `min_value`/`max_value` the range is
either the range seen so far, the current point included (a new record lands on the top or bottom level; later
points' levels are relative to the widened range), or, with `range_pts`, the range of the first `range_pts`
points widened by `range_margin` of it on each side and then fixed (later values clipped to it). The range is
what the method is most sensitive to: with the file's range the large anomalies squeeze the normal values into a
few levels; see benchmarks/nab_holdout.py --cad for the streaming choices measured. Two literal details of the
published code are kept because its score was measured with them: context 0 (the first one ever made) is left
out of the counting in steps that make no new zero-level context, and ties in "most often active" are broken by
the hash of the context's facts (Python's tuple hash: stable across runs for integers).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

__all__ = ["CadDetector", "CAD_STATE_VERSION"]

CAD_STATE_VERSION = "cad-1"

_first = itemgetter(0)
_SENSOR = 65536      # sensor facts: _SENSOR + 2 * bit number + bit value (the published encoding)
_NEURON = 2 ** 31    # neuron facts: _NEURON + context id


class CadDetector:
    """CAD OSE over one series: `update(ts, value)` returns the anomaly score in [0, 1] of that point.

    Parameters (the published ones are the defaults):

    * `base_threshold` (0.75): a score of at least this starts a rest: the next `rest_pts` scores are reported as 0.
    * `rest_pts` (150): the rest, in points; published as NAB's probationary period / 5, which is 150 for every
      file of 5,000 points or more (NAB's probation is 15 % of a file, at most 750 points). The first `rest_pts`
      points are also reported as 0 (the detector starts resting).
    * `max_left_facts` (7, published `maxLeftSemiContextsLenght`): the most left facts a context derived from an
      overlap may have; bounds how many contexts a novel step creates.
    * `max_active_neurons` (15, `maxActiveNeuronsNum`): active contexts fed back as facts of the next step.
    * `value_bits` (3, `numNormValueBits`): the value is one of 2**value_bits levels of its range.
    * `min_value`, `max_value` (None): a fixed range (as NAB hands the published detector); None: learned from the
      stream (see the module doc). A value outside a fixed range is clipped to it.
    * `range_pts` (None): with no fixed range, the range is the first `range_pts` points' (then fixed); None: the
      range seen so far, always widening.
    * `range_margin` (0.0): the learned range is widened by this fraction of it on each side when it is fixed.

    Time stamps are not used (the method is order-based); `update` takes one for the channel interface.
    State grows with the number of distinct contexts met (repetitive series stop growing; `n_contexts`).
    """

    def __init__(
        self,
        *,
        base_threshold: float = 0.75,
        rest_pts: int = 150,
        max_left_facts: int = 7,
        max_active_neurons: int = 15,
        value_bits: int = 3,
        min_value: float | None = None,
        max_value: float | None = None,
        range_pts: int | None = None,
        range_margin: float = 0.0,
    ) -> None:
        if not 0.0 < base_threshold <= 1.0:
            raise ValueError(f"base_threshold must be in (0, 1], got {base_threshold}")
        if rest_pts < 0 or max_left_facts < 1 or max_active_neurons < 1 or not 1 <= value_bits <= 16:
            raise ValueError("need rest_pts >= 0, max_left_facts >= 1, max_active_neurons >= 1, 1 <= value_bits <= 16")
        if (min_value is None) != (max_value is None) or (min_value is not None and max_value < min_value):  # type: ignore[operator]
            raise ValueError("min_value and max_value: both or neither, min_value <= max_value")
        if (range_pts is not None and range_pts < 1) or range_margin < 0:
            raise ValueError("need range_pts >= 1 (or None) and range_margin >= 0")
        self.base_threshold = float(base_threshold)
        self.rest_pts = int(rest_pts)
        self.max_left_facts = int(max_left_facts)
        self.max_active_neurons = int(max_active_neurons)
        self.value_bits = int(value_bits)
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)
        self.range_pts = None if range_pts is None else int(range_pts)
        self.range_margin = float(range_margin)
        self._top = (1 << self.value_bits) - 1
        # The facts of each level, sorted (bit 0 first): the published encoding of a level's binary digits.
        self._level_facts = [
            tuple(_SENSOR + 2 * b + ((lvl >> b) & 1) for b in range(self.value_bits)) for lvl in range(self._top + 1)
        ]
        self._reset()

    def _reset(self) -> None:
        self.i = 0                      # points seen
        self.last_ts: float | None = None
        self.lo = self.min_value        # the range the levels divide (fixed, or seen so far)
        self.hi = self.max_value
        # Left semi-contexts (a facts tuple shared by contexts): id by facts, their facts as a set, their contexts by
        # right semi-context id, the zero-level ones apart (the only ones a partial overlap derives new contexts from).
        # Two indexes instead of the published scan over every semi-context: by its largest fact (a semi-context
        # lies within the left facts only if its largest fact does: the candidates for a full match), and, for the
        # ones with a zero-level context, by every fact (for the overlaps, needed only in steps that make a new
        # zero-level context). Same outputs, far less work per point.
        self._lkey: dict[tuple[int, ...], int] = {}
        self._lset: list[frozenset[int]] = []
        self._lctx: list[dict[int, int]] = []
        self._lzero: list[dict[int, int]] = []
        self._anchor: dict[int, list[int]] = {}   # largest fact -> left semi-contexts
        self._zpost: dict[int, list[int]] = {}    # fact -> left semi-contexts with a zero-level context
        # Right semi-contexts likewise.
        self._rkey: dict[tuple[int, ...], int] = {}
        self._rlen: list[int] = []
        self._rfacts: dict[int, list[int]] = {}
        self._rtup: list[tuple[int, ...]] = []
        # Contexts, column-wise: times selected (weighted by right size), right facts that came, times active,
        # zero-level flag, right semi-context id, tie-break key.
        self._c_sel: list[int] = []
        self._c_hit: list[int] = []
        self._c_act: list[int] = []
        self._c_zero: list[bool] = []
        self._c_right: list[int] = []
        self._c_tie: list[tuple[int, int]] = []
        self._new_ctx = 0               # the published `newContextID`, False (== 0) when no new context
        self._left: tuple[int, ...] = ()  # this step's left facts (current facts + active neurons)
        self._left_set: frozenset[int] = frozenset()
        self._full: list[int] = []        # left semi-contexts lying within `_left`
        self._predicted: frozenset[int] = frozenset()
        # The published rest looks back over the last `rest_pts` scores, seeded with a 1.0: points up to
        # `_rest_until` (1-based) report 0.
        self._rest_until = self.rest_pts

    @property
    def n_contexts(self) -> int:
        """Contexts remembered so far (the state grows with them)."""
        return len(self._c_sel)

    # ------------------------------------------------------------------- state
    _PARAMS = ("base_threshold", "rest_pts", "max_left_facts", "max_active_neurons", "value_bits", "min_value",
               "max_value", "range_pts", "range_margin")

    def to_state(self) -> dict[str, Any]:
        """Plain dict (numbers, lists, None) that survives MessagePack/JSON; `from_state` restores it.

        The contexts: each left semi-context's facts, its contexts and its zero-level ones as [right id, context id]
        pairs, each right semi-context's facts, the per-context counters; the indexes are rebuilt on restore.
        """
        ctx = [[[rid, cid] for rid, cid in c.items()] for c in self._lctx]
        zero = [[[rid, cid] for rid, cid in z.items()] for z in self._lzero]
        st = {
            "i": self.i, "last_ts": self.last_ts, "lo": self.lo, "hi": self.hi, "rest_until": self._rest_until,
            "new_ctx": self._new_ctx, "left": list(self._left), "full": list(self._full),
            "predicted": sorted(self._predicted), "lsets": [sorted(x) for x in self._lset], "lctx": ctx, "lzero": zero,
            "rights": [list(r) for r in self._rtup], "c_sel": list(self._c_sel), "c_hit": list(self._c_hit),
            "c_act": list(self._c_act),
        }
        return {"version": CAD_STATE_VERSION, "params": {k: getattr(self, k) for k in self._PARAMS}, "state": st}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CadDetector:
        if state.get("version") != CAD_STATE_VERSION:
            raise ValueError(f"unsupported CAD detector state version {state.get('version')!r}")
        det = cls(**state["params"])
        st = state["state"]
        n = len(st["c_sel"])
        det._c_zero = [False] * n
        det._c_right = [0] * n
        det._c_tie = [(0, 0)] * n
        for r in st["rights"]:
            det._right_id(tuple(r))
        for facts, ctxs, zeros in zip(st["lsets"], st["lctx"], st["lzero"]):
            left = tuple(facts)
            lid = det._left_id(left)
            for rid, cid in ctxs:
                det._lctx[lid][rid] = cid
                det._c_right[cid] = rid
                det._c_tie[cid] = (hash(left), hash(det._rtup[rid]))
            for rid, cid in zeros:
                det._c_zero[cid] = True
                det._mark_zero(lid, rid, cid, left)
        det._c_sel, det._c_hit, det._c_act = list(st["c_sel"]), list(st["c_hit"]), list(st["c_act"])
        det.i, det.last_ts, det.lo, det.hi = int(st["i"]), st["last_ts"], st["lo"], st["hi"]
        det._rest_until, det._new_ctx = int(st["rest_until"]), int(st["new_ctx"])
        det._left = tuple(st["left"])
        det._left_set = frozenset(det._left)
        det._full = list(st["full"])
        det._predicted = frozenset(st["predicted"])
        return det

    # ------------------------------------------------------------------ memory
    def _context(self, left: tuple[int, ...], right: tuple[int, ...], zero: bool) -> bool:
        """Remember context (left, right) unless known; True if it is new. A known one is marked zero-level if `zero`."""
        lid = self._left_id(left)
        rid = self._right_id(right)
        ctxs = self._lctx[lid]
        cid = ctxs.get(rid)
        if cid is None:
            cid = ctxs[rid] = len(self._c_sel)
            self._c_sel.append(0)
            self._c_hit.append(0)
            self._c_act.append(0)
            self._c_zero.append(zero)
            self._c_right.append(rid)
            self._c_tie.append((hash(left), hash(right)))
            if zero:
                self._mark_zero(lid, rid, cid, left)
                self._new_ctx = cid
            return True
        if zero and not self._c_zero[cid]:
            self._c_zero[cid] = True
            self._mark_zero(lid, rid, cid, left)
        return False

    def _left_id(self, left: tuple[int, ...]) -> int:
        lid = self._lkey.get(left)
        if lid is None:
            lid = self._lkey[left] = len(self._lset)
            self._lset.append(frozenset(left))
            self._lctx.append({})
            self._lzero.append({})
            p = self._anchor.get(left[-1])
            if p is None:
                self._anchor[left[-1]] = [lid]
            else:
                p.append(lid)
        return lid

    def _right_id(self, right: tuple[int, ...]) -> int:
        rid = self._rkey.get(right)
        if rid is None:
            rid = self._rkey[right] = len(self._rlen)
            self._rlen.append(len(right))
            self._rtup.append(right)
            rf = self._rfacts
            for f in right:
                p = rf.get(f)
                if p is None:
                    rf[f] = [rid]
                else:
                    p.append(rid)
        return rid

    def _mark_zero(self, lid: int, rid: int, cid: int, left: tuple[int, ...]) -> None:
        zs = self._lzero[lid]
        if not zs:
            zp = self._zpost
            for f in left:
                p = zp.get(f)
                if p is None:
                    zp[f] = [lid]
                else:
                    p.append(lid)
        zs[rid] = cid

    # ------------------------------------------------------------------ one step
    def _step(self, facts: tuple[int, ...]) -> tuple[float, float]:
        """Learn this point's facts; returns (share of selected contexts active, share of potential contexts new)."""
        uniq: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        left = self._left
        new_flag = False
        if left:
            uniq.add((left, facts))
            new_flag = self._context(left, facts, True)
        # Which right semi-contexts the present facts overlap, and with which facts.
        rmatch: dict[int, list[int]] = {}
        rf = self._rfacts
        for f in facts:
            for rid in rf.get(f, ()):
                m = rmatch.get(rid)
                if m is None:
                    rmatch[rid] = [f]
                else:
                    m.append(f)
        # Contexts whose left part was present at the previous step: count them; derive potential new contexts.
        new_id = self._new_ctx
        lctx, rlen = self._lctx, self._rlen
        c_sel, c_hit, c_act, c_zero = self._c_sel, self._c_hit, self._c_act, self._c_zero
        maxl = self.max_left_facts
        n_sel = 0
        active: list[int] = []
        pot: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
        lset = self._lset
        for lid in self._full:
            ctxs = lctx[lid]
            n_sel += len(ctxs)
            for rid, cid in ctxs.items():
                if cid == new_id:
                    n_sel -= 1
                    continue
                rl = rlen[rid]
                c_sel[cid] += rl
                rm = rmatch.get(rid)
                if rm is not None:
                    nr = len(rm)
                    c_hit[cid] += nr
                    if nr == rl:
                        c_act[cid] += 1
                        active.append(cid)
                    elif new_flag and c_zero[cid] and len(lset[lid]) <= maxl:
                        pot.append((lid, tuple(sorted(lset[lid])), tuple(rm)))
        if new_flag and left:
            # Zero-level contexts whose left part overlapped the previous left facts in part (at most maxl facts).
            cnt: dict[int, int] = {}
            zp = self._zpost
            for f in left:
                for lid in zp.get(f, ()):
                    cnt[lid] = cnt.get(lid, 0) + 1
            lzero, prev = self._lzero, self._left_set
            for lid, n in cnt.items():
                if n <= maxl and n != len(lset[lid]):
                    lt = None
                    for rid, cid in lzero[lid].items():
                        if cid != new_id:
                            rm = rmatch.get(rid)
                            if rm is not None:
                                if lt is None:
                                    lt = tuple(sorted(lset[lid] & prev))
                                pot.append((lid, lt, tuple(rm)))
        # In the order the semi-contexts were made (as the published scan meets them): the new contexts' ids
        # do not depend on how the indexes were built (restored states continue exactly).
        pot.sort(key=_first)
        self._new_ctx = 0
        uniq.update((lt, rt) for _, lt, rt in pot)
        sel_active = len(active) / n_sel if n_sel else 0.0
        # The most often active contexts become facts of the next step.
        if len(active) > self.max_active_neurons:
            tie = self._c_tie
            active.sort(key=lambda c: (c_act[c], tie[c]))
            active = active[-self.max_active_neurons:]
        active.sort()
        left = facts + tuple(_NEURON + c for c in active)
        self._left = left
        n_new = 0
        for _, lf_, rf_ in pot:
            if self._context(lf_, rf_, False):
                n_new += 1
        # Left semi-contexts lying within the new left facts: their contexts predict the next facts.
        left_set = frozenset(left)
        self._left_set = left_set
        full: list[int] = []
        anchor = self._anchor
        for f in left:
            for lid in anchor.get(f, ()):
                if lset[lid] <= left_set:
                    full.append(lid)
        full.sort()
        self._full = full
        best = 0.0
        pred: list[int] = []
        for lid in full:
            for rid, cid in lctx[lid].items():
                s = c_sel[cid]
                w = c_hit[cid] / s if s > 0 else 0.0
                if w > best:
                    best = w
                    pred = [rid]
                elif w == best:
                    pred.append(rid)
        rt = self._rtup
        self._predicted = frozenset(f for rid in set(pred) for f in rt[rid])
        if new_flag:
            n_new += 1
        added = n_new / len(uniq) if new_flag and uniq else 0.0
        return sel_active, added

    def _level(self, value: float) -> int:
        lo, hi = self.lo, self.hi
        if self.min_value is None and (self.range_pts is None or self.i <= self.range_pts):
            if lo is None or value < lo:
                lo = self.lo = value
            if hi is None or value > hi:
                hi = self.hi = value
            if self.i == self.range_pts and self.range_margin:
                w = self.range_margin * (hi - lo)
                lo = self.lo = lo - w
                hi = self.hi = hi + w
        rng = hi - lo  # type: ignore[operator]
        step = (rng if rng > 0.0 else float(self._top)) / self._top
        k = int((value - lo) / step)  # type: ignore[operator]
        return 0 if k < 0 else self._top if k > self._top else k

    def update(self, ts: float, value: float) -> float:
        """Score of `value` (the point at `ts`), then learn it: in [0, 1], 0 while resting (see the class doc)."""
        self.last_ts = ts
        self.i += 1
        facts = self._level_facts[self._level(value)]
        surprised = not self._predicted.issuperset(facts)
        sel_active, added = self._step(facts)
        score = (1.0 - sel_active + added) / 2.0 if surprised else 0.0
        out = score if self.i > self._rest_until else 0.0
        if score >= self.base_threshold:
            self._rest_until = self.i + self.rest_pts
        return out
