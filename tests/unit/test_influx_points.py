"""Points line protocol cannot carry are refused with a reason, never sent as a silently shortened or empty line
(issue 9 kind 3, another example: a NaN or infinite field)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityops.engine.pipeline import Point
from cityops.sinks.influx import InfluxSink, to_line


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_field_is_not_left_out_of_the_line(bad: float) -> None:
    # influxdb-client drops such a field: {"value": nan} alone would be the empty line, stored as nothing.
    with pytest.raises(ValueError, match="value"):
        to_line(Point("alerts", {"entity": "a"}, {"summary": "s", "value": bad}, 1_795_564_800))
    assert to_line(Point("m", {}, {"value": 1.5}, 60)) == "m value=1.5 60"


def test_a_point_line_protocol_cannot_carry_is_handed_to_on_rejected_and_confirmed() -> None:
    refused: list[tuple[str, str, str]] = []
    # The URL is never contacted: nothing writable is pending.
    sink = InfluxSink("http://127.0.0.1:9", "db", on_rejected=lambda line, m, why: refused.append((line, m, why)))
    sink.add([Point("traffic_road", {"segment": "S1"}, {"speed_kmh": math.inf}, 1_795_564_800)])
    assert not sink.pending
    confirmed = asyncio.run(sink.flush())
    assert confirmed == [("traffic_road", {"segment": "S1"}, 1_795_564_800)]
    [(text, measurement, why)] = refused
    assert measurement == "traffic_road" and "speed_kmh" in why and "S1" in text
    assert sink.stats.rejected == 1
    assert asyncio.run(sink.flush()) == []  # handed back once


def test_without_a_dead_letter_output_an_unwritable_point_raises() -> None:
    sink = InfluxSink("http://127.0.0.1:9", "db")
    sink.add([Point("m", {}, {"v": math.nan}, 60)])
    with pytest.raises(Exception, match="no dead-letter output"):
        asyncio.run(sink.flush())


def _whole_point_line(point: Point) -> str:
    """The line as influxdb-client encodes the whole point in one go (to_line caches the series part)."""
    from influxdb_client import Point as InfluxPoint
    from influxdb_client import WritePrecision

    from cityops.sinks.influx import encode_tag

    p = InfluxPoint(point.measurement)
    for k, v in sorted(point.tags.items()):
        if v != "":
            p.tag(k, encode_tag(v))
    for k, v in point.fields.items():
        p.field(k, v)
    p.time(point.ts, WritePrecision.S)
    return p.to_line_protocol()


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(measurement=_text.filter(lambda m: m and not m.startswith("#")),
       tags=st.dictionaries(_text.filter(bool), _text, max_size=4),
       fields=st.dictionaries(_text.filter(bool), st.one_of(st.integers(-2**63, 2**63 - 1),
                                                           st.floats(allow_nan=False, allow_infinity=False),
                                                           _text, st.booleans()), max_size=4),
       ts=st.integers(-2**40, 2**40))
def test_to_line_writes_what_the_library_writes_for_the_whole_point(measurement: str, tags: dict[str, str],
                                                                    fields: dict[str, object], ts: int) -> None:
    point = Point(measurement, tags, fields, ts)  # type: ignore[arg-type]
    assert to_line(point) == _whole_point_line(point)
    assert to_line(point) == _whole_point_line(point)  # the cached series gives the same line again
