"""Event-time clocks (issue 9 kinds 1 and 2): one device's wrong clock moves nothing; lateness per stream; late
events are still data; the ``future`` guard is replay-safe; retention runs on each stream's own clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops.engine.clocks import MAX_JUMP_S, RECENT_EVENTS, PartitionClock, jump_for
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.food.stream import FoodStream
from cityops.streams.city_streams import STREAM_CLASSES, Pseudonymizer
from tests.workcount import calls

TAPS = "traffic.card-taps"
HEALTH = "health.card-events"
FOOD = "food.trace-events"
T0 = 1795564800.0  # 2026-11-25T00:00:00Z
DAY = 86400.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def tap(i: int, ts: float, source: str = "g", **over: Any) -> bytes:
    ev = {"event_id": f"e{i}", "ts": iso(ts), "source": source, "card_id": "6222000011112222", "mode": "metro",
          "line": "L1", "direction": "in", "fare_cny": 2}
    ev.update(over)
    return json.dumps(ev).encode()


def visit(i: int, ts: float, source: str = "his-1") -> bytes:
    return json.dumps({"event_id": f"h{i}", "ts": iso(ts), "source": source, "card_id": "3204000000000001",
                       "hospital": "H", "kind": "register", "result": "ok"}).encode()


def make(store: StateStore | None = None, *, food: bool = False, clock: list[float] | None = None,
         **kw: Any) -> Engine:
    store = store or StateStore(None)
    ps = Pseudonymizer(b"unit-test-key-0123456789")
    streams: list[Any] = [cls(t, t, ps) for t, cls in STREAM_CLASSES.items()]
    if food:
        streams.append(FoodStream())
    wall = clock or [T0 + 30 * DAY]
    return Engine(store, streams, now=lambda: wall[0], **kw)


def taps_in(e: Engine, start: float) -> int:
    acc = e.windows.table.data.get(("traffic_ridership", ("metro", "L1"), int(start)))
    return 0 if acc is None else acc[0]


# ------------------------------------------------------------------------------------------ the example
@pytest.mark.parametrize("sources", ["one reader", "own reader"])
def test_a_tap_dated_tomorrow_makes_no_on_time_tap_late(sources: str) -> None:
    """Issue 9 kind 1: three taps at 00:00:01, one dated the next day, four at 00:00:30 → 7 taps_in at 00:00."""
    e = make()
    bad = "g" if sources == "one reader" else "reader-with-wrong-clock"
    off = 0
    for i in range(3):
        e.process(TAPS, 0, off, tap(i, T0 + 1)); off += 1
    e.process(TAPS, 0, off, tap(10, T0 + DAY, source=bad)); off += 1
    for i in range(4):
        e.process(TAPS, 0, off, tap(20 + i, T0 + 30)); off += 1
    assert taps_in(e, T0) == 7
    assert e.counts[(TAPS, "late")] == 0
    assert taps_in(e, T0 + DAY) == 1  # the far-ahead tap itself is not lost either
    assert e.partition_wm[(TAPS, 0)] == T0 + 30  # and it did not move the clock


def test_a_reader_sending_many_taps_with_a_wrong_clock_is_not_corroborated_by_itself() -> None:
    e = make()
    off = 0
    for i in range(20):
        # Live readers on the partition, and one reader a day ahead sending as often as all of them together.
        e.process(TAPS, 0, off, tap(2 * i, T0 + 10 * i, source=f"gate-{i % 5}")); off += 1
        e.process(TAPS, 0, off, tap(2 * i + 1, T0 + DAY + 10 * i, source="bad-reader")); off += 1
    assert e.partition_wm[(TAPS, 0)] == T0 + 190
    assert e.counts[(TAPS, "late")] == 0


def test_a_real_jump_is_followed_once_corroborated() -> None:
    """A backlog or a quiet night: the clock follows after the second event (a second source, with peers)."""
    e = make()
    for i in range(3):
        e.process(TAPS, 0, i, tap(i, T0 + i, source=f"gate-{i}"))
    e.process(TAPS, 0, 3, tap(3, T0 + 8 * 3600, source="gate-0"))
    assert e.partition_wm[(TAPS, 0)] == T0 + 2
    e.process(TAPS, 0, 4, tap(4, T0 + 8 * 3600 + 5, source="gate-1"))
    assert e.partition_wm[(TAPS, 0)] == T0 + 8 * 3600
    e.process(TAPS, 0, 5, tap(5, T0 + 2, source="gate-2"))  # now eight hours behind: late
    assert e.counts[(TAPS, "late")] == 1


def test_partition_clock_rules() -> None:
    pc = PartitionClock()
    jump = jump_for(600.0)
    assert jump == 600.0 and jump_for(7 * DAY) == MAX_JUMP_S and jump_for(0.0) == 60.0
    c = None
    for src in ("a", "b"):
        pc.see(src)
        c = pc.advance(c, T0, src, jump)
    assert c == T0 and pc.has_peers
    pc.see("a")
    c = pc.advance(c, T0 + DAY, "a", jump)
    pc.see("a")
    c = pc.advance(c, T0 + DAY + 1, "a", jump)
    assert c == T0  # two events, one source: among peers that is one device
    pc.see("b")
    c = pc.advance(c, T0 + DAY + 2, "b", jump)
    assert c == T0 + DAY + 1  # the second source's newest: corroborated
    # A partition whose recent events all came from one source has no peers: its own second event corroborates.
    for _ in range(RECENT_EVENTS):
        pc.see("a")
    assert not pc.has_peers
    c = pc.advance(c, T0 + 3 * DAY, "a", jump)
    assert c == T0 + DAY + 2  # b's event, held until now, is the second newest
    c = pc.advance(c, T0 + 3 * DAY + 1, "a", jump)
    assert c == T0 + 3 * DAY
    # Plain data, restored exactly.
    back = PartitionClock.from_state(json.loads(json.dumps(pc.to_state())))
    assert back.to_state() == pc.to_state()


def test_partition_clock_survives_a_restart_and_decides_the_same(tmp_path: Path) -> None:
    """The held candidate is committed state: after a crash the replay decides exactly as the first run."""
    def feed(e: Engine, offsets: range) -> None:
        msgs = [tap(0, T0 + 1), tap(1, T0 + DAY, source="bad"), tap(2, T0 + 30), tap(3, T0 + DAY + 5, source="bad"),
                tap(4, T0 + 40)]
        for off in offsets:
            e.process(TAPS, 0, off, msgs[off])

    e = make(StateStore(tmp_path).open())
    feed(e, range(0, 3))
    e.checkpoint()
    e.store.close()
    e2 = make(StateStore(tmp_path).open())
    feed(e2, range(0, 5))  # the consumer replays from the start: committed offsets are skipped
    once = make()
    feed(once, range(0, 5))
    assert e2.partition_wm == once.partition_wm == {(TAPS, 0): T0 + 40}
    assert taps_in(e2, T0) == taps_in(once, T0) == 3


# ------------------------------------------------------------------------------------------------- retention
def test_an_event_far_ahead_does_not_expire_dedup_state() -> None:
    e = make(clock=[T0 + 10 * DAY])
    e.process(TAPS, 0, 0, tap(1, T0))
    e.process(TAPS, 0, 1, tap(2, T0 + 3 * DAY, source="bad"))  # a reader three days ahead
    e.checkpoint()
    e.process(TAPS, 0, 2, tap(1, T0))  # the first tap re-sent: still known
    assert e.counts[(TAPS, "duplicate")] == 1 and e.counts[(TAPS, "accepted")] == 2


def test_state_of_a_stream_is_expired_on_its_own_clock() -> None:
    """Another stream read days ahead (corroborated, a real backlog) does not expire the taps' dedup table."""
    e = make(clock=[T0 + 10 * DAY])
    e.process(TAPS, 0, 0, tap(1, T0))
    for i in range(5):
        e.process(HEALTH, 0, i, visit(i, T0 + 3 * DAY + i, source=f"his-{i}"))
    e.checkpoint()
    e.process(TAPS, 0, 1, tap(1, T0))
    assert e.counts[(TAPS, "duplicate")] == 1
    # Its own clock does: a day and more of taps later the id may be used again.
    for i in range(4):  # two readers, half a day apart: each jump corroborated by the other reader
        e.process(TAPS, 0, 2 + 2 * i, tap(100 + i, T0 + (i + 1) * DAY / 2, source="g"))
        e.process(TAPS, 0, 3 + 2 * i, tap(200 + i, T0 + (i + 1) * DAY / 2, source="h"))
    e.checkpoint()
    assert e.retention_clock({})[TAPS] > T0 + 1.05 * DAY + 3600
    e.process(TAPS, 0, 10, tap(1, T0 + 10))  # the same id again: the dedup entry is gone (not tampering, late)
    assert e.counts[(TAPS, "duplicate")] == 1 and e.counts[(TAPS, "tampered")] == 0


