"""Source registry (streams/sources.json): which sources may send, which must sign, when they must be heard from.

One entry per source id (a gate, a bus validator, a road detector, a hospital system):

    {"tz": "Asia/Shanghai",                       # optional, time zone of every service_hours entry
     "sources": {"<source id>": {
        "stream": "traffic.card-taps",            # the one stream the source may send on
        "must_sign": false,                        # events without a verifying `sig` are dead-lettered
        "key": "<hex HMAC key>" | null,            # required when must_sign is true
        "service_hours": [["06:00", "23:00"]],     # local time; empty or absent = around the clock
        "max_gap_s": 600,                          # longest allowed silence while in service (default 600)
        "expected": true,                          # false = never alert on its silence (default true)
        "lat": 31.78, "lon": 119.95,               # reader location, for impossible travel
        "station": "<station id>"}},               # optional; its coordinates locate coordinate-less taps
     "stations": {"<station id>": {"lat": .., "lon": ..}}}   # optional station registry

Signature: hex HMAC-SHA256 with the source's key over the event's canonical JSON without its `sig` field
(keys sorted, no whitespace, UTF-8 without escaping). See streams/sources.README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cityops.units import CITY_TZ_NAME

__all__ = ["SourceRegistry", "SourceInfo", "SourceRegistryError", "canonical_json", "sign"]

DEFAULT_TZ = CITY_TZ_NAME
DEFAULT_MAX_GAP_S = 600.0
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")
_FIELDS = {"stream", "must_sign", "key", "service_hours", "max_gap_s", "expected", "lat", "lon", "station"}


class SourceRegistryError(ValueError):
    """The source registry file is unusable; the message names the source and the field."""


def canonical_json(event: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: JSON with sorted keys, no whitespace, UTF-8, `sig` left out."""
    body = {k: v for k, v in event.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(key: bytes, event: Mapping[str, Any]) -> str:
    """Hex HMAC-SHA256 of ``event`` (its `sig`, if any, ignored) with ``key``."""
    return hmac.new(key, canonical_json(event), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One registered source. ``windows``: service windows as (start, end) minutes of the local day."""

    source: str
    stream: str
    must_sign: bool
    key: bytes | None
    windows: tuple[tuple[int, int], ...]  # empty = 24 h; end <= start means the window crosses midnight
    max_gap_s: float
    expected: bool
    lat: float | None
    lon: float | None
    station: str | None


def _minutes(text: Any, where: str) -> int:
    m = _HHMM.match(text) if isinstance(text, str) else None
    if m is None or (m.group(1) == "24" and m.group(2) != "00"):
        raise SourceRegistryError(f"{where}: expected 'HH:MM' (00:00..24:00), got {text!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def _coord(value: Any, lo: float, hi: float, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise SourceRegistryError(f"{where}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _merge(windows: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Merge overlapping or touching same-day windows, so a service start is the real start of service."""
    plain = sorted(w for w in windows if w[1] > w[0])
    wrapped = [w for w in windows if w[1] <= w[0]]
    out: list[list[int]] = []
    for s, e in plain:
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out) + tuple(wrapped)


class SourceRegistry:
    """Registered sources: trust (known / signature), service hours and silence limits, reader locations."""

    def __init__(
        self,
        sources: Mapping[str, SourceInfo],
        *,
        tz: str = DEFAULT_TZ,
        stations: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.sources: dict[str, SourceInfo] = dict(sources)
        self.tz_name = tz
        self.tz = ZoneInfo(tz)
        self.stations: dict[str, tuple[float, float]] = dict(stations or {})
        # A station's location can also come from its readers' coordinates.
        for info in self.sources.values():
            if info.station and info.lat is not None and info.lon is not None:
                self.stations.setdefault(info.station, (info.lat, info.lon))

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str, *, keys: Mapping[str, str] | None = None) -> SourceRegistry:
        """Read ``path`` (JSON). ``keys``: hex keys by source id that override the file's (secrets kept elsewhere)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SourceRegistryError(f"source registry {path}: cannot read ({exc})") from exc
        except json.JSONDecodeError as exc:
            raise SourceRegistryError(f"source registry {path}: not JSON ({exc})") from exc
        try:
            return cls.from_dict(data, keys=keys)
        except SourceRegistryError as exc:
            raise SourceRegistryError(f"source registry {path}: {exc}") from exc

    @classmethod
    def from_dict(cls, data: Any, *, keys: Mapping[str, str] | None = None) -> SourceRegistry:
        """Validate the parsed registry document; errors name the source and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
            raise SourceRegistryError('expected an object {"sources": {"<source id>": {...}}}')
        unknown_top = set(data) - {"sources", "tz", "stations"}
        if unknown_top:
            raise SourceRegistryError(f"unknown top-level field(s) {sorted(unknown_top)}")
        tz = data.get("tz", DEFAULT_TZ)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, TypeError, ValueError) as exc:
            raise SourceRegistryError(f"field 'tz': unknown time zone {tz!r}") from exc
        keys = dict(keys or {})
        sources: dict[str, SourceInfo] = {}
        for sid, entry in data["sources"].items():
            sources[sid] = cls._entry(sid, entry, keys.pop(sid, None))
        if keys:
            raise SourceRegistryError(f"keys given for unregistered source(s) {sorted(keys)}")
        stations: dict[str, tuple[float, float]] = {}
        raw_stations = data.get("stations") or {}
        if not isinstance(raw_stations, dict):
            raise SourceRegistryError("field 'stations': expected an object {station id: {lat, lon}}")
        for st, loc in raw_stations.items():
            if not isinstance(loc, dict):
                raise SourceRegistryError(f"station {st!r}: expected an object {{lat, lon}}")
            lat = _coord(loc.get("lat"), -90, 90, f"station {st!r} field 'lat'")
            lon = _coord(loc.get("lon"), -180, 180, f"station {st!r} field 'lon'")
            if lat is None or lon is None:
                raise SourceRegistryError(f"station {st!r}: fields 'lat' and 'lon' are required")
            stations[st] = (lat, lon)
        return cls(sources, tz=tz, stations=stations)

    @staticmethod
    def _entry(sid: str, entry: Any, key_override: str | None) -> SourceInfo:
        where = f"source {sid!r}"
        if not isinstance(entry, dict):
            raise SourceRegistryError(f"{where}: expected an object")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise SourceRegistryError(f"{where}: unknown field(s) {sorted(unknown)}")
        stream = entry.get("stream")
        if not isinstance(stream, str) or not stream:
            raise SourceRegistryError(f"{where} field 'stream': required, e.g. 'traffic.card-taps'")
        must_sign = entry.get("must_sign", False)
        if not isinstance(must_sign, bool):
            raise SourceRegistryError(f"{where} field 'must_sign': expected true or false, got {must_sign!r}")
        key_hex = key_override if key_override is not None else entry.get("key")
        key: bytes | None = None
        if key_hex is not None:
            try:
                key = bytes.fromhex(key_hex)
            except (TypeError, ValueError) as exc:
                raise SourceRegistryError(f"{where} field 'key': expected hex, got {key_hex!r}") from exc
            if not key:
                raise SourceRegistryError(f"{where} field 'key': empty key")
        if must_sign and key is None:
            raise SourceRegistryError(f"{where} field 'key': required when must_sign is true")
        hours = entry.get("service_hours") or []
        if not isinstance(hours, list):
            raise SourceRegistryError(f"{where} field 'service_hours': expected [[\"HH:MM\", \"HH:MM\"], ...]")
        windows: list[tuple[int, int]] = []
        for i, w in enumerate(hours):
            wh = f"{where} field 'service_hours[{i}]'"
            if not isinstance(w, (list, tuple)) or len(w) != 2:
                raise SourceRegistryError(f"{wh}: expected [\"HH:MM\", \"HH:MM\"], got {w!r}")
            start, end = _minutes(w[0], wh), _minutes(w[1], wh)
            if start == end or start == 1440:
                raise SourceRegistryError(f"{wh}: empty window {w!r}")
            windows.append((start, end))
        if (0, 1440) in windows:
            windows = []  # "00:00"-"24:00" is around the clock
        max_gap = entry.get("max_gap_s", DEFAULT_MAX_GAP_S)
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, float)) or max_gap <= 0:
            raise SourceRegistryError(f"{where} field 'max_gap_s': expected seconds > 0, got {max_gap!r}")
        expected = entry.get("expected", True)
        if not isinstance(expected, bool):
            raise SourceRegistryError(f"{where} field 'expected': expected true or false, got {expected!r}")
        lat = _coord(entry.get("lat"), -90, 90, f"{where} field 'lat'")
        lon = _coord(entry.get("lon"), -180, 180, f"{where} field 'lon'")
        if (lat is None) != (lon is None):
            raise SourceRegistryError(f"{where} fields 'lat'/'lon': give both or neither")
        station = entry.get("station")
        if station is not None and (not isinstance(station, str) or not station):
            raise SourceRegistryError(f"{where} field 'station': expected a non-empty string, got {station!r}")
        return SourceInfo(
            source=sid, stream=stream, must_sign=must_sign, key=key, windows=_merge(windows),
            max_gap_s=float(max_gap), expected=expected, lat=lat, lon=lon, station=station,
        )

    # -- trust ----------------------------------------------------------------------------------------
    def __contains__(self, source: object) -> bool:
        return source in self.sources

    def __len__(self) -> int:
        return len(self.sources)

    def get(self, source: str) -> SourceInfo | None:
        return self.sources.get(source)

    def is_known(self, source: str, stream: str | None = None) -> bool:
        """Registered (and, if ``stream`` is given, registered for that stream)."""
        info = self.sources.get(source)
        return info is not None and (stream is None or info.stream == stream)

    def must_sign(self, source: str) -> bool:
        info = self.sources.get(source)
        return bool(info and info.must_sign)

    def verify(self, source: str, event: Mapping[str, Any], sig: Any) -> bool:
        """True if ``sig`` is the hex HMAC-SHA256 of ``event`` (without `sig`) under the source's key."""
        info = self.sources.get(source)
        if info is None or info.key is None or not isinstance(sig, str):
            return False
        expected = sign(info.key, event)
        # Constant time, so the comparison does not leak how much of a forged signature was right.
        return hmac.compare_digest(expected, sig.lower())

    def check(self, stream: str, source: str, event: Mapping[str, Any]) -> str | None:
        """Why an event must be dead-lettered: 'untrusted_source', 'bad_signature', or None if it may pass."""
        if not self.is_known(source, stream):
            return "untrusted_source"
        if self.must_sign(source) and not self.verify(source, event, event.get("sig")):
            return "bad_signature"
        return None

    # -- service hours ----------------------------------------------------------------------------------
    def expected(self) -> list[str]:
        """Source ids whose silence is alerted on (``expected`` true), sorted."""
        return sorted(s for s, info in self.sources.items() if info.expected)

    def _local(self, ts: float) -> tuple[date, int]:
        d = datetime.fromtimestamp(ts, self.tz)
        return d.date(), d.hour * 60 + d.minute

    def _epoch(self, day: date, minute: int) -> float:
        return datetime.combine(day, time(minute // 60, minute % 60), self.tz).timestamp()

    def service_start(self, source: str, ts: float) -> float | None:
        """Epoch seconds when the service window holding ``ts`` began; None if 24 h, unknown, or out of service."""
        info = self.sources.get(source)
        if info is None or not info.windows:
            return None
        day, minute = self._local(ts)
        for start, end in info.windows:
            if end > start:
                if start <= minute < end:
                    return self._epoch(day, start)
            elif minute >= start:  # window crossing midnight, evening part
                return self._epoch(day, start)
            elif minute < end:  # window crossing midnight, morning part: it began yesterday
                return self._epoch(day - timedelta(days=1), start)
        return None

    def in_service(self, source: str, ts: float) -> bool:
        """Whether ``source`` is supposed to be sending at epoch ``ts`` (False for unknown sources)."""
        info = self.sources.get(source)
        if info is None:
            return False
        return not info.windows or self.service_start(source, ts) is not None

    def max_gap_s(self, source: str) -> float:
        info = self.sources.get(source)
        return info.max_gap_s if info else DEFAULT_MAX_GAP_S

    # -- locations --------------------------------------------------------------------------------------
    def location(self, source: str, station: str | None = None) -> tuple[float, float] | None:
        """(lat, lon) of the reader ``source``, else of ``station`` or the source's station; None if unknown."""
        info = self.sources.get(source)
        if info is not None and info.lat is not None and info.lon is not None:
            return info.lat, info.lon
        if station is not None and station in self.stations:
            return self.stations[station]
        if info is not None and info.station is not None:
            return self.stations.get(info.station)
        return None
