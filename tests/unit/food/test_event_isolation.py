"""Per-event isolation in EPCIS messages (issue 9, kind 5) and the decoder's post-schema parsing (kind 7).

Any error while decoding one event of a document (eventList), a query document (resultsBody) or inside an
event (sensorElementList) rejects that event alone, with its index and JSON Pointer; the others count. A
schema-valid event is rejected after the schema only by a documented cityops rule.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cityops.engine.context import Decoded, Rejected
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.food import stream as food_stream
from cityops.food.epcis import event_identity
from cityops.food.stream import FoodStream
from cityops.simulate.food import generate
from cityops.streams.times import rfc3339_seconds
from tests.jsonschema_strategies import json_values, near_date_times, numbers

FOOD = "food.trace-events"
CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
STREAM = FoodStream()
LEAP = datetime(2017, 1, 1, tzinfo=timezone.utc).timestamp() - 1e-6  # 2016-12-31T23:59:59.999999Z
# cityops rules that may reject a schema-valid event (streams/food.trace-events/README.md).
RULES = ("cityops rule: lone surrogate", "cityops rule: number beyond the range of a double",
         "cityops rule: temperature")


def event(n: int, t: str, **kw: Any) -> dict[str, Any]:
    ev = {"type": "ObjectEvent", "eventTime": t, "eventTimeZoneOffset": "+00:00", "action": "OBSERVE",
          "epcList": [f"urn:epc:id:sgtin:6901003.010000.{n}"], "bizStep": "shipping",
          "readPoint": {"id": "urn:epc:id:sgln:6901003.00001.0"}}
    ev.update(kw)
    return ev


def document(events: list[dict[str, Any]], *, query: bool = False) -> dict[str, Any]:
    if query:
        body: dict[str, Any] = {"queryResults": {"queryName": "SimpleEventQuery",
                                                 "resultsBody": {"eventList": events}}}
        return {"@context": CTX, "type": "EPCISQueryDocument", "schemaVersion": "2.0",
                "creationDate": "2017-01-01T00:00:00Z", "epcisBody": body}
    return {"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2017-01-01T00:00:00Z", "epcisBody": {"eventList": events}}


def decode(doc: Any) -> list[Decoded | Rejected]:
    return STREAM.decode(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc)


# -- the example ------------------------------------------------------------------------------------

def test_leap_second_event_and_its_neighbour_both_count() -> None:
    doc = document([event(1, "2016-12-31T23:58:00Z"), event(2, "2016-12-31T23:59:60Z")])
    assert STREAM.validator.is_valid(doc)  # valid against the official schema
    results = decode(doc)
    assert [type(r) for r in results] == [Decoded, Decoded], results
    assert results[0].ts == datetime(2016, 12, 31, 23, 58, tzinfo=timezone.utc).timestamp()
    assert results[1].ts == pytest.approx(LEAP, abs=1e-7)
    assert int(results[1].ts // 60) * 60 == datetime(2016, 12, 31, 23, 59, tzinfo=timezone.utc).timestamp()
    assert [r.index for r in results] == [0, 1]


@pytest.mark.parametrize("t", ["2016-12-31T23:59:60.999Z", "2017-01-01T07:59:60+08:00", "2016-12-31T15:59:60-08:00"])
def test_leap_second_in_every_spelling(t: str) -> None:
    [res] = decode(document([event(1, t)]))
    assert type(res) is Decoded and res.ts == pytest.approx(LEAP, abs=1e-7)


def test_leap_second_in_other_times_of_the_event_is_accepted() -> None:
    ev = event(1, "2016-12-31T23:59:59Z", recordTime="2016-12-31T23:59:60Z",
               errorDeclaration={"declarationTime": "2017-01-01T07:59:60.25+08:00",
                                 "reason": "incorrect_data"},
               sensorElementList=[{"sensorMetadata": {"time": "2016-12-31T23:59:60Z"},
                                   "sensorReport": [{"type": "Temperature", "value": 2.0, "uom": "CEL",
                                                     "time": "2016-12-31T23:59:60.5Z"}]}])
    doc = document([ev, event(2, "2016-12-31T23:59:60Z")])
    assert STREAM.validator.is_valid(doc)
    assert [type(r) for r in decode(doc)] == [Decoded, Decoded]


# -- every depth -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query", [False, True])
def test_a_schema_error_rejects_its_event_alone_with_its_path(query: bool) -> None:
    doc = document([event(1, "2016-12-31T23:58:00Z"), event(2, "yesterday"), event(3, "2016-12-31T23:59:60Z")],
                   query=query)
    results = decode(doc)
    assert [type(r) for r in results] == [Decoded, Rejected, Decoded]
    bad = results[1]
    prefix = "/epcisBody/queryResults/resultsBody/eventList" if query else "/epcisBody/eventList"
    assert bad.index == 1 and bad.path == f"{prefix}/1"
    assert f"{prefix}/1/eventTime" in bad.reason


@pytest.mark.parametrize("query", [False, True])
def test_a_bad_sensor_reading_rejects_its_event_alone(query: bool) -> None:
    readings = [{"sensorReport": [{"type": "Temperature", "value": 2.0}]},
                {"sensorReport": [{"type": "Temperature", "value": "@"}]}]
    doc = document([event(1, "2016-12-31T23:58:00Z"), event(2, "2016-12-31T23:58:30Z", sensorElementList=readings),
                    event(3, "2016-12-31T23:59:00Z")], query=query)
    prefix = "/epcisBody/queryResults/resultsBody/eventList" if query else "/epcisBody/eventList"
    for raw_value in (b"1e400", b"-1e400", b"1" + b"0" * 400):
        raw = json.dumps(doc).encode().replace(b'"@"', raw_value)
        results = STREAM.decode(raw)
        assert [type(r) for r in results] == [Decoded, Rejected, Decoded], (raw_value, results)
        assert results[1].path == f"{prefix}/1"
        assert f"{prefix}/1/sensorElementList/1/sensorReport/0/value" in results[1].reason
        assert results[1].reason.startswith("cityops rule: number beyond the range of a double")


def test_a_lone_surrogate_rejects_its_event_alone_and_in_the_envelope_the_message() -> None:
    doc = document([event(1, "2016-12-31T23:58:00Z"), event(2, "2016-12-31T23:58:30Z", bizLocation={"id": "@"}),
                    event(3, "2016-12-31T23:59:00Z")])
    raw = json.dumps(doc).encode().replace(b'"@"', b'"urn:x:\\ud800"')
    results = STREAM.decode(raw)
    assert [type(r) for r in results] == [Decoded, Rejected, Decoded]
    assert "/epcisBody/eventList/1/bizLocation/id" in results[1].reason
    envelope = json.dumps(dict(document([event(1, "2016-12-31T23:58:00Z")]), **{"ext:x": "@"})).encode()
    [whole] = STREAM.decode(envelope.replace(b'"@"', b'"\\udfff"'))
    assert type(whole) is Rejected and whole.index is None and "lone surrogate" in whole.reason


def test_any_error_after_the_schema_rejects_that_event_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = food_stream.normalise

    def flaky(ev: dict[str, Any]) -> dict[str, Any]:
        if ev["epcList"][0].endswith(".2"):
            raise KeyError("boom")
        return real(ev)

    monkeypatch.setattr(food_stream, "normalise", flaky)
    results = decode(document([event(1, "2016-12-31T23:58:00Z"), event(2, "2016-12-31T23:58:30Z"),
                               event(3, "2016-12-31T23:59:00Z")], query=True))
    assert [type(r) for r in results] == [Decoded, Rejected, Decoded]
    assert results[1].reason == ("decoder error at /epcisBody/queryResults/resultsBody/eventList/1: "
                                 "KeyError: 'boom'")


def test_an_error_while_applying_one_event_dead_letters_it_alone_and_a_resend_counts() -> None:
    class Fragile(FoodStream):
        fail = True

        def apply(self, ev: Decoded, ctx: Any) -> None:
            if self.fail and ev.index == 1:
                raise RuntimeError("apply failed")
            super().apply(ev, ctx)

    stream = Fragile()
    engine = Engine(StateStore(None), [stream], now=lambda: 1483228800.0 + 60)
    doc = document([event(1, "2016-12-31T23:58:00Z", eventID="urn:uuid:1"),
                    event(2, "2016-12-31T23:58:30Z", eventID="urn:uuid:2"),
                    event(3, "2016-12-31T23:59:60Z", eventID="urn:uuid:3")])
    engine.process(FOOD, 0, 0, json.dumps(doc).encode())
    assert engine.counts[(FOOD, "accepted")] == 2 and engine.counts[(FOOD, "invalid")] == 1
    engine.checkpoint()
    [(_seq, letter)] = engine.pending_dead_letters()
    assert letter["index"] == 1 and "apply failed" in letter["reason"]
    stream.fail = False  # the producer re-sends the event once the fault is fixed: it counts, not a duplicate
    engine.process(FOOD, 0, 1, json.dumps(document([doc["epcisBody"]["eventList"][1]])).encode())
    assert engine.counts[(FOOD, "accepted")] == 3 and engine.counts.get((FOOD, "duplicate"), 0) == 0


# -- fuzz: one corrupted event never costs the others -------------------------------------------------------

def _simulated_events(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _topic, doc in generate(seed=3, start=datetime(2026, 11, 25, 8, tzinfo=timezone.utc), duration_s=600,
                                batch=20):
        assert isinstance(doc, dict)
        out.extend(doc["epcisBody"]["eventList"])
        if len(out) >= n:
            break
    return out[:n]


EVENTS = _simulated_events(40)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = root
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return root


def _delete(root: Any, path: tuple[Any, ...]) -> Any:
    parent = root
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]
    return root


# Text the JSON value model cannot carry, put in place by marker: valid JSON that strict parsers refuse.
RAW_VALUES = [b"1e400", b"-1e400", b"1" + b"0" * 400, b'"\\ud800"', b'"a\\udc00b"', b"-0.0", b"1E-400",
              b'"2016-12-31T23:59:60Z"']


@st.composite
def corrupted_documents(draw: st.DrawFn) -> tuple[bytes, int, int, bool]:
    n = draw(st.integers(1, 6), label="events")
    start = draw(st.integers(0, len(EVENTS) - n), label="start")
    events = copy.deepcopy(EVENTS[start:start + n])
    victim = draw(st.integers(0, n - 1), label="victim")
    query = draw(st.booleans(), label="query")
    ev = events[victim]
    raw_value = None
    for _ in range(draw(st.integers(1, 3), label="corruptions")):
        paths = _paths(ev)
        path = draw(st.sampled_from(paths), label="path")
        how = draw(st.sampled_from(["set", "delete", "raw", "time"]), label="how")
        if how == "delete" and path:
            ev = _delete(ev, path)
        elif how == "raw" and isinstance(ev, dict):
            ev["ext:fuzz" if not path or not isinstance(path[0], str) else path[0]] = "@@fuzz@@"
            raw_value = draw(st.sampled_from(RAW_VALUES), label="raw")
        elif how == "time" and isinstance(ev, dict):
            ev["eventTime"] = draw(near_date_times, label="time")
        else:
            ev = _set(ev, path, draw(json_values, label="value"))
    events[victim] = ev
    raw = json.dumps(document(events, query=query)).encode()
    if raw_value is not None:
        raw = raw.replace(b'"@@fuzz@@"', raw_value)
    return raw, victim, n, query


CLEAN = {i: r for i, r in enumerate(STREAM.decode(json.dumps(document(EVENTS)).encode()))}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(corrupted_documents(), st.data())
def test_one_corrupted_event_never_loses_the_others(case: tuple[bytes, int, int, bool], data: st.DataObject) -> None:
    raw, victim, n, query = case
    assert all(type(r) is Decoded for r in CLEAN.values())
    results = STREAM.decode(raw)
    assert len(results) == n and [r.index for r in results] == list(range(n)), results
    for i, res in enumerate(results):
        if i == victim:
            if type(res) is Rejected:
                prefix = "/epcisBody/queryResults/resultsBody/eventList" if query else "/epcisBody/eventList"
                assert res.path == f"{prefix}/{i}" and res.reason
            continue
        assert type(res) is Decoded, (i, res)
    # Through the engine: never raises; every event is either counted or dead-lettered alone.
    engine = Engine(StateStore(None), [FoodStream()], now=lambda: 1795564800.0 + 3600,
                    allowed_lateness_s=10 * 365 * 86400.0)
    engine.process(FOOD, 0, 0, raw)
    outcomes = {outcome: k for (topic, outcome), k in engine.counts.items() if topic == FOOD}
    assert sum(outcomes.values()) == n, outcomes  # each event has exactly one outcome (late ones included)
    engine.checkpoint()
    letters = [letter for _s, letter in engine.pending_dead_letters()]
    assert len(letters) <= 1 and all(letter["index"] == victim for letter in letters), letters


# -- post-schema parsing never rejects a schema-valid event (except the documented rules) -------------------

@st.composite
def schema_valid_variants(draw: st.DrawFn) -> dict[str, Any]:
    ev = copy.deepcopy(draw(st.sampled_from(EVENTS), label="event"))
    for _ in range(draw(st.integers(1, 4), label="changes")):
        kind = draw(st.sampled_from(["eventTime", "recordTime", "extension", "sensor", "bizStep", "ids",
                                     "disposition", "offset"]), label="kind")
        if kind in ("eventTime", "recordTime"):
            ev[kind] = draw(near_date_times, label=kind)
        elif kind == "extension":
            ev[draw(st.sampled_from(["ext:a", "cityops:b", "example:c"]), label="key")] = draw(json_values)
        elif kind == "sensor":
            report = {"type": draw(st.sampled_from(["Temperature", "gs1:Temperature", "Humidity", "gs1:MT-Mass"])),
                      draw(st.sampled_from(["value", "meanValue", "minValue", "maxValue"])): draw(numbers)}
            uom = draw(st.sampled_from([None, "CEL", "FAH", "KEL", "KGM", "XYZ"]))
            if uom:
                report["uom"] = uom
            if draw(st.booleans()):
                report["time"] = draw(near_date_times)
            ev["sensorElementList"] = [{"sensorReport": [report]}]
        elif kind == "bizStep":
            ev["bizStep"] = draw(st.one_of(st.sampled_from(["receiving", "https://ref.gs1.org/cbv/BizStep-shipping",
                                                            "urn:epcglobal:cbv:bizstep:shipping", "ext:step"]),
                                           st.text(max_size=20)))
        elif kind == "disposition":
            ev["disposition"] = draw(st.text(max_size=20))
        elif kind == "ids":
            ev["epcList"] = draw(st.lists(st.one_of(
                st.from_regex(r"urn:epc:id:sgtin:[0-9]{6,12}\.[0-9]{1,7}\.[0-9A-Za-z]{1,20}", fullmatch=True),
                st.from_regex(r"https://id\.gs1\.org/01/[0-9]{14}/21/[0-9A-Za-z]{1,20}", fullmatch=True),
                st.text(max_size=30)), max_size=3))
        else:
            ev["eventTimeZoneOffset"] = draw(st.from_regex(r"[+-][0-9]{2}:[0-9]{2}", fullmatch=True))
    return ev


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(schema_valid_variants(), st.booleans())
def test_a_schema_valid_event_is_decoded(ev: dict[str, Any], query: bool) -> None:
    doc = document([EVENTS[0], ev], query=query)
    assume(STREAM.validator.is_valid(doc))
    results = decode(doc)
    assert type(results[0]) is Decoded
    res = results[1]
    if type(res) is Rejected:
        assert res.reason.startswith(RULES), res.reason
        return
    assert res.event_id == event_identity(ev, CTX)
    assert res.ts == rfc3339_seconds(ev["eventTime"])
    assert len(res.digest) == 16