# -------------------------------------------------------------------------------------------- future guard
def test_events_dated_beyond_max_future_are_dead_lettered_and_replays_decide_the_same() -> None:
    wall = [T0 + 3600]
    e = make(clock=wall)
    record_ts = T0  # the Kafka record's timestamp: the wall clock at ingest, stored with the record
    e.process(TAPS, 0, 0, tap(1, T0 + 299), timestamp=record_ts)
    e.process(TAPS, 0, 1, tap(2, T0 + 301), timestamp=record_ts)
    assert e.counts[(TAPS, "accepted")] == 1 and e.counts[(TAPS, "future")] == 1
    res = e.checkpoint()  # dead letters leave once committed
    (_seq, rec), = e.pending_dead_letters()
    assert rec["reason"].startswith("future: ") and rec["outcome"] == "future" and rec["offset"] == 1
    assert "CITYOPS_MAX_FUTURE_S" in rec["reason"]
    # Stream quality counts it with the dead-lettered (invalid) events.
    quality = [p for p in res.points if p.measurement == "stream_quality"]
    assert quality[0].fields["invalid"] == 1
    # A replay days later (the wall clock has moved on) decides the same: the record's timestamp is the clock.
    wall[0] = T0 + 5 * DAY
    again = make(clock=wall)
    again.process(TAPS, 0, 0, tap(1, T0 + 299), timestamp=record_ts)
    again.process(TAPS, 0, 1, tap(2, T0 + 301), timestamp=record_ts)
    assert again.counts[(TAPS, "future")] == 1 and again.counts[(TAPS, "accepted")] == 1


