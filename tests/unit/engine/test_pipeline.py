"""Engine semantics without I/O: dedup, tampering, lateness per partition, windows, replay skip, dead letters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.streams.city_streams import STREAM_CLASSES, Pseudonymizer

TAPS = "traffic.card-taps"
T0 = 1795564800.0  # 2026-11-25T00:00:00Z


def tap(i: int, ts: float, **over: Any) -> dict[str, Any]:
    from datetime import datetime, timezone

    ev = {"event_id": f"e{i}", "ts": datetime.fromtimestamp(ts, timezone.utc).isoformat(), "source": "g",
          "card_id": "6222000011112222", "mode": "metro", "line": "L1", "direction": "in", "fare_cny": 2}
    ev.update(over)
    return ev


def make(store: StateStore | None = None, **kw: Any) -> Engine:
    store = store or StateStore(None)
    ps = Pseudonymizer(b"unit-test-key-0123456789")
    clock = kw.pop("clock", [T0 + 10_000])
    return Engine(store, [cls(t, t, ps) for t, cls in STREAM_CLASSES.items()], now=lambda: clock[0], **kw)


def b(v: Any) -> bytes:
    return json.dumps(v).encode()


def window(engine: Engine, start: float) -> list[Any]:
    return engine.windows.table.data[("traffic_ridership", ("metro", "L1"), int(start))]


def test_duplicate_counted_once_and_tampering_detected() -> None:
    e = make()
    e.process(TAPS, 0, 0, b(tap(1, T0)))
    e.process(TAPS, 0, 1, b(tap(1, T0)))
    e.process(TAPS, 0, 2, b(tap(1, T0, fare_cny=9)))
    assert window(e, T0)[0] == 1
    assert e.counts[(TAPS, "accepted")] == 1
    assert e.counts[(TAPS, "duplicate")] == 1
    assert e.counts[(TAPS, "tampered")] == 1


def test_lateness_is_per_partition() -> None:
    e = make()
    # Two events set partition 0's clock (its first event alone sets it provisionally: cityops.engine.clocks).
    e.process(TAPS, 0, 0, b([tap(1, T0 + 3600), tap(5, T0 + 3600)]))
    e.process(TAPS, 1, 0, b(tap(2, T0)))  # other partition: not late, though an hour behind partition 0
    e.process(TAPS, 0, 1, b(tap(3, T0 + 3600 - 601)))  # same partition, 10 min + 1 s behind: late
    e.process(TAPS, 0, 2, b(tap(4, T0 + 3600 - 599)))
    assert e.counts[(TAPS, "late")] == 1
    assert e.counts[(TAPS, "accepted")] == 4


def test_batch_with_one_bad_element_rejects_only_it() -> None:
    e = make()
    e.process(TAPS, 0, 0, b([tap(1, T0), tap(2, T0, direction="up"), tap(3, T0)]))
    assert window(e, T0)[0] == 2
    assert e.pending_dead_letters() == []  # not committed yet: outputs leave only from committed state
    e.checkpoint()
    (seq, rec), = e.pending_dead_letters()
    assert rec["index"] == 1 and "$[1].direction" in rec["reason"]
    assert e.counts[(TAPS, "invalid")] == 1


def test_card_numbers_are_pseudonymized_in_decoded_events() -> None:
    e = make()
    res = e.streams[TAPS].decode(b(tap(1, T0)))
    assert res[0].event.card_id.startswith("p-") and "6222000011112222" not in res[0].event.card_id


def test_replayed_offsets_are_skipped_after_restore(tmp_path: Path) -> None:
    store = StateStore(tmp_path).open()
    e = make(store)
    for i in range(5):
        e.process(TAPS, 0, i, b(tap(i, T0)))
    e.checkpoint()
    e.process(TAPS, 0, 5, b(tap(5, T0)))  # processed but never committed: the crash takes it back
    store.close()
    store2 = StateStore(tmp_path).open()
    e2 = make(store2)
    for i in range(7):  # the consumer replays from an older offset
        e2.process(TAPS, 0, i, b(tap(i, T0)))
    assert window(e2, T0)[0] == 7
    assert e2.counts[(TAPS, "duplicate")] == 0


def test_checkpoint_points_and_window_close_and_confirm() -> None:
    clock = [T0]
    e = make(clock=clock)
    e.process(TAPS, 0, 0, b(tap(1, T0 + 5)))
    res = e.checkpoint()
    ridership = [p for p in res.points if p.measurement == "traffic_ridership"]
    assert ridership[0].fields["taps_in"] == 1 and ridership[0].ts == int(T0)
    # The watermark passes window end + lateness. A jump beyond the lateness needs a second event to
    # corroborate it (one event alone may be a device with a wrong clock: cityops.engine.clocks).
    e.process(TAPS, 0, 1, b(tap(2, T0 + 60 + 600 + 1)))
    e.process(TAPS, 0, 2, b(tap(3, T0 + 60 + 600 + 1)))
    res = e.checkpoint()
    assert res.closed == [("traffic_ridership", ("metro", "L1"), int(T0))]
    assert ("traffic_ridership", ("metro", "L1"), int(T0)) in e.closed.data
    e.confirm_written([("traffic_ridership", {"mode": "metro", "line": "L1"}, int(T0))])
    assert ("traffic_ridership", ("metro", "L1"), int(T0)) not in e.closed.data


class _Recorder:
    """A rule that records the event times it is shown (the RuleKind hook protocol)."""

    params: dict[str, Any] = {}

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_event(self, stream: str, ev: Any, ctx: Any) -> None:
        self.seen.append(ev.ts)

    def on_quality(self, *a: Any) -> None: ...
    def on_tick(self, *a: Any) -> None: ...
    def on_window(self, *a: Any) -> None: ...
    def on_tampering(self, *a: Any) -> None: ...
    def on_rejected_source(self, *a: Any) -> None: ...


def test_rules_see_events_in_event_time_order_across_partitions(tmp_path: Path) -> None:
    rec = _Recorder()
    clock = [T0]
    store = StateStore(tmp_path).open()
    e = make(store, rules=[rec], clock=clock)
    e.expect_partitions([(TAPS, 0), (TAPS, 1)])  # the consumer's assignment
    # Partition 1 is read far ahead of partition 0.
    for i in range(5):
        e.process(TAPS, 1, i, b(tap(100 + i, T0 + 600 + i * 60)))
    e.checkpoint()
    assert rec.seen == []  # partition 0 has not been read past them yet
    for i in range(5):
        e.process(TAPS, 0, i, b(tap(i, T0 + i * 60)))
    e.checkpoint()
    assert rec.seen == sorted(rec.seen) and len(rec.seen) == 5  # partition 0's, then waiting for more
    # Buffered events are committed state: after a restart they are still handed over, once.
    store.close()
    rec2 = _Recorder()
    e2 = make(StateStore(tmp_path).open(), rules=[rec2], clock=clock)
    e2.process(TAPS, 0, 5, b(tap(50, T0 + 3600)))
    e2.process(TAPS, 0, 6, b(tap(51, T0 + 3600)))  # a jump beyond the lateness is corroborated by a second event
    e2.checkpoint()
    assert rec2.seen == [T0 + 600 + i * 60 for i in range(5)]


def test_a_quiet_streams_open_windows_reach_the_rules_once() -> None:
    """Hospitals close at night: their stream stops, its last windows stay open for hours while the
    other streams go on. Those windows are shown to the rules once, not again at every checkpoint."""
    from collections import Counter
    from datetime import datetime, timezone

    class Windows(_Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.windows: Counter[tuple[str, float]] = Counter()

        def on_window(self, measurement: str, tags: Any, fields: Any, start: float, ctx: Any) -> None:
            self.windows[(measurement, start)] += 1

    def visit(i: int, ts: float) -> dict[str, Any]:
        return {"event_id": f"h{i}", "ts": datetime.fromtimestamp(ts, timezone.utc).isoformat(), "source": "h",
                "card_id": "3204000000000001", "hospital": "H", "dept": "D", "kind": "register",
                "channel": "app", "wait_s": 100, "amount_cny": 0.0, "result": "ok"}

    rec = Windows()
    clock = [T0]
    e = make(rules=[rec], clock=clock)
    for i in range(10):  # the last ten minutes of the hospital's day
        e.process("health.card-events", 0, i, b(visit(i, T0 + i * 60)))
    for i in range(6 * 60):  # six more hours of taps, a checkpoint a minute
        e.process(TAPS, 0, i, b(tap(i, T0 + i * 60)))
        clock[0] = T0 + i * 60
        e.checkpoint()
    health = {k: n for k, n in rec.windows.items() if k[0] == "health_service"}
    assert health and max(health.values()) == 1, health


def test_event_times_influxdb_cannot_store_are_dead_lettered_at_ingest() -> None:
    """Issue 9 kind 3: the window a point is written at (start and end) must be within InfluxDB's range."""
    from datetime import datetime, timezone

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    e = make()
    cases = [  # (event time, stored?)
        ("1500-01-01T00:00:00+00:00", False),
        ("0001-01-01T00:00:00+00:00", False),
        ("1677-09-21T00:12:43.145224+00:00", False),  # in range, but its window starts at 00:12:00
        ("1677-09-21T00:13:00+00:00", True),  # first whole window
    ]
    for i, (text, stored) in enumerate(cases):
        # Each on its own partition: lateness (an other clock's business) plays no part here.
        e.process(TAPS, i, 0, b(tap(i, at(text))))
    e.checkpoint()
    letters = [rec for _seq, rec in e.pending_dead_letters()]
    rejected = [c for c in cases if not c[1]]
    assert len(letters) == len(rejected)
    for rec in letters:
        assert rec["reason"].startswith("contract: event time outside InfluxDB's range")
        assert "1677-09-21T00:12:43.145224194Z..2262-04-11T23:47:16.854775806Z" in rec["reason"]
    assert e.counts[(TAPS, "invalid")] == len(rejected)
    assert e.counts[(TAPS, "accepted")] == len(cases) - len(rejected)
    starts = {k[2] for k in e.windows.table.data if k[0] == "traffic_ridership"}
    assert starts == {int(at("1677-09-21T00:13:00+00:00"))}


