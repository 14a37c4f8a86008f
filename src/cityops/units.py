"""The facts every part shares about time and places: one duration syntax, the city's time zone, the
runbook base URL. Defined here once; everything else imports them."""

from __future__ import annotations

import math
import re
from datetime import timedelta, timezone
from typing import Any

__all__ = ["CITY_TZ", "CITY_TZ_NAME", "CITY_UTC_OFFSET", "DEFAULT_RUNBOOK_BASE", "DURATION_UNITS_S",
           "is_duration_text", "parse_duration"]

# The city's time zone. Asia/Shanghai has had no DST since 1991, so the fixed +08:00 offset is exact for
# every time cityops handles; the name is what registries and manifests write (service hours).
CITY_TZ_NAME = "Asia/Shanghai"
CITY_UTC_OFFSET = timedelta(hours=8)
CITY_TZ = timezone(CITY_UTC_OFFSET)

# Where runbooks are browsed: ``runbook_url`` = {base}/agents/<agent>.md#<alertname lowercased>
# (CITYOPS_RUNBOOK_BASE overrides it).
DEFAULT_RUNBOOK_BASE = "https://git.cityops.example/cityops/-/blob/main"

DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_NEGATIVE_DURATION = re.compile(r"^-\s*(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1h30m``, ``500ms``, ``1w`` (or a number of seconds, also as text)
    → seconds as float (Prometheus' duration syntax, as in alerting rules' ``for``).

    Raises ValueError for anything else, including negative or infinite values.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 2h or 1d, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if _NEGATIVE_DURATION.match(text):
            raise ValueError(f"duration must be >= 0, got {value!r}")
        if _DURATION.match(text):
            seconds = sum(float(n) * DURATION_UNITS_S[u] for n, u in _DURATION_PART.findall(text))
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"expected a duration like 30s, 5m, 2h or 1d, got {value!r}") from None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    else:
        raise ValueError(f"expected a duration like 30s, 5m, 2h or 1d, got {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"duration must be >= 0 and finite, got {value!r}")
    return seconds


def is_duration_text(value: Any) -> bool:
    """True for text in the duration syntax with a unit (``5m``), not for a plain number."""
    return isinstance(value, str) and bool(_DURATION.match(value.strip()))