# ------------------------------------------------------------------------------------ late events are still data
class _Rule:
    params: dict[str, Any] = {}

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_event(self, stream: str, ev: Any, ctx: Any) -> None:
        self.events.append(ev.event_id)

    def on_quality(self, *a: Any) -> None: ...
    def on_tick(self, *a: Any) -> None: ...
    def on_window(self, *a: Any) -> None: ...
    def on_tampering(self, *a: Any) -> None: ...
    def on_rejected_source(self, *a: Any) -> None: ...


def test_a_late_event_stays_out_of_windows_but_enters_dedup_and_the_rules() -> None:
    rule = _Rule()
    e = make(rules=[rule], clock=[T0 + DAY])
    # Two events set the clock (a partition's first event alone sets it only provisionally: see below).
    e.process(TAPS, 0, 0, tap(1, T0 + 3600))
    e.process(TAPS, 0, 1, tap(3, T0 + 3601))
    e.process(TAPS, 0, 2, tap(2, T0))  # an hour behind: late
    assert e.counts[(TAPS, "late")] == 1 and taps_in(e, T0) == 0
    e.process(TAPS, 0, 3, tap(2, T0))  # re-sent: a duplicate, not late again
    assert e.counts[(TAPS, "duplicate")] == 1 and e.counts[(TAPS, "late")] == 1
    e.checkpoint()
    assert "e2" in rule.events