def test_storable_range_covers_the_whole_window() -> None:
    """The upper end (far in the future, so at ingest also beyond any future bound): whole windows only."""
    from datetime import datetime

    from cityops.engine.windows import outside_storable

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    assert outside_storable(at("2262-04-11T23:46:59+00:00")) is None  # last whole window: 23:46..23:47
    assert outside_storable(at("2262-04-11T23:47:00+00:00")) is not None  # ends after 23:47:16.85
    assert outside_storable(at("9999-12-31T23:59:59+00:00")) is not None
    assert outside_storable(at("1677-09-21T00:13:00+00:00")) is None
    assert outside_storable(at("1677-09-21T00:12:59+00:00")) is not None  # starts at 00:12:00
    assert outside_storable(0.0) is None


def test_refused_point_is_dead_lettered_after_the_commit_with_a_stable_id() -> None:
    e = make()
    line = 'traffic_ridership,line=L1,mode=metro taps_in=3i 1795564800'
    e.dead_letter_point("influxdb", line, "traffic_ridership", 'HTTP 400: {"error":"field type conflict"}')
    assert e.pending_dead_letters() == []
    e.checkpoint()
    (seq, rec), = e.pending_dead_letters()
    assert rec["raw"] == line.encode() and rec["outcome"] == "refused" and rec["stream"] == TAPS
    assert rec["reason"] == 'influxdb refused the point: HTTP 400: {"error":"field type conflict"}'
    e.dead_letter_point("influxdb", line, "traffic_ridership", "again")
    e.checkpoint()
    ids = {r["id"] for _s, r in e.pending_dead_letters()}
    assert len(ids) == 1  # the same point version twice: one id, consumers can drop the repeat


