"""Source registry: loading and validation, HMAC signatures over canonical JSON, service hours, locations."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cityops.alerts.sources import SourceRegistry, SourceRegistryError, canonical_json, sign

SH = ZoneInfo("Asia/Shanghai")
KEY_HEX = "6b6579" * 8  # b"key" * 8
KEY = bytes.fromhex(KEY_HEX)


def at(hh: int, mm: int = 0, day: int = 6) -> float:
    return datetime(2024, 5, day, hh, mm, tzinfo=SH).timestamp()


def doc() -> dict[str, Any]:
    return {
        "sources": {
            "gate-1": {"stream": "traffic.card-taps", "service_hours": [["06:00", "23:00"]], "max_gap_s": 600,
                       "lat": 31.78, "lon": 119.95, "station": "S1"},
            "gate-1b": {"stream": "traffic.card-taps", "station": "S1"},
            "gate-9": {"stream": "traffic.card-taps", "station": "S9"},
            "night-bus": {"stream": "traffic.card-taps", "service_hours": [["22:00", "02:00"]]},
            "split": {"stream": "traffic.card-taps", "service_hours": [["12:00", "23:00"], ["06:00", "12:00"]]},
            "allday": {"stream": "traffic.card-taps", "service_hours": [["00:00", "24:00"]]},
            "det-1": {"stream": "traffic.road-detectors", "must_sign": True, "key": KEY_HEX, "max_gap_s": 120},
            "his-1": {"stream": "health.card-events", "key": KEY_HEX, "expected": False},
        },
        "stations": {"S9": {"lat": 31.7, "lon": 120.0}},
    }


@pytest.fixture
def reg(tmp_path: Path) -> SourceRegistry:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(doc()), encoding="utf-8")
    return SourceRegistry.load(path)


# -------------------------------------------------------------------------------------------------- trust
def test_known_sources_and_streams(reg: SourceRegistry) -> None:
    assert reg.is_known("gate-1") and reg.is_known("gate-1", "traffic.card-taps")
    assert not reg.is_known("gate-1", "health.card-events")  # listed, but not for that stream
    assert not reg.is_known("stranger")
    assert reg.must_sign("det-1") and not reg.must_sign("his-1") and not reg.must_sign("stranger")
    assert "his-1" not in reg.expected() and "det-1" in reg.expected()
    assert reg.expected() == sorted(reg.expected())
    assert reg.max_gap_s("det-1") == 120 and reg.max_gap_s("gate-9") == 600  # default


def test_canonical_json_is_sorted_compact_utf8_without_sig() -> None:
    ev = {"z": 1, "a": "常州", "sig": "ff" * 32, "n": {"y": 2.5, "b": None}}
    assert canonical_json(ev) == '{"a":"常州","n":{"b":null,"y":2.5},"z":1}'.encode()


def test_signature_known_answer(reg: SourceRegistry) -> None:
    ev = {"event_id": "e1", "station": "常州站", "speed_kmh": 41.5}
    body = b'{"event_id":"e1","speed_kmh":41.5,"station":"\xe5\xb8\xb8\xe5\xb7\x9e\xe7\xab\x99"}'
    sig = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    assert sign(KEY, ev) == sig
    assert reg.verify("det-1", ev, sig)
    assert reg.verify("det-1", {**ev, "sig": sig}, sig)  # the sig field itself is not covered
    assert reg.verify("det-1", dict(reversed(list(ev.items()))), sig)  # key order does not matter
    assert reg.verify("det-1", ev, sig.upper())


@pytest.mark.parametrize(
    "case",
    ["content", "key", "truncated", "not_hex", "none", "unknown_source", "source_without_key"],
)
def test_signature_rejected(reg: SourceRegistry, case: str) -> None:
    ev = {"event_id": "e1", "speed_kmh": 41.5}
    good = sign(KEY, ev)
    source, event, sig = "det-1", ev, good
    if case == "content":
        event = {**ev, "speed_kmh": 90.0}
    elif case == "key":
        sig = sign(b"other key", ev)
    elif case == "truncated":
        sig = good[:-2]
    elif case == "not_hex":
        sig = "zz" * 32
    elif case == "none":
        sig = None
    elif case == "unknown_source":
        source = "stranger"
    elif case == "source_without_key":
        source = "gate-1"
    assert not reg.verify(source, event, sig)


def test_check_reasons(reg: SourceRegistry) -> None:
    ev = {"event_id": "r1", "source": "det-1", "speed_kmh": 40.0}
    signed = {**ev, "sig": sign(KEY, ev)}
    assert reg.check("traffic.road-detectors", "det-1", signed) is None
    assert reg.check("traffic.road-detectors", "det-1", ev) == "bad_signature"  # must sign, did not
    assert reg.check("traffic.road-detectors", "det-1", {**signed, "speed_kmh": 1.0}) == "bad_signature"
    assert reg.check("traffic.road-detectors", "evil", signed) == "untrusted_source"
    assert reg.check("traffic.card-taps", "det-1", signed) == "untrusted_source"  # wrong stream
    assert reg.check("traffic.card-taps", "gate-1", {"event_id": "t1"}) is None  # need not sign


def test_keys_from_elsewhere_override_the_file(tmp_path: Path) -> None:
    d = doc()
    d["sources"]["det-1"]["key"] = None
    path = tmp_path / "s.json"
    path.write_text(json.dumps(d))
    with pytest.raises(SourceRegistryError, match="det-1.*'key'"):
        SourceRegistry.load(path)
    other = "ab" * 16
    reg = SourceRegistry.load(path, keys={"det-1": other})
    ev = {"event_id": "x"}
    assert reg.verify("det-1", ev, sign(bytes.fromhex(other), ev))
    with pytest.raises(SourceRegistryError, match="nobody"):
        SourceRegistry.load(path, keys={"det-1": other, "nobody": other})


# ------------------------------------------------------------------------------------------ service hours
@pytest.mark.parametrize(
    ("source", "hh", "mm", "day", "expected"),
    [
        ("gate-1", 5, 59, 6, False), ("gate-1", 6, 0, 6, True), ("gate-1", 22, 59, 6, True),
        ("gate-1", 23, 0, 6, False), ("night-bus", 23, 0, 6, True), ("night-bus", 1, 30, 7, True),
        ("night-bus", 2, 0, 7, False), ("night-bus", 12, 0, 7, False), ("allday", 3, 0, 6, True),
        ("det-1", 3, 0, 6, True), ("stranger", 12, 0, 6, False),
    ],
)
def test_in_service(reg: SourceRegistry, source: str, hh: int, mm: int, day: int, expected: bool) -> None:
    assert reg.in_service(source, at(hh, mm, day)) is expected


def test_service_start(reg: SourceRegistry) -> None:
    assert reg.service_start("gate-1", at(10)) == at(6)
    assert reg.service_start("gate-1", at(23, 30)) is None
    assert reg.service_start("night-bus", at(1, 0, day=7)) == at(22, 0, day=6)  # began the evening before
    assert reg.service_start("night-bus", at(23, 0)) == at(22)
    assert reg.service_start("split", at(13)) == at(6)  # touching windows are one service period
    assert reg.service_start("det-1", at(13)) is None  # around the clock
    assert reg.service_start("allday", at(13)) is None


# ------------------------------------------------------------------------------------------------ places
def test_location(reg: SourceRegistry) -> None:
    assert reg.location("gate-1") == (31.78, 119.95)
    assert reg.location("gate-1b") == (31.78, 119.95)  # its station, located by a sibling reader
    assert reg.location("gate-9") == (31.7, 120.0)  # the station registry
    assert reg.location("stranger", station="S9") == (31.7, 120.0)
    assert reg.location("det-1") is None and reg.location("stranger") is None


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["sources"]["gate-1"].pop("stream"), "gate-1.*'stream'"),
        (lambda d: d["sources"]["gate-1"].update(must_sign=True), "gate-1.*'key'"),
        (lambda d: d["sources"]["gate-1"].update(must_sign="yes"), "gate-1.*'must_sign'"),
        (lambda d: d["sources"]["det-1"].update(key="xyz"), "det-1.*'key'.*hex"),
        (lambda d: d["sources"]["gate-1"].update(service_hours=[["06:00", "25:00"]]), "gate-1.*service_hours"),
        (lambda d: d["sources"]["gate-1"].update(service_hours=[["06:00"]]), "gate-1.*service_hours"),
        (lambda d: d["sources"]["gate-1"].update(service_hours=[["06:00", "06:00"]]), "gate-1.*service_hours"),
        (lambda d: d["sources"]["gate-1"].update(service_hours="06-23"), "gate-1.*service_hours"),
        (lambda d: d["sources"]["gate-1"].update(max_gap_s=0), "gate-1.*'max_gap_s'"),
        (lambda d: d["sources"]["gate-1"].update(max_gap_s="10m"), "gate-1.*'max_gap_s'"),
        (lambda d: d["sources"]["gate-1"].update(lat=95.0), "gate-1.*'lat'"),
        (lambda d: d["sources"]["gate-1"].pop("lon"), "gate-1.*'lat'/'lon'"),
        (lambda d: d["sources"]["gate-1"].update(colour="red"), "gate-1.*colour"),
        (lambda d: d["sources"]["gate-1"].update(expected=1), "gate-1.*'expected'"),
        (lambda d: d["sources"].update(bad=[1]), "'bad'.*object"),
        (lambda d: d.update(tz="Mars/Olympus"), "'tz'"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["stations"].update(S8={"lat": 1.0}), "S8"),
        (lambda d: d.pop("sources"), "sources"),
    ],
)
def test_validation_errors_name_source_and_field(mutate: Any, match: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(SourceRegistryError, match=match):
        SourceRegistry.from_dict(d)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SourceRegistryError, match="bad.json.*not JSON"):
        SourceRegistry.load(bad)
    with pytest.raises(SourceRegistryError, match="missing.json"):
        SourceRegistry.load(tmp_path / "missing.json")
    d = doc()
    d["sources"]["gate-1"]["stream"] = ""
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(SourceRegistryError, match=r"s\.json.*gate-1.*'stream'"):
        SourceRegistry.load(tmp_path / "s.json")
    assert issubclass(SourceRegistryError, ValueError)
