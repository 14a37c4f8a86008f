"""RFC 3339 ``date-time`` → epoch seconds, exactly the strings JSON Schema's ``format: date-time`` accepts.

One parser for every event time cityops reads (card taps', road readings' and health events' ``ts``, EPCIS
``eventTime``), so the decoders accept precisely what the published contracts accept: the grammar of
RFC 3339 section 5.6 (``T``/``Z`` in either case, any number of fraction digits, an offset ``Z`` or
``±HH:MM`` with hours 00-23), a real calendar date (proleptic Gregorian, years 0000-9999), and a leap
second ``:60`` only where the time is 23:59:60 in UTC (as the reference validator, jsonschema-rs, checks).

Leap seconds. POSIX/epoch time has no leap seconds, and InfluxDB, Python and the windows count on it, so
cityops maps a leap second ``23:59:60[.f]`` (UTC) to ``23:59:59.999999`` UTC of the same day: the last
instant of the minute it belongs to. The event therefore lands in the 60 s window of 23:59, on its own
day, ordered after every other instant of that minute that has microsecond resolution; its fraction is
dropped (all leap-second instants of one day map to one instant).

Fractions are truncated to whole microseconds (as ``datetime`` does), so the result equals
``datetime.fromisoformat(text).timestamp()`` wherever ``datetime`` can represent the time.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

__all__ = ["RFC3339Error", "canonical_text", "event_time", "event_time_text", "is_rfc3339", "parse",
           "rfc3339_seconds"]

_AwareDateTime = Annotated[datetime, msgspec.Meta(tz=True)]

# [0-9], not \d: Python's \d also matches other scripts' digits (e.g. fullwidth), which RFC 3339 does not.
# Used with fullmatch, so a trailing newline is not let through the way `$` would.
_match = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
).fullmatch
_local = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?").fullmatch
# "YYYY-MM-DDTHH:MM:SS" + offset as sent -> (epoch seconds of that second, its canonical text without
# fraction and offset, the canonical offset, leap second): checked once, then shared by the events of that
# second (a stream's events share their seconds, so this is most of the parsing saved).
_seconds: dict[str, tuple[int, str, str, bool]] = {}
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_LEAP_FRACTION = 0.999999
_ZEROS = "000000"


class RFC3339Error(ValueError):
    """Not an RFC 3339 date-time; the message says which part is wrong."""


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil; any year)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _is_leap_year(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _second(text: str, offset_text: str) -> tuple[int, str, str, bool]:
    """The cache entry of a grammar-checked text's second (see ``_seconds``); validates its fields."""
    year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
    hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if not 1 <= month <= 12:
        raise RFC3339Error(f"month {month:02d} out of range 01-12 in {text[:64]!r}")
    last = 29 if month == 2 and _is_leap_year(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= last:
        raise RFC3339Error(f"day {day:02d} out of range 01-{last} for {year:04d}-{month:02d} in {text[:64]!r}")
    if hour > 23 or minute > 59 or second > 60:
        raise RFC3339Error(f"time {hour:02d}:{minute:02d}:{second:02d} out of range in {text[:64]!r}")
    offset = 0
    canonical_offset = "Z"
    if offset_text != "Z":
        oh, om = int(offset_text[1:3]), int(offset_text[4:6])
        if oh > 23 or om > 59:
            raise RFC3339Error(f"offset {offset_text} out of range in {text[:64]!r}")
        offset = (oh * 3600 + om * 60) * (1 if offset_text[0] == "+" else -1)
        if offset:
            canonical_offset = offset_text
    leap = second == 60
    if leap:
        if (hour * 60 + minute - offset // 60) % 1440 != 1439:
            raise RFC3339Error(f"leap second not at 23:59:60 UTC in {text[:64]!r}")
        second = 59
    whole = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    return whole, f"{text[:10]}T{text[11:19]}", canonical_offset, leap


def parse(text: str) -> tuple[float, str]:
    """(epoch seconds, canonical text) of an RFC 3339 date-time.

    Seconds: UTC, float, microsecond resolution (the fraction truncated, as ``datetime`` does); a leap
    second maps to 23:59:59.999999 UTC (module docstring). Canonical text: see ``canonical_text``.
    Raises ``RFC3339Error`` (a ValueError) for anything JSON Schema's ``date-time`` format rejects: other
    ISO 8601 forms (space separator, basic format, no offset, ``+0800``, ``+08``), impossible dates
    (``2026-02-30``), out-of-range fields, and a second 60 that is not 23:59:60 UTC.
    """
    if type(text) is not str:
        raise RFC3339Error(f"expected an RFC 3339 date-time string, got {type(text).__name__}")
    # The grammar fixes every position up to the seconds; the offset is "Z"/"z" or the last six characters.
    n = len(text)
    if n and text[-1] in "Zz":
        offset_text, end = "Z", n - 1
    else:
        offset_text, end = text[-6:], n - 6
    got = _seconds.get(text[:19] + offset_text) if end >= 19 else None
    if got is not None:
        # A second already checked: only what follows it (the fraction) is left to check.
        digits = text[20:end]
        if end != 19 and not (text[19] == "." and digits.isascii() and digits.isdigit()):
            got = None
    if got is None:
        if _match(text) is None:
            if _local(text) is not None:
                raise RFC3339Error(f"no UTC offset (Z or ±HH:MM) in {text[:64]!r}: without a timezone a local "
                                   "time names no instant")
            raise RFC3339Error(f"not an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)): "
                               f"{text[:64]!r}")
        got = _second(text, offset_text)
        if len(_seconds) >= 65536:
            _seconds.clear()
        _seconds[text[:19] + offset_text] = got
        digits = text[20:end]
    whole, head, offset, leap = got
    if end == 19:
        return (whole + _LEAP_FRACTION if leap else float(whole)), head + offset
    k = len(digits)
    if leap:  # its fraction is dropped (module docstring)
        seconds = whole + _LEAP_FRACTION
    else:
        seconds = whole + float(text[19:end if k <= 6 else 26])
    if k > 6:
        return seconds, _rounded_text(text, head + offset)
    if digits == _ZEROS[:k]:
        return seconds, head + offset
    return seconds, f"{head}.{digits}{_ZEROS[k:]}{offset}"


def _rounded_text(text: str, fallback: str) -> str:
    # More than six fraction digits: rounded to microseconds, carrying into the seconds, as msgspec reads it.
    try:
        return msgspec.json.encode(msgspec.json.decode(b'"' + text.encode() + b'"', type=_AwareDateTime)
                                   ).decode()[1:-1]
    except msgspec.DecodeError:  # a leap second or year 0000 (never decoded as a datetime): as sent
        return text


def rfc3339_seconds(text: str) -> float:
    """Epoch seconds (UTC, float, microsecond resolution) of an RFC 3339 date-time (``parse``)."""
    return parse(text)[0]


def canonical_text(text: str) -> str:
    """One spelling per instant-and-offset of an RFC 3339 text: ``T`` and ``Z`` upper case,
    ``+00:00``/``-00:00`` as ``Z``, a fraction as six digits (none when zero).

    It is the text msgspec writes for the datetime the text names, which is what the city streams' event
    digests were computed over while their ``ts`` was decoded as a datetime: keeping it keeps the digests
    of events a restored dedup table holds (a re-send stays a duplicate, not tampering, across the upgrade).
    Raises ``RFC3339Error`` as ``parse``.
    """
    return parse(text)[1]


_JSON_KIND = {dict: "object", list: "array", str: "str", int: "int", float: "float", bool: "bool",
              type(None): "null"}


def event_time(value: Any) -> tuple[float, str]:
    """(epoch seconds, canonical text) of a JSON value given as a city stream's event time (``ts``).

    Raises TypeError for a non-string and ValueError for a string that is not an RFC 3339 date-time,
    worded as msgspec words its datetime errors wherever msgspec's datetime also rejects the value (so a
    dead letter's reason is the one the release that decoded ``ts`` as a datetime gave), else with this
    module's reason.
    """
    if type(value) is not str:
        raise TypeError(f"Expected `datetime`, got `{_JSON_KIND.get(type(value), type(value).__name__)}`")
    try:
        return parse(value)
    except RFC3339Error as exc:
        try:
            msgspec.convert(value, _AwareDateTime)
        except msgspec.ValidationError as err:
            raise ValueError(str(err)) from None
        raise ValueError(f"Invalid RFC3339 encoded datetime: {exc}") from None


def event_time_text(value: Any) -> str:
    """The canonical text of ``event_time``."""
    return event_time(value)[1]


def is_rfc3339(text: object) -> bool:
    """True if ``text`` is an RFC 3339 date-time ``rfc3339_seconds`` accepts."""
    try:
        rfc3339_seconds(text)  # type: ignore[arg-type]
    except RFC3339Error:
        return False
    return True