def test_the_record_at_the_committed_offset_is_identified_and_a_rewind_applies_the_new_log() -> None:
    """Issue 9 kind 8: offsets that go backwards. The digest of the record at each committed offset is
    committed with it; after ``rewind`` records at offsets at or below the old ones are applied again."""
    from cityops.engine.pipeline import record_digest

    e = make()
    raws = [b(tap(i, T0)) for i in range(5)]
    for off, raw in enumerate(raws):
        e.process(TAPS, 0, off, raw)
    e.checkpoint()
    assert e.committed_records() == {(TAPS, 0): (4, record_digest(raws[4]))}
    e.process(TAPS, 0, 1, b(tap(100, T0)))  # a new log's record at an old offset: skipped as applied
    assert e.counts[(TAPS, "accepted")] == 5
    e.rewind((TAPS, 0), 0)
    for off in range(3):
        e.process(TAPS, 0, off, b(tap(100 + off, T0)))
    e.process(TAPS, 0, 3, raws[0])  # an event the old log had: counted once (dedup)
    e.checkpoint()
    assert e.counts[(TAPS, "accepted")] == 8 and e.counts[(TAPS, "duplicate")] == 1
    assert window(e, T0)[0] == 8
    assert e.committed_records() == {(TAPS, 0): (3, record_digest(raws[0]))}