# ---------------------------------------------------------------------------------- lateness per stream (food)
SH_LOC = "urn:epc:id:sgln:6901001.00001.0"
MARKET = "urn:epc:id:sgln:6904000.00001.0"
CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
CST = timezone(timedelta(hours=8))
NOON = datetime(2026, 11, 25, 12, 0, tzinfo=CST).timestamp()


def epcis(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
                       "creationDate": events[0]["eventTime"], "epcisBody": {"eventList": events}}).encode()


def food_event(n: int, t: float, step: str, *, epcs: list[str] = (), classes: list[str] = (),
               kind: str = "ObjectEvent", **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": kind, "eventID": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
                          "eventTime": datetime.fromtimestamp(t, CST).isoformat(timespec="milliseconds"),
                          "eventTimeZoneOffset": "+08:00", "bizStep": step}
    if kind == "ObjectEvent":
        ev["action"] = kw.pop("action", "OBSERVE")
        ev["epcList"] = list(epcs)
        if classes:
            ev["quantityList"] = [{"epcClass": c, "quantity": 5, "uom": "KGM"} for c in classes]
    ev.update(kw)
    return ev


def slaughterhouse_and_market(lots: int = 3) -> tuple[bytes, bytes, list[str]]:
    """The slaughterhouse's current events (12:00); the market's upload of receiving + sale (08:00–11:00)."""
    current, upload, lot_ids = [], [], []
    for i in range(lots):
        carcass = f"urn:epc:id:sgtin:6901001.010000.{i + 1}"
        lot = f"urn:epc:class:lgtin:6901001.020001.L{i + 1}"
        lot_ids.append(lot)
        current += [
            food_event(100 + 10 * i, NOON, "commissioning", epcs=[carcass], action="ADD", disposition="active",
                       bizLocation={"id": SH_LOC}),
            food_event(101 + 10 * i, NOON + 1, "inspecting", epcs=[carcass], disposition="conformant",
                       bizLocation={"id": SH_LOC}),
            food_event(102 + 10 * i, NOON + 2, "commissioning", kind="TransformationEvent", inputEPCList=[carcass],
                       outputQuantityList=[{"epcClass": lot, "quantity": 40, "uom": "KGM"}],
                       bizLocation={"id": SH_LOC}),
        ]
        upload += [
            food_event(200 + 10 * i, NOON - 4 * 3600 + 600 * i, "receiving", classes=[lot],
                       bizLocation={"id": MARKET}),
            food_event(201 + 10 * i, NOON - 3600 + 60 * i, "retail_selling", classes=[lot],
                       disposition="retail_sold", bizLocation={"id": MARKET}),
        ]
    return epcis(current), epcis(upload), lot_ids


def test_food_upload_within_its_lateness_lands_in_its_windows_and_the_lineage() -> None:
    """Issue 9 kind 2: a market's offline upload of 08:00–11:00, five minutes after the slaughterhouse's 12:00."""
    from cityops.settings import FOOD_DEFAULT_LATENESS_S

    e = make(food=True, clock=[NOON + 3600], stream_lateness_s={FOOD: FOOD_DEFAULT_LATENESS_S})
    current, upload, lots = slaughterhouse_and_market()
    e.process(FOOD, 0, 0, current)
    e.process(FOOD, 0, 1, upload)
    assert e.counts[(FOOD, "late")] == 0 and e.counts[(FOOD, "accepted")] == 15
    trace = {(k[1][0], k[2]): acc[0] for k, acc in e.windows.table.data.items() if k[0] == "food_trace"}
    assert sum(n for (step, _), n in trace.items() if step == "receiving") == 3
    assert sum(n for (step, _), n in trace.items() if step == "retail_selling") == 3
    assert min(start for (step, start) in trace if step == "receiving") == int(NOON - 4 * 3600)
    chain = [acc[0] for k, acc in e.windows.table.data.items() if k[0] == "food_chain"]
    assert sum(len(c) for c in chain) == 3 and all(v == 1 for c in chain for v in c.values())  # sales traced
    lineage = e.streams[FOOD].lineage(e.ctx)
    assert all(lineage.traced(lot) for lot in lots)


