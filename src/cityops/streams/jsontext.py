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

__all__ = ["MalformedJson", "beyond_double", "find", "json_path", "json_pointer", "loads", "lone_surrogate",
           "split_array"]

_DOUBLE_MAX = int(sys.float_info.max)


class MalformedJson(ValueError):
    """The message value is not JSON text (the reason is orjson's, with line and column).

    ``too_deep``: the text may be JSON, nested deeper than the parsers go (orjson: 1024 levels; the standard
    library: the interpreter's recursion limit); ``split_array`` can still cut a batch into its elements.
    """

    def __init__(self, message: str, too_deep: bool = False) -> None:
        super().__init__(message)
        self.too_deep = too_deep


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
    except RecursionError:
        raise MalformedJson(str(first), too_deep=True) from None
    except ValueError:
        raise MalformedJson(str(first), too_deep="depth limit" in str(first)) from None


def split_array(raw: bytes) -> list[bytes] | None:
    """The elements of a top-level JSON array, as raw text each, without parsing them; None if ``raw`` is not an
    array whose brackets, braces and strings balance.

    For a batch that cannot be parsed whole because one element is nested too deep: each element can then be
    parsed (and rejected) on its own. Scans bytes: strings and their escapes, and nesting depth.
    """
    n = len(raw)
    i = 0
    while i < n and raw[i] in b" \t\r\n":
        i += 1
    if i >= n or raw[i] != 0x5B:  # [
        return None
    i += 1
    out: list[bytes] = []
    start = i
    depth = 0
    in_str = False
    while i < n:
        c = raw[i]
        if in_str:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 2
                continue
            if c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
        elif c in (0x5D, 0x7D):  # ] }
            if depth == 0:
                if c != 0x5D or raw[i + 1:].strip():
                    return None
                element = raw[start:i].strip()
                if element:
                    out.append(element)
                elif out:
                    return None  # a trailing comma
                return out
            depth -= 1
        elif c == 0x2C and depth == 0:  # ,
            out.append(raw[start:i].strip())
            start = i + 1
        i += 1
    return None


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