def test_records_applied_but_not_yet_committed_are_not_applied_again_when_redelivered() -> None:
    """A consumer moved back (the seek after a rewind, a rebalance) re-delivers records applied since the
    last commit: skipped like committed ones, not counted as duplicates nor twice in a window (CI failure of
    test_offsets_backwards: the batch that triggered the rewind was applied, then delivered again)."""
    e = make()
    e.rewind((TAPS, 0), 0)
    raws = [b(tap(i, T0)) for i in range(3)]
    for off, raw in enumerate(raws):
        e.process(TAPS, 0, off, raw)
    for off, raw in enumerate(raws):  # the same three records again, before any commit
        e.process(TAPS, 0, off, raw)
    e.checkpoint()
    assert e.counts[(TAPS, "accepted")] == 3
    assert e.counts.get((TAPS, "duplicate"), 0) == 0
    assert window(e, T0)[0] == 3
    e.process(TAPS, 0, 3, b(tap(3, T0)))  # the next offset is applied
    assert e.counts[(TAPS, "accepted")] == 4


def test_committed_record_digests_survive_a_restart(tmp_path: Path) -> None:
    from cityops.engine.pipeline import record_digest

    e = make(StateStore(tmp_path).open())
    raws = [b(tap(i, T0)) for i in range(3)]
    for off, raw in enumerate(raws):
        e.process(TAPS, 2, off, raw)
    e.checkpoint()
    e.store.close()
    e2 = make(StateStore(tmp_path).open())
    assert e2.committed_records() == {(TAPS, 2): (2, record_digest(raws[2]))}
    e2.rewind((TAPS, 2), 0)
    e2.checkpoint()
    e2.store.close()
    e3 = make(StateStore(tmp_path).open())
    assert e3.committed_records() == {}  # rewound to before offset 0: nothing committed, nothing skipped
    e3.process(TAPS, 2, 0, b(tap(50, T0)))
    assert e3.counts[(TAPS, "accepted")] == 1


def test_rule_buffer_writes_only_the_events_still_waiting_at_a_commit(tmp_path: Path) -> None:
    """Buffering and releasing an event before the next commit writes nothing; a waiting one is written once."""
    rec = _Recorder()
    clock = [T0]
    e = make(StateStore(tmp_path).open(), rules=[rec], clock=clock)
    e.expect_partitions([(TAPS, 0), (TAPS, 1)])
    for i in range(5):
        e.process(TAPS, 1, i, b(tap(100 + i, T0 + 600 + i * 60)))
    assert not e.rule_buffer.data and not e.rule_buffer.dirty  # waiting in memory until the commit
    e.checkpoint()
    waiting = sorted(e.rule_buffer.data)
    assert [k[0] for k in waiting] == [T0 + 600 + i * 60 for i in range(5)] and not e.rule_buffer.dirty
    for i in range(5):  # partition 0 up to T0+240: its events are released at the next checkpoint
        e.process(TAPS, 0, i, b(tap(i, T0 + i * 60)))
    e.checkpoint()
    assert rec.seen == [T0 + i * 60 for i in range(5)]
    assert sorted(e.rule_buffer.data) == waiting  # the released ones were never in the table
    e.process(TAPS, 0, 5, b(tap(5, T0 + 900)))
    e.process(TAPS, 0, 6, b(tap(6, T0 + 900)))  # (a jump of the clock is corroborated by a second event)
    e.checkpoint()
    assert rec.seen[5:10] == [T0 + 600 + i * 60 for i in range(5)]
    # Released: deleted by that commit; in the table now only what waits (past partition 1's clock).
    assert not set(waiting) & set(e.rule_buffer.data) and all(k[0] == T0 + 900 for k in e.rule_buffer.data)
    left = sorted(e.rule_buffer.data)
    e.store.close()
    e2 = make(StateStore(tmp_path).open(), rules=[_Recorder()], clock=clock)
    assert sorted(e2.rule_buffer.data) == left == sorted((ts, seq) for h in e2._rule_heaps.values()
                                                         for ts, seq, _t, _ev in h)
