"""Parsing a message value as JSON (RFC 8259) the way the contracts read it, for the element-by-element paths.

orjson first (fast). It refuses two things that are valid JSON text and that JSON Schema validators
accept: a number beyond the range of a double (``1e400``) and an escaped lone surrogate (``"\\ud800"``).
Those messages are parsed again with the standard library, so one such event in a batch or document is
judged on its own instead of rejecting the whole message as malformed. ``NaN``/``Infinity`` literals are
not JSON and stay malformed.

A lone surrogate is not Unicode text (RFC 8259 section 8.2; I-JSON, RFC 7493 section 2.1, forbids it) and
cannot be written as UTF-8 to InfluxDB, Kafka or a log: ``lone_surrogate`` finds one so the event that
holds it is dead-lettered alone, with its path (a cityops rule, documented in the README).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import orjson

__all__ = ["MalformedJson", "beyond_double", "find", "json_path", "json_pointer", "loads", "lone_surrogate"]

_DOUBLE_MAX = int(sys.float_info.max)


class MalformedJson(ValueError):
    """The message value is not JSON text (the reason is orjson's, with line and column)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads(raw: bytes) -> tuple[Any, bool]:
    """(parsed value, lenient): ``lenient`` is True when only the standard library could parse it, and the
    value may then hold infinities (numbers beyond a double) and strings with lone surrogates.

    Raises ``MalformedJson`` for anything that is not UTF-8 JSON text.
    """
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError as exc:
        first = exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedJson(str(first)) from None
    if text[:1] == "\ufeff":  # as orjson: RFC 8259 senders must not add a byte order mark
        raise MalformedJson(str(first))
    try:
        return json.loads(text, parse_constant=_no_constant), True
    except (ValueError, RecursionError):
        raise MalformedJson(str(first)) from None


def find(value: Any, bad: Any) -> list[str | int] | None:
    """The path (keys and indexes) of the first value, or object key, in ``value`` for which ``bad`` holds.

    A key is named with backslash escapes (the path must itself be writable as UTF-8).
    """
    if bad(value):
        return []
    if isinstance(value, dict):
        for k, v in value.items():
            if bad(k):
                return [k.encode("utf-8", "backslashreplace").decode() if isinstance(k, str) else k]
            found = find(v, bad)
            if found is not None:
                return [k, *found]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find(v, bad)
            if found is not None:
                return [i, *found]
    return None


def lone_surrogate(value: Any) -> list[str | int] | None:
    """The path of the first string or object key in ``value`` holding a lone surrogate."""
    return find(value, _has_surrogate)


def beyond_double(value: Any) -> list[str | int] | None:
    """The path of the first number in ``value`` a double cannot hold (``1e400``, a 400-digit integer)."""
    return find(value, _beyond_double)


def _beyond_double(v: Any) -> bool:
    if type(v) is float:
        return v in (math.inf, -math.inf)
    if type(v) is int:
        return abs(v) > _DOUBLE_MAX
    return False


def json_path(parts: list[str | int], root: str = "$") -> str:
    """``$.a[2].b`` (msgspec's notation, used in the city streams' reasons) of a path."""
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def json_pointer(parts: list[str | int]) -> str:
    """RFC 6901 JSON Pointer (``/a/2/b``, EPCIS schema errors' notation) of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _has_surrogate(text: Any) -> bool:
    if type(text) is not str:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
