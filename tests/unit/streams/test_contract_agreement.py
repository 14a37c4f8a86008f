"""One contract: each city stream's decoder accepts exactly the events its published schema accepts.

Documents are generated from every streams/<topic>/schema.json (hypothesis-jsonschema) and must all be
accepted; mutated documents (a field set to another JSON value, removed, a time near RFC 3339, a number in
another spelling) must be accepted exactly when the schema accepts them. The schema's judge is
jsonschema-rs with format assertion (the validator the EPCIS stream uses), since the contract asserts
``format: date-time``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityops.engine.context import Decoded, Rejected
from cityops.streams.city_streams import STREAM_CLASSES, Pseudonymizer
from cityops.streams.contracts import CONTRACTS_DIR
from cityops.streams.models import MODELS
from cityops.streams.times import rfc3339_seconds
from tests.jsonschema_strategies import from_schema, json_values, near_date_times, numbers

TOPICS = sorted(MODELS)
SCHEMAS = {t: json.loads((CONTRACTS_DIR / t / "schema.json").read_text()) for t in TOPICS}
VALIDATORS = {t: jsonschema_rs.validator_for(SCHEMAS[t], validate_formats=True) for t in TOPICS}
STREAMS = {t: STREAM_CLASSES[t](t, t, Pseudonymizer(b"contract-agreement-key")) for t in TOPICS}
SAMPLES = {t: [json.loads(x) for x in (CONTRACTS_DIR / t / "samples.jsonl").read_text().splitlines()]
           for t in TOPICS}
GENERATED = {t: from_schema(SCHEMAS[t]) for t in TOPICS}

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def decode(topic: str, value: Any, *, ascii_only: bool = True) -> list[Decoded | Rejected]:
    return STREAMS[topic].decode(json.dumps(value, ensure_ascii=ascii_only).encode())


def accepted(results: list[Decoded | Rejected]) -> list[bool]:
    return [type(r) is Decoded for r in results]


def schema_accepts(topic: str, doc: Any) -> bool:
    return bool(VALIDATORS[topic].is_valid(doc))


# -- the example (issue 9, kind 7) -------------------------------------------------------------------

def test_interval_given_as_60_0_is_an_integer_for_schema_and_decoder() -> None:
    topic = "traffic.road-detectors"
    doc = dict(SAMPLES[topic][0], interval_s=60.0)
    assert schema_accepts(topic, doc)
    [res] = decode(topic, doc)
    assert type(res) is Decoded, res
    assert res.event.interval_s == 60 and type(res.event.interval_s) is int  # InfluxDB field type stays int


@pytest.mark.parametrize("spelling, ok", [
    ("60", True), ("60.0", True), ("6e1", True), ("6.0E+1", True), ("600e-1", True), ("60.000000", True),
    ("60.5", False), ("0", False), ("0.0", False), ("-0.0", False), ("86400.0", True), ("86401.0", False),
    ("1e400", False), ("\"60\"", False), ("true", False), ("null", False),
])
def test_every_spelling_of_an_integer(spelling: str, ok: bool) -> None:
    topic = "traffic.road-detectors"
    good = json.dumps(SAMPLES[topic][0])
    text = json.dumps(dict(SAMPLES[topic][0], interval_s="@")).replace('"@"', spelling)
    assert schema_accepts(topic, json.loads(text)) == ok
    # Alone, and as the middle element of a batch (the batch takes the element-by-element path).
    assert accepted(STREAMS[topic].decode(text.encode())) == [ok]
    batch = f"[{good}, {text}, {good}]".replace('"event_id": "', '"event_id": "x', 1)
    assert accepted(STREAMS[topic].decode(batch.encode())) == [True, ok, True]


def test_flow_given_as_float_keeps_its_integer_type() -> None:
    topic = "traffic.road-detectors"
    batch = [dict(SAMPLES[topic][0], flow=12.0, event_id="f1"), dict(SAMPLES[topic][1], flow=3, event_id="f2")]
    results = decode(topic, batch)
    assert accepted(results) == [True, True]
    assert [type(r.event.flow) for r in results] == [int, int]  # type: ignore[union-attr]


@pytest.mark.parametrize("topic", TOPICS)
def test_a_leap_second_is_accepted_in_ts(topic: str) -> None:
    doc = dict(SAMPLES[topic][0], ts="2016-12-31T23:59:60Z")
    assert schema_accepts(topic, doc)
    [res] = decode(topic, doc)
    assert type(res) is Decoded
    assert res.ts == pytest.approx(1483228800 - 1e-6, abs=1e-7)


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("ts", ["2026-11-25 08:00:00+08:00", "2026-11-25T08:00:00+0800", "2026-11-25T08:00:00",
                                "2026-02-30T08:00:00Z", "2026-11-25T12:00:60Z"])
def test_times_the_format_rejects_are_rejected(topic: str, ts: str) -> None:
    doc = dict(SAMPLES[topic][0], ts=ts)
    assert not schema_accepts(topic, doc)
    [res] = decode(topic, doc)
    assert type(res) is Rejected and "$.ts" in res.reason and res.reason.startswith("contract:"), res


@pytest.mark.parametrize("topic", TOPICS)
def test_sig_with_a_trailing_newline_is_rejected_by_both(topic: str) -> None:
    doc = dict(SAMPLES[topic][0], sig="ab" * 32 + "\n")
    assert not schema_accepts(topic, doc)
    assert accepted(decode(topic, doc)) == [False]
    assert accepted(decode(topic, dict(doc, sig="ab" * 32))) == [True]


# -- generated from each schema -----------------------------------------------------------------------------

@pytest.mark.parametrize("topic", TOPICS)
@SETTINGS
@given(data=st.data())
def test_every_document_the_schema_generates_is_decoded(topic: str, data: st.DataObject) -> None:
    doc = data.draw(GENERATED[topic], label="doc")
    assert schema_accepts(topic, doc)
    ascii_only = data.draw(st.booleans(), label="ascii")
    [res] = decode(topic, doc, ascii_only=ascii_only)
    assert type(res) is Decoded, (res, doc)
    # The decoded event holds the document's values (integers as ints; the time as its instant).
    for name, value in doc.items():
        if name in MODELS[topic].__struct_fields__ and name not in ("card_id", "ts"):
            assert getattr(res.event, name) == value
    assert res.ts == rfc3339_seconds(doc["ts"]) == rfc3339_seconds(res.event.ts)


@pytest.mark.parametrize("topic", TOPICS)
@SETTINGS
@given(data=st.data())
def test_generated_batches_are_decoded_whole(topic: str, data: st.DataObject) -> None:
    docs = data.draw(st.lists(GENERATED[topic], min_size=1, max_size=3), label="docs")
    results = decode(topic, docs)
    assert accepted(results) == [True] * len(docs)
    assert [r.index for r in results] == list(range(len(docs)))


def _mutations(topic: str) -> st.SearchStrategy[tuple[str, Any]]:
    props = sorted(SCHEMAS[topic]["properties"])
    value = st.one_of(json_values, numbers, near_date_times, st.integers(-5, 5).map(float))
    return st.one_of(
        st.tuples(st.sampled_from(props), value).map(lambda kv: ("set", kv)),
        st.sampled_from(props).map(lambda k: ("del", k)),
        st.just("ts").map(lambda k: ("set", (k, None))).flatmap(
            lambda _: near_date_times.map(lambda v: ("set", ("ts", v)))),
        st.tuples(st.text(min_size=1, max_size=8).filter(lambda k: k not in props), json_values)
        .map(lambda kv: ("set", kv)),
    )


def _apply(doc: dict[str, Any], mutation: tuple[str, Any]) -> dict[str, Any]:
    kind, arg = mutation
    out = dict(doc)
    if kind == "del":
        out.pop(arg, None)
    else:
        out[arg[0]] = arg[1]
    return out


@pytest.mark.parametrize("topic", TOPICS)
@settings(SETTINGS, max_examples=200)
@given(data=st.data())
def test_mutated_documents_are_accepted_exactly_when_the_schema_accepts_them(
        topic: str, data: st.DataObject) -> None:
    doc = data.draw(st.one_of(GENERATED[topic], st.sampled_from(SAMPLES[topic])), label="doc")
    mutations = data.draw(st.lists(_mutations(topic), min_size=1, max_size=3), label="mutations")
    for m in mutations:
        doc = _apply(doc, m)
    expected = schema_accepts(topic, doc)
    [res] = decode(topic, doc)
    assert (type(res) is Decoded) == expected, (expected, res, doc)
    if not expected:
        assert res.reason.startswith("contract:"), res  # type: ignore[union-attr]
    # The same element inside a batch of good events: judged the same, the others untouched.
    good = SAMPLES[topic][0]
    results = decode(topic, [good, doc, good])
    assert accepted(results) == [True, expected, True]
    if not expected:
        assert results[1].index == 1 and "$[1]" in results[1].reason, results[1]  # type: ignore[union-attr]