def test_food_events_beyond_their_lateness_reach_the_lineage_but_no_window() -> None:
    """With a lateness of 10 minutes the upload is late: out of the KPI windows, still in the lineage."""
    e = make(food=True, clock=[NOON + 3600], stream_lateness_s={FOOD: 600.0})
    current, upload, lots = slaughterhouse_and_market()
    e.process(FOOD, 0, 0, current)
    e.process(FOOD, 0, 1, upload)
    assert e.counts[(FOOD, "late")] == 6
    assert not [k for k in e.windows.table.data if k[0] == "food_trace" and k[1][0] == "receiving"]
    lineage = e.streams[FOOD].lineage(e.ctx)
    assert all(lineage.traced(lot) for lot in lots)
    e.process(FOOD, 0, 2, upload)  # uploaded twice: the late events are in the dedup table
    assert e.counts[(FOOD, "duplicate")] == 6


def test_an_event_later_than_the_dedup_horizon_is_remembered_from_its_arrival() -> None:
    e = make(clock=[T0 + 30 * DAY])
    for i in range(2):
        e.process(TAPS, 0, i, tap(100 + i, T0 + 10 * DAY, source=f"g{i}"))
    e.process(TAPS, 0, 2, tap(1, T0))  # ten days late: beyond lateness and the 24 h dedup horizon
    e.checkpoint()
    e.process(TAPS, 0, 3, tap(1, T0))  # re-sent
    assert e.counts[(TAPS, "late")] == 1 and e.counts[(TAPS, "duplicate")] == 1


def test_food_lineage_is_not_swept_by_an_event_dated_far_ahead() -> None:
    e = make(food=True, clock=[NOON + 30 * DAY], stream_lateness_s={FOOD: 7 * DAY})
    current, _upload, lots = slaughterhouse_and_market(1)
    e.process(FOOD, 0, 0, current)
    far = food_event(900, NOON + 20 * DAY, "receiving", classes=["urn:epc:class:lgtin:6909999.000001.X"],
                     bizLocation={"id": MARKET})
    e.process(FOOD, 0, 1, epcis([far]))  # one party's clock twenty days ahead
    _c, upload, _l = slaughterhouse_and_market(1)
    e.process(FOOD, 0, 2, upload)
    lineage = e.streams[FOOD].lineage(e.ctx)
    assert lineage.traced(lots[0]) and lineage.now < NOON + DAY


# ------------------------------------------------------------------------- issue 14: bounded cost of a clock jump


def _with_every_rule(age_s: float) -> tuple[int, Engine]:
    """An engine with every shipped rule (agents/*.yml); a first tap ``age_s`` old on one partition, then live
    taps on four partitions; returns the calls made by the checkpoint in which the clocks jump."""
    from types import SimpleNamespace

    from cityops.alerts.wiring import build_alerting, default_rules_dir

    settings = SimpleNamespace(rules_dir=default_rules_dir(), source_registry="none", runbook_base="",
                               web_host="127.0.0.1", web_port=1, alertmanager_url=None)
    store = StateStore(None)
    alerts, rules, gate = build_alerting(settings, store)
    assert len(rules) >= 10
    now = T0 + 5 * 365.25 * DAY
    e = make(store, signals=alerts, rules=rules, registry=gate, clock=[now])
    e.expect_partitions([(TAPS, p) for p in range(4)])
    e.process(TAPS, 0, 0, tap(0, now - age_s))
    e.checkpoint()
    for p in range(4):
        for j in range(3):
            e.process(TAPS, p, 1 + j, tap(10 * p + j + 1, now - 10 + j, source=f"gate-{j}"))
    return calls(e.checkpoint), e


