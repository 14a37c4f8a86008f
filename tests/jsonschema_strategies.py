"""Hypothesis strategies from the published JSON Schemas (hypothesis-jsonschema), and JSON value strategies.

hypothesis-jsonschema 0.23.1 (the newest release) drives Hypothesis' internal ``many`` helper through its
old interface (``while elements.more(): ...``); Hypothesis 6.1xx replaced it by an iterator used inside a
``with`` block. ``_OldMany`` offers the old interface on top of the new one, and is installed only when the
installed Hypothesis lacks it, so the generator keeps working on either side of that change.
"""

from __future__ import annotations

from typing import Any

import hypothesis_jsonschema._from_schema as _from_schema
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as _cu
from hypothesis_jsonschema import from_schema

__all__ = ["from_schema", "json_values", "near_date_times", "numbers", "texts"]


class _OldMany:
    def __init__(self, data: Any, **kw: Any) -> None:
        self._many = _cu.many(data, **kw)
        self._many.__enter__()
        self._it = iter(self._many)

    def more(self) -> bool:
        try:
            next(self._it)
        except StopIteration:
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self) -> None:
        self._many.reject()


if not hasattr(_cu.many, "more"):
    class _Utils:
        many = _OldMany

    _from_schema.cu = _Utils  # type: ignore[assignment]


# Numbers as JSON carries them, with the spellings and edges contracts trip on: integral floats (60.0),
# big integers, boundaries, negative zero, subnormals.
numbers = st.one_of(
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-100_000, 100_000).map(float),
    st.sampled_from([0, -0.0, 0.0, 1, 1.0, 60, 60.0, 86400, 86400.0, 86401, 1e6, 1e6 + 1, 1e12, 1e12 + 1,
                     400, 400.0, 400.0000001, 1, 1.0000001, -1e-300, 5e-324, 2**63, 2**64, -(2**63) - 1]),
)
texts = st.one_of(st.text(max_size=300), st.sampled_from(["", "x" * 256, "x" * 257, "長" * 256, "長" * 257,
                                                          "a\u0000b", "\U0001F68C", "line\n"]))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _two(lo: int = 0, hi: int = 99) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda v: f"{v:02d}")


# Strings near RFC 3339's date-time: its shape with out-of-range fields (leap seconds among them), other
# separators and offset spellings, letter case, long fractions.
near_date_times = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}",
    st.integers(0, 9999), _two(0, 13), _two(0, 32), st.sampled_from(["T", "t", " ", "_"]),
    st.one_of(_two(0, 25), st.just("23")), st.one_of(_two(0, 61), st.just("59")), _two(0, 61),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,12}", fullmatch=True), st.just(",5")),
    st.one_of(st.sampled_from(["Z", "z", "", "+0800", "+08", "-00:00", "+00:00"]),
              st.builds(lambda sg, h, m: f"{sg}{h}:{m}", st.sampled_from("+-"), _two(0, 25), _two(0, 61))),
)
