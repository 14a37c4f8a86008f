"""Other examples of issue 9's kinds and issue 14's, checked in process (the issue's own examples are tested
elsewhere): each is one more input of a kind the fixes must cover, with its right value."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from cityops.engine.pipeline import Engine
from tests.unit.engine.test_batch_isolation import SAMPLES
from tests.unit.engine.test_clocks import (CTX, DAY, FOOD, HEALTH, MARKET, NOON, T0, TAPS, epcis,
                                           food_event, make, tap, visit)
from tests.workcount import calls

ROAD = "traffic.road-detectors"


def sample(topic: str, event_id: str, **over: Any) -> dict[str, Any]:
    ev = copy.deepcopy(SAMPLES[topic][0])
    ev["event_id"] = event_id
    ev.update(over)
    return ev


def run(topic: str, raw: bytes, **kw: Any) -> tuple[Engine, list[dict[str, Any]]]:
    e = make(food=topic == FOOD, clock=[NOON + 3600], **kw)
    e.process(topic, 0, 0, raw)
    e.checkpoint()
    return e, [letter for _seq, letter in e.pending_dead_letters()]


# --------------------------------------------------------------- kind 3: times InfluxDB cannot store, any stream
@pytest.mark.parametrize("topic", [ROAD, HEALTH])
@pytest.mark.parametrize("ts", ["1500-01-01T00:00:00Z", "1677-09-21T00:12:44Z", "2262-04-11T23:59:00Z",
                                "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59Z"])
def test_an_unstorable_event_time_on_another_stream_is_dead_lettered_alone(topic: str, ts: str) -> None:
    """1677-09-21T00:12:44Z is storable itself, but its window starts before InfluxDB's minimum."""
    raw = json.dumps([sample(topic, "a", ts=ts), sample(topic, "b")]).encode()
    e, letters = run(topic, raw, allowed_lateness_s=1e12)
    assert e.counts[(topic, "accepted")] == 1 and e.counts[(topic, "invalid")] == 1
    [letter] = letters
    assert letter["index"] == 0 and "outside InfluxDB's range" in letter["reason"]


def good_food(n: int, **kw: Any) -> dict[str, Any]:
    return food_event(n, NOON, "receiving", classes=["urn:epc:class:lgtin:6901001.020001.L1"],
                      bizLocation={"id": MARKET}, **kw)


def test_an_epcis_event_from_1500_is_dead_lettered_alone() -> None:
    bad = good_food(2)
    bad["eventTime"] = "1500-01-01T00:00:00+08:00"
    e, letters = run(FOOD, epcis([good_food(1), bad]), stream_lateness_s={FOOD: 7 * DAY})
    assert e.counts[(FOOD, "accepted")] == 1
    [letter] = letters
    assert letter["index"] == 1 and "outside InfluxDB's range" in letter["reason"]


# ------------------------------------------------------------- kind 5: leap seconds with offsets, other nesting
@pytest.mark.parametrize("topic", [TAPS, ROAD, HEALTH])
@pytest.mark.parametrize("ts", ["2017-01-01T07:59:60+08:00", "1998-12-31T15:59:60-08:00",
                                "2016-12-31t23:59:60.999z"])
def test_a_leap_second_with_an_offset_is_accepted(topic: str, ts: str) -> None:
    raw = json.dumps([sample(topic, "a", ts=ts), sample(topic, "b")]).encode()
    e, letters = run(topic, raw, allowed_lateness_s=1e12)
    assert e.counts[(topic, "accepted")] == 2 and letters == []


def test_epcis_query_document_isolates_a_bad_event_and_accepts_a_leap_second() -> None:
    """An EPCISQueryDocument (events under queryResults/resultsBody): a leap second at 23:59:60Z is accepted, a
    :60 that is not a leap second (21:59:60Z) rejects its event alone, with its index."""
    events = [good_food(1), dict(good_food(2), eventTime="2016-12-31T23:59:60Z"),
              dict(good_food(3), eventTime="2016-12-31T21:59:60Z")]
    doc = {"@context": CTX, "type": "EPCISQueryDocument", "schemaVersion": "2.0",
           "creationDate": "2026-11-25T12:00:00+08:00",
           "epcisBody": {"queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": events}}}}
    e, letters = run(FOOD, json.dumps(doc).encode(), stream_lateness_s={FOOD: 1e12})
    assert e.counts[(FOOD, "accepted")] == 2
    [letter] = letters
    assert letter["index"] == 2


