"""Event-time clocks: how each clock of the engine advances, so that one device's wrong clock cannot move them.

Every clock is event time in epoch seconds (UTC) and never goes back. From the innermost out:

* **Partition clock** (one per topic partition, ``PartitionClock`` + ``Engine.partition_wm``): the event time up
  to which the partition has been read. It is a *robust maximum* of the event times accepted on the partition:

  - the first event of a partition sets it (nothing to compare it with);
  - an event at most ``jump_s`` ahead of the clock moves it to that event's time (the ordinary case: events
    arrive roughly in order, gaps are short). ``jump_s`` is the stream's allowed lateness, capped at
    ``MAX_JUMP_S`` (1 h): a step within the lateness cannot make any event at or after the old clock late;
  - an event further ahead does **not** move it alone. It is held as a candidate until it is *corroborated*:
    the clock then moves to the newest time that at least two held events have reached — from two different
    sources when the partition has had more than one source within its last ``RECENT_EVENTS`` events (so a
    reader with a wrong clock, however many taps it sends, is not corroborated by itself). A partition whose
    recent events all come from one source has no peers to disagree: its own second event corroborates.

  So a single tap dated tomorrow among today's taps neither makes the on-time taps after it late nor moves
  anything driven by the clock; a real jump (a backlog, a quiet night) is followed after the second event.
  The decision is a function of the partition's own order only, so a replay after a crash decides the same.
  Two far-ahead events from two *different* wrong clocks do not corroborate each other: among peers, two
  sources corroborate a time only when their newest times lie within ``jump_s`` of each other (what a real
  jump looks like: the partition's sources resume together), when they keep sending past it (three of their
  events held: a sparse stream whose events after a jump are spread wider than ``jump_s``), or when three
  sources have passed it. Two wrong clocks that both keep sending are followed: a limitation.
  The very first event of a partition has nothing to be checked against, so it sets the clock only
  *provisionally*: if the next event would be late by it (more than the stream's lateness behind it), the first
  was the odd one — the clock goes back to the second event (once; the first is held as a candidate like any
  far-ahead event). Any other second event confirms it.

* **Lateness** (per partition, per stream): an event is *late* when it is more than its stream's allowed
  lateness behind its partition's clock. Late events stay out of the KPI windows but still enter the dedup
  table, the stream's state (the food lineage) and the rules.

* **Stream watermark** (``Engine.watermark``): per stream, the minimum of its active partitions'
  clocks — the time up to which every partition has been read. It closes KPI windows (window end + the stream's
  lateness), shows them to the anomaly rules, and releases buffered events to the rules in event-time order. A
  partition silent for ``idle_partition_s`` wall seconds while behind does not hold it back.

* **Rules' clock** (``Engine.rules_clock``): the slowest watermark among the streams still flowing; the
  alert lifecycle's timers (``for``, ``resolve_after``) and the rules' ticks run on it.

* **Retention clocks** (``Engine.retention_clock``): state belonging to one stream is expired on that stream's
  own watermark, never on another stream's or on a raw maximum: the dedup table (horizon: at least
  ``dedup_horizon_s`` and the stream's lateness plus a window), the rule kinds' per-entity state (the rule's
  stream, or the stream of its KPI measurement; at most the rules' clock) and the food lineage (on the food
  partition clocks).

Why an order statistic and not the maximum: Flink's bounded-out-of-orderness watermark (newest event time minus
a bound, ``WatermarkStrategy.forBoundedOutOfOrderness`` with ``withIdleness``) and Beam's heuristic watermarks
move with the newest event, so one event far ahead moves them for good. Flink's remedy is one watermark per
source split, combined by their minimum; the same idea inside one partition is to let a far jump count only
once a second event — a second source, when there are several — has reached it: the clock is then the second
largest of the per-source newest times, which no single source can move.

* **Wall-clock guard** (``CITYOPS_MAX_FUTURE_S``): an event dated more than that ahead of its Kafka record's
  timestamp is dead-lettered with the reason ``future``. The record timestamp, not ``time.time()``, is the wall
  clock here, so a replay of the same records after a crash decides the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_JUMP_S", "RECENT_EVENTS", "PartitionClock", "jump_for"]

MAX_JUMP_S = 3600.0  # the most one uncorroborated event may move a partition clock
RECENT_EVENTS = 64  # a partition whose last this-many events came from one source has no peers
_MAX_HELD_SOURCES = 16  # bounds the candidates held per partition (2 per source)


def jump_for(allowed_lateness_s: float, window_s: float = 60.0) -> float:
    """How far ahead of its partition clock one event may move it alone (seconds).

    The stream's allowed lateness (at least one window), capped at ``MAX_JUMP_S``: a step within the lateness
    cannot make an event at or after the old clock late, and the cap bounds how much one event can shorten the
    retention of state (horizons are 24 h and more).
    """
    return min(max(float(allowed_lateness_s), float(window_s)), MAX_JUMP_S)


class PartitionClock:
    """The corroboration state of one partition's clock (the clock value itself lives beside it).

    Plain data (``to_state``/``from_state``): the held candidates and the current run of one source.
    """

    __slots__ = ("held", "run_src", "run_len", "other", "provisional")

    def __init__(self) -> None:
        self.held: list[tuple[float, str]] = []  # (event time, source) of events too far ahead to move the clock
        self.run_src: str | None = None  # source of the latest events
        self.run_len = 0  # how many of the latest events in a row came from run_src
        self.other = False  # an event of another source came before that run
        self.provisional = False  # the clock was set by the partition's first event alone (see settle)

    def see(self, source: str) -> None:
        """Note an accepted event's source (called for every accepted event, in partition order)."""
        if source == self.run_src:
            self.run_len += 1
        else:
            if self.run_src is not None:
                self.other = True
            self.run_src = source
            self.run_len = 1

    @property
    def has_peers(self) -> bool:
        """Whether more than one source sent on this partition within its last ``RECENT_EVENTS`` events."""
        return self.other and self.run_len < RECENT_EVENTS

    def settle(self, clock: float, ts: float, lateness_s: float) -> float:
        """The clock to judge the partition's second event at ``ts`` by, while the first one alone set it.

        If ``ts`` is more than ``lateness_s`` (the stream's allowed lateness) behind the first event's time, the
        first would make it late: it is taken for the far-ahead one, held as a candidate (its source is
        ``run_src``), and the clock becomes ``ts``. Either way the clock is no longer provisional. Called only
        while ``provisional``.
        """
        self.provisional = False
        if ts < clock - lateness_s:
            self.held = [(clock, self.run_src or "")]
            return ts
        return clock

    def advance(self, clock: float | None, ts: float, source: str, jump_s: float) -> float:
        """The partition clock after accepting an event at ``ts`` from ``source`` (never below ``clock``)."""
        if clock is None:
            self.provisional = True
            return ts
        if ts <= clock:
            return clock
        if ts - clock <= jump_s:
            if self.held:
                self.held = [h for h in self.held if h[0] > ts]
            return ts
        return self._corroborate(clock, ts, source, jump_s)

    def _corroborate(self, clock: float, ts: float, source: str, jump_s: float) -> float:
        per: dict[str, list[float]] = {}
        for t, s in self.held:
            per.setdefault(s, []).append(t)
        per.setdefault(source, []).append(ts)
        for s, times in per.items():
            times.sort(reverse=True)
            del times[2:]  # a source's two newest are all that can corroborate anything
        if len(per) > _MAX_HELD_SOURCES:
            # Keep the sources nearest the clock: the likeliest to be corroborated by the partition's next events.
            keep = sorted(per, key=lambda s: per[s][0])[:_MAX_HELD_SOURCES]
            per = {s: per[s] for s in keep}
        if self.has_peers:
            tops = sorted(((times[0], len(times)) for times in per.values()), reverse=True)
            newest = [t for t, _n in tops]
            # Two sources corroborate a time when their newest lie within jump_s of each other (two wrong
            # clocks rarely agree), or when they keep sending past it (three of their events: a sparse stream
            # after a real jump); three sources past a time corroborate it however spread they are.
            agreed = next((b for a, b in zip(newest, newest[1:]) if a - b <= jump_s), None)
            persisted = newest[1] if len(tops) >= 2 and tops[0][1] + tops[1][1] >= 3 else None
            for cand in (agreed, persisted, newest[2] if len(newest) >= 3 else None):
                if cand is not None and cand > clock:
                    clock = cand
        else:
            newest = sorted((t for times in per.values() for t in times), reverse=True)
            if len(newest) >= 2 and newest[1] > clock:
                clock = newest[1]
        self.held = sorted((t, s) for s, times in per.items() for t in times if t > clock)
        return clock

    # -- plain data --------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"held": [[t, s] for t, s in self.held], "run_src": self.run_src, "run_len": self.run_len,
                "other": self.other, "provisional": self.provisional}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "PartitionClock":
        pc = cls()
        if state:
            pc.held = [(float(t), str(s)) for t, s in state.get("held", ())]
            pc.run_src = state.get("run_src")
            pc.run_len = int(state.get("run_len", 0))
            pc.other = bool(state.get("other", False))
            pc.provisional = bool(state.get("provisional", False))
        return pc
