"""The one RFC 3339 parser accepts exactly what JSON Schema's `format: date-time` accepts, leap seconds included."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated

import jsonschema_rs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityops.streams.times import RFC3339Error, canonical_text, is_rfc3339, rfc3339_seconds
from tests.jsonschema_strategies import near_date_times

# The reference: the validator the EPCIS stream already uses, with format assertion on.
DATE_TIME = jsonschema_rs.validator_for({"type": "string", "format": "date-time"}, validate_formats=True)

AWARE = Annotated[datetime, msgspec.Meta(tz=True)]
NEW_YEAR_2017 = datetime(2017, 1, 1, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("text, expected", [
    # The leap second of 2016-12-31 (issue 9, kind 5): the last instant of the minute 23:59 UTC, same day.
    ("2016-12-31T23:59:60Z", NEW_YEAR_2017 - 1e-6),
    ("2016-12-31T23:59:60.5Z", NEW_YEAR_2017 - 1e-6),
    ("2016-12-31t23:59:60z", NEW_YEAR_2017 - 1e-6),
    ("2016-12-31T15:59:60-08:00", NEW_YEAR_2017 - 1e-6),
    ("2017-01-01T07:59:60+08:00", NEW_YEAR_2017 - 1e-6),
    ("2016-12-31T23:59:59Z", NEW_YEAR_2017 - 1),
    ("2017-01-01T00:00:00Z", NEW_YEAR_2017),
    ("2026-11-25T08:00:00.123+08:00", datetime(2026, 11, 25, 0, 0, 0, 123000, timezone.utc).timestamp()),
    ("2026-11-25T08:00:00.1239999999+08:00", datetime(2026, 11, 25, 0, 0, 0, 123999, timezone.utc).timestamp()),
    ("2026-11-25T00:00:00-00:00", datetime(2026, 11, 25, tzinfo=timezone.utc).timestamp()),
    ("0000-01-01T00:00:00Z", -62167219200.0),  # year 0000 is valid RFC 3339 (and a leap year)
    ("0000-02-29T12:00:00Z", -62167219200.0 + 59.5 * 86400),
    ("9999-12-31T23:59:59-23:59", datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp() + 86340),
])
def test_values(text: str, expected: float) -> None:
    assert DATE_TIME.is_valid(text)
    assert rfc3339_seconds(text) == pytest.approx(expected, abs=1e-6)


def test_a_leap_second_sorts_after_the_rest_of_its_minute_and_before_the_next() -> None:
    last = rfc3339_seconds("2016-12-31T23:59:59.999998Z")
    leap = rfc3339_seconds("2016-12-31T23:59:60.2Z")
    assert last < leap < NEW_YEAR_2017
    assert int(leap // 60) == int(last // 60)  # the same 60 s window


@pytest.mark.parametrize("text", [
    "2016-12-31 23:59:59Z",  # msgspec and datetime accept a space; RFC 3339's date-time does not
    "2016-12-31T23:59:59+0800",
    "2016-12-31T23:59:59+08",
    "2016-12-31T23:59:59",  # no offset: no defined instant
    "2016-12-31T23:59Z",
    "20161231T235959Z",
    "2016-02-30T00:00:00Z",
    "2015-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2016-12-31T12:00:60Z",  # a leap second is 23:59:60 UTC only
    "2016-12-31T23:59:60+08:00",
    "2016-12-31T24:00:00Z",
    "2016-12-31T23:59:59+24:00",
    "2016-12-31T23:59:59+23:60",
    "2016-12-31T23:59:59.Z",
    "2016-12-31T23:59:59,5Z",
    "2016-12-31T23:59:59Z\n",  # Python's `$` would let this through
    "２０16-12-31T23:59:59Z",  # non-ASCII digits
    "2016-13-01T00:00:00Z",
    "",
])
def test_rejects_what_the_format_rejects(text: str) -> None:
    assert not DATE_TIME.is_valid(text)
    with pytest.raises(RFC3339Error):
        rfc3339_seconds(text)


def test_non_strings_are_rejected() -> None:
    for value in (None, 1, 1.5, ["2016-12-31T23:59:59Z"]):
        with pytest.raises(RFC3339Error):
            rfc3339_seconds(value)  # type: ignore[arg-type]


@settings(max_examples=1500, deadline=None)
@given(near_date_times)
def test_accepts_exactly_what_the_reference_validator_accepts(text: str) -> None:
    assert is_rfc3339(text) == DATE_TIME.is_valid(text), text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_agrees_with_the_reference_validator(text: str) -> None:
    assert is_rfc3339(text) == DATE_TIME.is_valid(text), text


@settings(max_examples=800, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(-(23 * 60 + 59), 23 * 60 + 59), st.sampled_from(["auto", "seconds", "milliseconds"]))
def test_equals_datetime_wherever_datetime_can_represent_the_time(
        local: datetime, offset_min: int, spec: str) -> None:
    dt = local.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    text = dt.isoformat(timespec=spec)
    assert rfc3339_seconds(text) == pytest.approx(datetime.fromisoformat(text).timestamp(), abs=1e-6)
    assert DATE_TIME.is_valid(text)


@settings(max_examples=800, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(-(23 * 60 + 59), 23 * 60 + 59), st.integers(0, 12), st.booleans(), st.booleans())
def test_canonical_text_is_what_msgspec_writes_for_the_datetime(
        local: datetime, offset_min: int, digits: int, lower: bool, zero_as_z: bool) -> None:
    """The city streams' digests were taken over msgspec's datetime text: the same text keeps them."""
    dt = local.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    frac = f"{dt.microsecond:06d}{dt.microsecond % 7}{'0' * 6}"[:digits]
    off = dt.isoformat()[-6:]
    if off == "+00:00" and zero_as_z:
        off = "Z"
    text = dt.isoformat(timespec="seconds")[:-6] + ("." + frac if frac else "") + off
    if lower:
        text = text.lower()
    assert DATE_TIME.is_valid(text)
    want = msgspec.json.encode(msgspec.json.decode(json.dumps(text).encode(), type=AWARE)).decode()[1:-1]
    assert canonical_text(text) == want


def test_canonical_text_of_times_msgspec_never_read() -> None:
    assert canonical_text("2016-12-31T23:59:60.5Z") == "2016-12-31T23:59:60.500000Z"
    assert canonical_text("2016-12-31t23:59:60.1234567z") == "2016-12-31t23:59:60.1234567z"
