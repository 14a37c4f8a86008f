"""Work done by a call, counted rather than timed (issue 14: the cost of an event must not grow with the time it spans)."""

from __future__ import annotations

import sys
from typing import Any


def calls(fn: Any) -> int:
    """Python and C function calls made while running ``fn()``: the work done, counted, not timed."""
    n = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal n
        if event in ("call", "c_call"):
            n += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n
