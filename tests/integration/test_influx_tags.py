"""Distinct tag values stay distinct series in a real InfluxDB 1.x (issue 9 kind 4), property-tested.

Every tag value the contracts accept (any UTF-8: backslashes, spaces, commas, equals signs, quotes, control
characters, the encoding's own marker) goes through the worker's InfluxSink; read back from InfluxDB and
decoded, the series are exactly the distinct values written, each holding its own count.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityops.engine.pipeline import Point
from cityops.localproc import ManagedProcess
from cityops.localstack import start_influxdb
from cityops.sinks.influx import TAG_MARKER, InfluxSink, decode_tag, encode_tag

pytestmark = pytest.mark.integration

DB = "tags"


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_influxdb(tmp_path_factory.mktemp("influx-tags"))
    yield proc
    proc.stop()


def _series(influx: ManagedProcess, measurement: str, tag: str) -> dict[str, int]:
    """{stored tag value: sum of n} of a measurement, straight from InfluxDB."""
    q = f'SELECT sum("n") FROM "{measurement}" GROUP BY "{tag}"'
    params = urllib.parse.urlencode({"db": DB, "q": q})
    with urllib.request.urlopen(f"{influx.url}/query?{params}", timeout=30) as r:
        res = json.loads(r.read())["results"][0]
    assert "error" not in res, res
    return {s["tags"][tag]: s["values"][0][1] for s in res.get("series", [])}


# Characters line protocol treats specially, controls, and ordinary text around them.
_SPECIAL = st.sampled_from(["\\", " ", ",", "=", '"', "'", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\x85",
                            "#", "~", "b", "6", "4", ":", "é", "线", "\u2028", "\ufeff", "😀"])
_VALUE = st.one_of(
    st.text(_SPECIAL, min_size=1, max_size=8),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.builds(lambda s: TAG_MARKER + s, st.text(_SPECIAL, max_size=6)),  # values posing as encoded ones
    st.sampled_from(["B12\\", "B12 ", "B12\\\\", "B12\\ ", " B12", "\\", " "]),
)
_counter = itertools.count()


def test_issue_example_values_are_distinct_encodings() -> None:
    assert encode_tag("B12 ") == "B12 "  # ordinary values are written as they are
    assert encode_tag("地铁1号线") == "地铁1号线"
    assert encode_tag("B12\\") != encode_tag("B12 ")
    assert decode_tag(encode_tag("B12\\")) == "B12\\"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_VALUE, min_size=2, max_size=6, unique=True))
def test_distinct_values_are_distinct_series(influxd: ManagedProcess, values: list[str]) -> None:
    measurement = f"tags_{next(_counter)}"
    refused: list[tuple[str, str]] = []
    # value i is written in i + 1 points (one per second), so each series must hold its own count.
    points = [Point(measurement, {"line": v, "mode": "metro"}, {"n": 1}, 1_795_564_800 + k)
              for i, v in enumerate(values) for k in range(i + 1)]

    async def write() -> None:
        sink = InfluxSink(influxd.url, DB, on_rejected=lambda line, m, why: refused.append((line, why)))
        try:
            await sink.setup()
            sink.add(points)
            await sink.flush()
        finally:
            await sink.close()

    asyncio.run(write())
    assert refused == []
    stored = _series(influxd, measurement, "line")
    decoded = {decode_tag(k): n for k, n in stored.items()}
    assert len(stored) == len(values), (values, stored)
    assert decoded == {v: i + 1 for i, v in enumerate(values)}


def test_value_too_long_for_a_series_key_is_refused_and_handed_back(influxd: ManagedProcess) -> None:
    """InfluxDB keeps series keys up to 65,535 bytes: a longer tag value cannot be carried by any encoding,
    so the point is refused, handed to the dead-letter callback with InfluxDB's reason, never dropped."""
    refused: list[tuple[str, str, str]] = []
    long_value = "长" * 30_000  # 90,000 bytes of UTF-8
    points = [Point("tags_long", {"line": long_value}, {"n": 1}, 1_795_564_800),
              Point("tags_long", {"line": "short"}, {"n": 1}, 1_795_564_800)]

    async def write() -> None:
        sink = InfluxSink(influxd.url, DB, on_rejected=lambda line, m, why: refused.append((line, m, why)))
        try:
            await sink.setup()
            sink.add(points)
            await sink.flush()
        finally:
            await sink.close()

    asyncio.run(write())
    assert len(refused) == 1
    line, measurement, why = refused[0]
    assert measurement == "tags_long" and line.startswith("tags_long,line=长") and why.startswith("HTTP 400")
    assert "max key length exceeded" in why, why
    assert _series(influxd, "tags_long", "line") == {"short": 1}