@pytest.mark.parametrize("where", ["quantity", "sensor", "child", "offset"])
def test_a_bad_value_deep_in_one_epcis_event_rejects_it_alone(where: str) -> None:
    bad = good_food(2)
    if where == "quantity":
        bad["quantityList"].append({"epcClass": "urn:epc:class:lgtin:6901001.020001.L2", "quantity": "lots"})
    elif where == "sensor":
        bad["sensorElementList"] = [
            {"sensorReport": [{"type": "gs1:Temperature", "value": 3.0, "uom": "CEL"}]},
            {"sensorReport": [{"type": "gs1:Temperature", "value": "cold"}]}]
    elif where == "child":
        bad.update(type="AggregationEvent", action="ADD", parentID="urn:epc:id:sscc:6901001.0000000001",
                   childEPCs=["urn:epc:id:sgtin:6901001.010000.1", 7])
        bad.pop("epcList", None)
    else:
        bad["eventTimeZoneOffset"] = "+25:00"
    e, letters = run(FOOD, epcis([good_food(1), bad]), stream_lateness_s={FOOD: 7 * DAY})
    assert e.counts[(FOOD, "accepted")] == 1
    [letter] = letters
    assert letter["index"] == 1


def test_an_infinite_temperature_in_the_first_event_rejects_it_alone() -> None:
    reading = [{"sensorReport": [{"type": "gs1:Temperature", "value": 0}]}]
    raw = epcis([dict(good_food(1), sensorElementList=reading), good_food(2)]).replace(b'"value": 0}',
                                                                                      b'"value": -1e400}')
    e, letters = run(FOOD, raw, stream_lateness_s={FOOD: 7 * DAY})
    assert e.counts[(FOOD, "accepted")] == 1
    [letter] = letters
    assert letter["index"] == 0 and "sensorReport/0/value" in letter["reason"]


# ---------------------------------------------------------------- issue 14: a very old event after live ones
@pytest.mark.parametrize("topic", [HEALTH, TAPS])
def test_an_event_from_1700_after_live_ones_costs_what_an_hour_old_one_costs(topic: str) -> None:
    from types import SimpleNamespace

    from cityops.alerts.wiring import build_alerting, default_rules_dir
    from cityops.engine.state import StateStore

    mk = {TAPS: tap, HEALTH: visit}[topic]
    now = T0 + 60

    def cost(age_s: float) -> int:
        settings = SimpleNamespace(rules_dir=default_rules_dir(), source_registry="none", runbook_base="",
                                   web_host="127.0.0.1", web_port=1, alertmanager_url=None)
        store = StateStore(None)
        alerts, rules, gate = build_alerting(settings, store)
        e = make(store, signals=alerts, rules=rules, registry=gate, clock=[now])
        for j in range(3):
            e.process(topic, 0, j, mk(j + 1, now - 10 + j, source=f"s{j}"), now)
        e.checkpoint()
        e.process(topic, 0, 3, mk(99, now - age_s, source="old"), now)  # late: still reaches the rules
        n = calls(e.checkpoint)
        for j in range(3):
            e.process(topic, 0, 4 + j, mk(50 + j, now + 60 + j, source=f"s{j}"), now + 120)
        assert e.counts[(topic, "late")] == 1
        return n + calls(e.checkpoint)

    hour = cost(3600.0)
    old = cost(now - datetime(1700, 1, 1, tzinfo=timezone.utc).timestamp())
    assert old <= 2 * hour + 5000, (hour, old)


@pytest.mark.parametrize("topic", [TAPS, ROAD, HEALTH])
def test_an_element_nested_deeper_than_parsers_go_is_rejected_alone(topic: str) -> None:
    """Kind 5, other nesting: one element of a batch carries an extra field nested 5000 levels deep (valid JSON,
    valid against the contract's schema, beyond orjson's 1024 levels and Python's recursion limit). It was the
    whole batch (`decoder error: RecursionError`); now it is that element alone, and the other one counts."""
    deep = json.dumps(sample(topic, "a"))[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    raw = f"[{deep}, {json.dumps(sample(topic, 'b'))}]".encode()
    e, letters = run(topic, raw, allowed_lateness_s=1e12)
    assert e.counts[(topic, "accepted")] == 1 and e.counts[(topic, "invalid")] == 1
    [letter] = letters
    assert letter["index"] == 0 and "nested deeper" in letter["reason"]