def test_a_five_year_old_first_tap_costs_a_checkpoint_what_an_hour_old_one_costs() -> None:
    """Issue 14 in process, every shipped rule on: the checkpoint that crosses five years of event time does the
    work of one that crosses an hour (it froze commits for ~41 s: invalid_share walked 15.8 M windows)."""
    hour, e_hour = _with_every_rule(3600.0)
    years, e_years = _with_every_rule(5 * 365.25 * DAY)
    assert e_years.partition_wm[(TAPS, 0)] == e_hour.partition_wm[(TAPS, 0)]  # both clocks jumped to the live taps
    assert years <= 2 * hour + 5000, (hour, years)


def test_lifecycle_advance_over_decades_costs_the_alerts_it_holds() -> None:
    from cityops.alerts.lifecycle import AlertEngine
    from cityops.alerts.spec import RuleSpec

    def run(jump: float) -> int:
        store = StateStore(None)
        rules = {"R": RuleSpec(name="R", kind="tampering", agent="a", for_s=60.0, resolve_after_s=300.0)}
        eng = AlertEngine(store, rules)
        for i in range(20):
            eng.signal("R", {"source": f"s{i}"}, T0 + i, active=True)
        eng.advance(T0 + 100)
        return calls(lambda: eng.advance(T0 + 100 + jump))

    assert run(30 * 365.25 * DAY) <= run(3600.0) + 200


def test_an_epcis_event_dated_2015_first_costs_what_an_hour_old_one_costs() -> None:
    """Issue 14's EPCIS case (an event dated 2015 froze commits ~100 s), in process with every shipped rule."""
    from types import SimpleNamespace

    from cityops.alerts.wiring import build_alerting, default_rules_dir

    def run(old_ts: float) -> tuple[int, Engine]:
        settings = SimpleNamespace(rules_dir=default_rules_dir(), source_registry="none", runbook_base="",
                                   web_host="127.0.0.1", web_port=1, alertmanager_url=None)
        store = StateStore(None)
        alerts, rules, gate = build_alerting(settings, store)
        e = make(store, food=True, signals=alerts, rules=rules, registry=gate, clock=[NOON + 60],
                 stream_lateness_s={FOOD: 7 * DAY})
        old = food_event(1, old_ts, "receiving", classes=["urn:epc:class:lgtin:6909999.000001.OLD"],
                         bizLocation={"id": MARKET})
        e.process(FOOD, 0, 0, epcis([old]))
        e.checkpoint()
        current, _upload, _lots = slaughterhouse_and_market()
        e.process(FOOD, 0, 1, current)
        # The market is live again too: a second party corroborates the jump of the partition clock.
        live = food_event(2, NOON + 30, "receiving", classes=["urn:epc:class:lgtin:6909999.000001.NEW"],
                          bizLocation={"id": MARKET})
        e.process(FOOD, 0, 2, epcis([live]))
        return calls(e.checkpoint), e

    hour, _ = run(NOON - 3 * 3600)
    years, e = run(datetime(2015, 6, 1, tzinfo=CST).timestamp())
    assert e.partition_wm[(FOOD, 0)] >= NOON  # the clock followed the live events
    assert years <= 2 * hour + 5000, (hour, years)


# ------------------------------------------------------- issue 9 kind 1, other examples of the kind (breaker)
ROAD = "traffic.road-detectors"


def detector(i: int, ts: float, source: str = "rd-1") -> bytes:
    return json.dumps({"event_id": f"d{i}", "ts": iso(ts), "source": source, "segment": "S1", "flow": 3,
                       "speed_kmh": 30.0, "occupancy": 0.3, "interval_s": 60}).encode()


@pytest.mark.parametrize("topic", [TAPS, ROAD, HEALTH])
def test_a_far_ahead_event_as_the_first_record_of_a_partition_makes_no_on_time_event_late(topic: str) -> None:
    """The first record of a partition is dated a day ahead (a wrong clock), seven on-time events follow: none
    is late, and the far-ahead event is counted in its own window, not lost."""
    mk = {TAPS: tap, ROAD: detector, HEALTH: visit}[topic]
    e = make()
    e.process(topic, 0, 0, mk(10, T0 + DAY, source="bad"))
    for i in range(7):
        e.process(topic, 0, 1 + i, mk(20 + i, T0 + 30, source=f"g{i % 3}"))
    assert e.counts[(topic, "late")] == 0 and e.counts[(topic, "accepted")] == 8
    assert e.partition_wm[(topic, 0)] == T0 + 30
    if topic == TAPS:
        assert taps_in(e, T0) == 7 and taps_in(e, T0 + DAY) == 1


