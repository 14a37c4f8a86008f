"""Per-event isolation in the city streams' batches (issue 9, kind 5): one bad element costs only itself.

Any error while decoding or applying one element of a JSON array (contract, time, text, numbers, a decoder
or apply bug) dead-letters that element alone, with its batch index and JSON Pointer; the rest count, and
the engine never raises.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityops.engine.context import Decoded, Rejected
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.streams.city_streams import STREAM_CLASSES, Pseudonymizer
from cityops.streams.contracts import CONTRACTS_DIR
from tests.jsonschema_strategies import json_values, near_date_times

TOPICS = sorted(STREAM_CLASSES)
SAMPLES = {t: [json.loads(x) for x in (CONTRACTS_DIR / t / "samples.jsonl").read_text().splitlines()]
           for t in TOPICS}
NOW = 1795564800.0 + 86400  # 2026-11-26T00:00:00Z, after every sample
KEY = b"isolation-test-key-0123"


def engine(**kw: Any) -> Engine:
    ps = Pseudonymizer(KEY)
    return Engine(StateStore(None), [cls(t, t, ps) for t, cls in STREAM_CLASSES.items()], now=lambda: NOW,
                  allowed_lateness_s=1e12, **kw)


def batch(topic: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ev = copy.deepcopy(SAMPLES[topic][i % len(SAMPLES[topic])])
        ev["event_id"] = f"iso-{i}"
        out.append(ev)
    return out


@pytest.mark.parametrize("topic", TOPICS)
def test_a_leap_second_and_a_broken_element_in_one_batch(topic: str) -> None:
    events = batch(topic, 3)
    events[0]["ts"] = "2016-12-31T23:59:60Z"
    events[1]["event_id"] = None
    e = engine()
    e.process(topic, 0, 0, json.dumps(events).encode())
    assert e.counts[(topic, "accepted")] == 2 and e.counts[(topic, "invalid")] == 1
    e.checkpoint()
    [(_seq, letter)] = e.pending_dead_letters()
    assert letter["index"] == 1 and letter["path"] == "/1" and "$[1].event_id" in letter["reason"]


@pytest.mark.parametrize("topic", TOPICS)
def test_an_element_that_is_not_an_object(topic: str) -> None:
    events: list[Any] = batch(topic, 3)
    events[2] = [1, 2]
    results = STREAM_CLASSES[topic](topic, topic).decode(json.dumps(events).encode())
    assert [type(r) for r in results] == [Decoded, Decoded, Rejected]
    assert results[2].index == 2 and "$[2]" in results[2].reason


def test_a_decoder_error_in_one_element_rejects_it_alone() -> None:
    topic = "traffic.card-taps"

    def pseudonymize(card: str) -> str:
        if card.endswith("9"):
            raise RuntimeError("hash backend down")
        return "p-" + card[-4:]

    stream = STREAM_CLASSES[topic](topic, topic, pseudonymize)  # type: ignore[arg-type]
    events = batch(topic, 3)
    events[0]["card_id"] = "6222000000000001"
    events[1]["card_id"] = "6222000000000009"
    events[2]["card_id"] = "6222000000000002"
    results = stream.decode(json.dumps(events).encode())
    assert [type(r) for r in results] == [Decoded, Rejected, Decoded]
    assert results[1].reason == "decoder error at `$[1]`: RuntimeError: hash backend down"
    assert results[1].path == "/1"


def test_an_apply_error_dead_letters_one_element_and_a_resend_counts() -> None:
    topic = "traffic.road-detectors"
    e = engine()
    stream = e.streams[topic]
    real = stream.apply
    broken = {"on": True}

    def apply(ev: Decoded, ctx: Any) -> None:
        if broken["on"] and ev.event.segment == "boom":
            raise ZeroDivisionError("division by zero")
        real(ev, ctx)

    stream.apply = apply  # type: ignore[method-assign]
    events = batch(topic, 3)
    events[1]["segment"] = "boom"
    e.process(topic, 0, 0, json.dumps(events).encode())
    assert e.counts[(topic, "accepted")] == 2 and e.counts[(topic, "invalid")] == 1
    e.checkpoint()
    [(_s, letter)] = e.pending_dead_letters()
    assert letter["index"] == 1 and "path" not in letter and "ZeroDivisionError" in letter["reason"]
    broken["on"] = False
    e.process(topic, 0, 1, json.dumps(events[1]).encode())  # the same event, re-sent after the fix
    assert e.counts[(topic, "accepted")] == 3 and (topic, "duplicate") not in e.counts


# Text the JSON value model cannot carry, put in place by marker.
RAW_VALUES = [b"1e400", b"-1e400", b"1" + b"0" * 400, b'"\\ud800"', b'"x\\udfffy"', b"-0.0", b"6e1", b"1E-400",
              b"60.0", b"18446744073709551616"]


@st.composite
def corrupted_batches(draw: st.DrawFn) -> tuple[str, bytes, int, int]:
    topic = draw(st.sampled_from(TOPICS), label="topic")
    n = draw(st.integers(1, 6), label="n")
    events: list[Any] = batch(topic, n)
    victim = draw(st.integers(0, n - 1), label="victim")
    ev = events[victim]
    raw_value = None
    for _ in range(draw(st.integers(1, 3), label="corruptions")):
        how = draw(st.sampled_from(["set", "delete", "raw", "time", "replace"]), label="how")
        fields = sorted(ev) if isinstance(ev, dict) else []
        if how == "replace" or not fields:
            ev = draw(json_values, label="element")
        elif how == "delete":
            ev.pop(draw(st.sampled_from(fields)))
        elif how == "raw":
            ev[draw(st.sampled_from([*fields, "extra"]), label="field")] = "@@fuzz@@"
            raw_value = draw(st.sampled_from(RAW_VALUES), label="raw")
        elif how == "time":
            ev["ts"] = draw(near_date_times, label="ts")
        else:
            ev[draw(st.sampled_from([*fields, "extra"]), label="field")] = draw(json_values, label="value")
    events[victim] = ev
    raw = json.dumps(events).encode()
    if raw_value is not None:
        raw = raw.replace(b'"@@fuzz@@"', raw_value)
    return topic, raw, victim, n


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(corrupted_batches())
def test_one_corrupted_element_never_loses_the_others(case: tuple[str, bytes, int, int]) -> None:
    topic, raw, victim, n = case
    results = STREAM_CLASSES[topic](topic, topic, Pseudonymizer(KEY)).decode(raw)
    assert [r.index for r in results] == list(range(n)), results
    for i, res in enumerate(results):
        if i == victim:
            if type(res) is Rejected:
                assert res.path == f"/{i}" and f"$[{i}]" in res.reason, res
            continue
        assert type(res) is Decoded and res.event_id == f"iso-{i}", (i, res)
    e = engine()
    e.process(topic, 0, 0, raw)  # never raises
    outcomes = {o: k for (t, o), k in e.counts.items() if t == topic}
    assert sum(outcomes.values()) == n, outcomes
    e.checkpoint()
    letters = [letter for _s, letter in e.pending_dead_letters()]
    assert len(letters) <= 1 and all(letter["index"] == victim for letter in letters), letters


def test_a_signed_event_with_a_number_beyond_a_double_in_an_unknown_field_still_verifies() -> None:
    """The source registry reads the message as the decoder does: an infinite extra number is no error."""
    from cityops.alerts.sources import SourceRegistry, sign
    from cityops.alerts.wiring import RegistryGate

    topic = "traffic.card-taps"
    key = "ab" * 16
    reg = SourceRegistry.from_dict({"sources": {"reader-1": {"stream": topic, "must_sign": True, "key": key}}})
    events = batch(topic, 2)
    for ev in events:
        ev["source"] = "reader-1"
        ev["extra"] = float("inf")  # JSON `1e400`, read as infinity
        ev["sig"] = sign(bytes.fromhex(key), ev)
    raw = json.dumps(events).replace("Infinity", "1e400").encode()
    e = engine(registry=RegistryGate(reg))
    e.process(topic, 0, 0, raw)
    assert e.counts[(topic, "accepted")] == 2, dict(e.counts)
