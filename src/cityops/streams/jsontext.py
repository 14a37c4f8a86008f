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
from typing import Any

import orjson

__all__ = ["MalformedJson", "loads", "lone_surrogate"]


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


def lone_surrogate(value: Any, path: str = "$") -> str | None:
    """The path (``$.a[2].b``) of the first string (or object key) in ``value`` holding a lone surrogate."""
    if isinstance(value, str):
        return path if _has_surrogate(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _has_surrogate(k):
                return f"{path}.{k.encode('utf-8', 'backslashreplace').decode()}"
            found = lone_surrogate(v, f"{path}.{k}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