def test_two_wrong_clocks_that_disagree_do_not_corroborate_each_other() -> None:
    """Two readers far ahead by different amounts (a day, two days) among live ones: 7 taps_in at 00:00."""
    e = make()
    off = 0
    for i in range(3):
        e.process(TAPS, 0, off, tap(i, T0 + 1, source=f"g{i}")); off += 1
    e.process(TAPS, 0, off, tap(10, T0 + DAY, source="bad1")); off += 1
    e.process(TAPS, 0, off, tap(11, T0 + 2 * DAY, source="bad2")); off += 1
    for i in range(4):
        e.process(TAPS, 0, off, tap(20 + i, T0 + 30, source=f"g{i % 3}")); off += 1
    assert taps_in(e, T0) == 7 and e.counts[(TAPS, "late")] == 0
    assert e.partition_wm[(TAPS, 0)] == T0 + 30


def test_a_sparse_stream_after_a_real_jump_follows_once_three_sources_passed_it() -> None:
    """After a quiet night the first events come 20 min apart (wider than the jump): three sources corroborate."""
    e = make()
    for i in range(3):
        e.process(TAPS, 0, i, tap(i, T0 + i, source=f"gate-{i}"))
    for j in range(3):
        e.process(TAPS, 0, 3 + j, tap(10 + j, T0 + 8 * 3600 + 1200 * j, source=f"gate-{j}"))
    assert e.partition_wm[(TAPS, 0)] == T0 + 8 * 3600


def test_a_provisional_first_clock_survives_a_restart(tmp_path: Path) -> None:
    """The provisional state is part of the partition clock's state: a restart between the first and the second
    record decides the same."""
    e = make(StateStore(tmp_path).open())
    e.process(TAPS, 0, 0, tap(10, T0 + DAY, source="bad"))
    e.checkpoint()
    e.store.close()
    e2 = make(StateStore(tmp_path).open())
    e2.process(TAPS, 0, 1, tap(20, T0 + 30))
    assert e2.counts[(TAPS, "late")] == 0 and e2.partition_wm[(TAPS, 0)] == T0 + 30


def test_two_sparse_sources_after_a_real_jump_are_followed() -> None:
    """Two sources only, alternating, their events 20 min apart after a quiet night (wider than the jump): the
    clock follows, at most two events behind — never stuck (windows close, the rules' clock moves)."""
    e = make()
    for i in range(2):
        e.process(TAPS, 0, i, tap(i, T0 + i, source=f"gate-{i}"))
    night = T0 + 8 * 3600
    for j in range(12):
        e.process(TAPS, 0, 2 + j, tap(10 + j, night + 1200 * j, source=f"gate-{j % 2}"))
        if j >= 2:
            assert e.partition_wm[(TAPS, 0)] >= night + 1200 * (j - 2)
    assert e.counts[(TAPS, "late")] == 0


def test_a_single_event_first_record_on_the_food_stream_is_not_undone_by_an_upload_within_lateness() -> None:
    """The first record holds one event (12:00); the market's upload (08:00–11:00) is within the food lateness:
    the first event's clock stands (only a second event it would make late undoes it) and nothing is late."""
    e = make(food=True, clock=[NOON + 3600], stream_lateness_s={FOOD: 7 * DAY})
    current, upload, _lots = slaughterhouse_and_market(1)
    first = json.loads(current)
    first["epcisBody"]["eventList"] = first["epcisBody"]["eventList"][:1]
    e.process(FOOD, 0, 0, json.dumps(first).encode())
    e.process(FOOD, 0, 1, upload)
    assert e.partition_wm[(FOOD, 0)] == NOON and e.counts[(FOOD, "late")] == 0
