"""cityops-parking without I/O: the contract and its samples, decoding, the KPI's fields, the lot_full rule."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from importlib.resources import files
from typing import Any

import jsonschema_rs
import pytest

from cityops.alerts.lifecycle import AlertEngine
from cityops.alerts.manifest import load_manifests
from cityops.engine.context import Decoded, Rejected
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.streams.city_streams import Pseudonymizer
from cityops_parking import PLUGIN, TOPIC, LotFull, LotOccupancyStream
from cityops_parking.contract import contract_schema

DATA = files("cityops_parking").joinpath("data")
CONTRACT = DATA.joinpath("streams", TOPIC)
SAMPLES = [json.loads(line) for line in CONTRACT.joinpath("samples.jsonl").read_text("utf-8").splitlines() if line]
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone(timedelta(hours=8)))


def report(i: int, minutes: float, occupied: int, *, lot: str = "P1", capacity: int = 400, entries: int = 0,
           exits: int = 0) -> dict[str, Any]:
    ts = (T0 + timedelta(minutes=minutes)).isoformat()
    return {"event_id": f"{lot}:{i}", "ts": ts, "source": f"{lot}-gate", "lot": lot, "capacity": capacity,
            "occupied": occupied, "entries": entries, "exits": exits}


def stream() -> LotOccupancyStream:
    return LotOccupancyStream(TOPIC, TOPIC, Pseudonymizer(b"parking-unit-key-0123"))


# ------------------------------------------------------------------------------------------- contract
def test_shipped_schema_is_the_models() -> None:
    assert json.loads(CONTRACT.joinpath("schema.json").read_text("utf-8")) == contract_schema()


def test_samples_validate_against_the_schema_and_decode() -> None:
    schema = json.loads(CONTRACT.joinpath("schema.json").read_text("utf-8"))
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)  # cityops' reference validator
    assert len(SAMPLES) >= 5
    for sample in SAMPLES:
        validator.validate(sample)
        [got] = stream().decode(json.dumps(sample, ensure_ascii=False).encode())
        assert isinstance(got, Decoded), got
        assert got.event.lot == sample["lot"] and got.event.occupied == sample["occupied"]
        assert got.event_id == sample["event_id"] and got.source == sample["source"]
        assert got.ts == datetime.fromisoformat(sample["ts"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("change, reason", [
    ({"capacity": 0}, "Expected `int` >= 1 - at `$.capacity`"),
    ({"occupied": -1}, "Expected `int` >= 0 - at `$.occupied`"),
    ({"lot": ""}, "Expected `str` of length >= 1 - at `$.lot`"),
    ({"ts": "2026-11-25 08:00:00"}, "at `$.ts`"),
])
def test_a_report_breaking_the_contract_is_rejected_with_the_field(change: dict[str, Any], reason: str) -> None:
    bad = {**SAMPLES[0], **change}
    [got] = stream().decode(json.dumps(bad).encode())
    assert isinstance(got, Rejected) and got.reason.startswith("contract: ") and reason in got.reason, got
    schema = json.loads(CONTRACT.joinpath("schema.json").read_text("utf-8"))
    assert not jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(bad)  # the contract refuses it too


def test_missing_lot_is_rejected_alone_in_a_batch() -> None:
    bad = dict(SAMPLES[1])
    del bad["lot"]
    got = stream().decode(json.dumps([SAMPLES[0], bad, SAMPLES[2]], ensure_ascii=False).encode())
    assert [type(r).__name__ for r in got] == ["Decoded", "Rejected", "Decoded"]
    assert got[1].reason == "contract: Object missing required field `lot` - at `$[1]`"


# ------------------------------------------------------------------------------------------- KPI
def test_kpi_fields_of_one_lots_window_are_exact() -> None:
    engine = Engine(StateStore(None), [stream()], now=lambda: T0.timestamp() + 3600)
    events = [report(1, 0.0, 380, entries=5, exits=1), report(2, 0.25, 390, entries=12, exits=2),
              report(3, 0.5, 402, entries=13, exits=1), report(4, 0.75, 398, entries=0, exits=4)]
    engine.process(TOPIC, 0, 0, json.dumps(events).encode(), T0.timestamp())
    points = [p for p in engine.checkpoint().points if p.measurement == "parking_occupancy"]
    [point] = points
    assert point.tags == {"lot": "P1"} and point.ts == int(T0.timestamp())
    ratios = [380 / 400, 390 / 400, 402 / 400, 398 / 400]
    assert point.fields == {"reports": 4, "occupancy_mean": round(sum(ratios) / 4, 5), "occupancy_max": 1.005,
                            "entries": 30, "exits": 8}
    assert set(point.fields) == set(PLUGIN.kpis[0].doc)  # the declared fields, no others


# ------------------------------------------------------------------------------------------- rule
def test_lot_full_fires_after_its_for_and_resolves_after_recovery() -> None:
    specs = load_manifests(DATA.joinpath("agents"), kinds={"lot_full"})
    spec = specs["ParkingLotFull"]
    assert (spec.kind, spec.for_s, spec.resolve_after_s, spec.params) == ("lot_full", 900.0, 600.0,
                                                                          {"min_occupancy": 0.95})
    store = StateStore(None)
    alerts = AlertEngine(store, specs, sinks=["kafka"])
    rule = LotFull(spec)
    engine = Engine(store, [stream()], signals=alerts, rules=[rule], now=lambda: T0.timestamp() + 86400)
    # Full (>= 95 %) from minute 0 to minute 20, then 50 % until minute 40; a second lot never full.
    events = [report(i, i, 390 if i <= 20 else 200) for i in range(41)]
    events += [report(100 + i, i, 100, lot="P2") for i in range(41)]
    events.sort(key=lambda e: e["ts"])
    for offset, ev in enumerate(events):
        engine.process(TOPIC, 0, offset, json.dumps(ev).encode(), T0.timestamp() + 86400)
    engine.checkpoint()
    got = [(tr.status, tr.entity, tr.ts - T0.timestamp()) for _, tr in alerts.pop_outbox(100)]
    assert got == [("pending", {"lot": "P1"}, 0.0), ("firing", {"lot": "P1"}, 900.0),
                   ("resolved", {"lot": "P1"}, 1860.0)]
    firing = [tr for _, tr in alerts.pop_outbox(100) if tr.status == "firing"][0]
    assert firing.labels["alertname"] == "ParkingLotFull" and firing.labels["domain"] == "traffic"
    assert firing.annotations["summary"] == "Car park P1 is 98% full"
    assert firing.annotations["runbook_url"].endswith("/parking.md#parkinglotfull")


def test_lot_full_params_are_checked() -> None:
    from cityops.alerts.spec import RuleSpec

    with pytest.raises(ValueError, match=r"param 'min_occupancy': must be in \(0, 2\], got 0.0"):
        LotFull(RuleSpec(name="X", kind="lot_full", agent="parking", params={"min_occupancy": 0}))
