"""Lot lineage: facts through inputs and containers, retention, durability across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cityops.engine.state import StateStore
from cityops.food.epcis import canonical_id
from cityops.food.lineage import COMMISSIONED, INSPECTED_NC, INSPECTED_OK, RECEIVED, TRACED, Lineage
from cityops.food.stream import normalise

SH = "urn:epc:id:sgln:6901001.00001.0"
MARKET = "urn:epc:id:sgln:6904000.00001.0"
CARCASS = "urn:epc:id:sgtin:6901001.010000.1"
CARCASS_DL = "https://id.gs1.org/01/06901001100000/21/1"  # the same carcass as a Digital Link
CUT = "urn:epc:class:lgtin:6901001.020001.L1"
CRATE = "urn:epc:id:sscc:6901001.1000000001"
PALLET = "urn:epc:id:sscc:6901001.2000000001"
DAY = 86400.0


def obj(step: str, epcs: list[str], disp: str | None = None, *, action: str = "OBSERVE",
        classes: list[str] = (), loc: str = SH, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "ObjectEvent", "action": action, "bizStep": step, "epcList": list(epcs),
                          "bizLocation": {"id": loc}}
    if classes:
        ev["quantityList"] = [{"epcClass": c, "quantity": 10, "uom": "KGM"} for c in classes]
    if disp:
        ev["disposition"] = disp
    ev.update(kw)
    return normalise(ev)


def cut(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    return normalise({"type": "TransformationEvent", "bizStep": "commissioning", "inputEPCList": inputs,
                      "outputQuantityList": [{"epcClass": o, "quantity": 20, "uom": "KGM"} for o in outputs]})


def pack(parent: str, children: list[str] = (), classes: list[str] = (), action: str = "ADD") -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "AggregationEvent", "action": action, "bizStep": "packing", "parentID": parent,
                          "childEPCs": list(children)}
    if classes:
        ev["childQuantityList"] = [{"epcClass": c, "quantity": 5, "uom": "KGM"} for c in classes]
    return normalise(ev)


def lin() -> Lineage:
    return Lineage(StateStore(None))


def test_own_history_fully_traced() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], "active", action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 2.0)
    lg.record(obj("receiving", [CARCASS], loc=MARKET), 3.0)
    assert lg.traced(CARCASS)
    assert lg.facts(CARCASS) & TRACED == TRACED


def test_urn_and_digital_link_are_one_lot() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS_DL], "conformant"), 2.0)
    lg.record(obj("receiving", [CARCASS_DL]), 3.0)
    assert lg.traced(CARCASS) and lg.traced(CARCASS_DL)
    assert len(lg.lots) == 1


def test_missing_inspection_not_traced() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("receiving", [CARCASS]), 3.0)
    assert not lg.traced(CARCASS)
    assert lg.facts(CARCASS) == COMMISSIONED | RECEIVED


def test_non_conformant_inspection_not_traced() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "non_conformant"), 2.0)
    lg.record(obj("receiving", [CARCASS]), 3.0)
    assert not lg.traced(CARCASS)
    assert lg.own_facts(CARCASS) & INSPECTED_NC


def test_cut_traced_through_transformation() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 2.0)
    lg.record(cut([CARCASS], [CUT]), 3.0)
    assert not lg.traced(CUT)  # not received yet
    lg.record(obj("receiving", [], classes=[CUT], loc=MARKET), 4.0)
    assert lg.traced(CUT)
    assert lg.own_facts(CUT) == RECEIVED


def test_transformation_commissioning_is_not_slaughter() -> None:
    lg = lin()
    lg.record(cut([CARCASS], [CUT]), 3.0)  # carcass never commissioned (no slaughter record)
    lg.record(obj("inspecting", [], "conformant", classes=[CUT]), 4.0)
    lg.record(obj("receiving", [], classes=[CUT]), 5.0)
    assert not lg.traced(CUT)


def test_traced_through_aggregation_containers_transitively() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 2.0)
    lg.record(cut([CARCASS], [CUT]), 3.0)
    lg.record(pack(CRATE, classes=[CUT]), 4.0)
    lg.record(pack(PALLET, children=[CRATE]), 5.0)
    assert not lg.traced(CUT)
    lg.record(obj("receiving", [PALLET], loc=MARKET), 6.0)  # only the pallet is scanned on arrival
    assert lg.traced(CUT)
    lg.record(pack(PALLET, children=[CRATE], action="DELETE"), 7.0)
    assert lg.traced(CUT)  # unpacking does not erase what happened while packed


def test_container_facts_do_not_flow_down_to_inputs() -> None:
    lg = lin()
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 2.0)
    lg.record(cut([CARCASS], [CUT]), 3.0)
    lg.record(pack(CRATE, classes=[CUT]), 4.0)
    lg.record(obj("receiving", [CRATE]), 5.0)
    assert lg.traced(CUT)
    assert not lg.traced(CARCASS)  # the carcass itself was never received anywhere


def test_cycles_and_unknown_lots_are_safe() -> None:
    lg = lin()
    lg.record(pack(CRATE, children=[PALLET]), 1.0)
    lg.record(pack(PALLET, children=[CRATE]), 2.0)
    assert lg.facts(CRATE) == 0 and not lg.traced("urn:epc:id:sgtin:1.2.3")


def test_certificate_locations() -> None:
    lg = lin()
    assert lg.certificate("cert:1", "A", 1.0) == 1
    assert lg.certificate("cert:1", "A", 2.0) == 1
    assert lg.certificate("cert:1", "B", 3.0) == 2


def test_retention_drops_old_history() -> None:
    lg = Lineage(StateStore(None), retention_s=7 * DAY)
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 0.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 10.0)
    lg.certificate("cert:old", SH, 10.0)
    lg.record(cut([CARCASS], [CUT]), 20.0)
    lg.record(obj("receiving", [], classes=[CUT]), 30.0)
    assert lg.traced(CUT)
    other = "urn:epc:id:sgtin:6901001.010000.2"
    for day in range(1, 9):  # event time moves on, other lots keep arriving
        lg.record(obj("commissioning", [other], action="ADD"), day * DAY)
    assert canonical_id(CARCASS) not in lg.lots and canonical_id(CUT) not in lg.lots
    assert "cert:old" not in lg.certs
    assert canonical_id(other) in lg.lots
    assert not lg.traced(CUT)
    assert len(lg.lots) == 1


def test_recent_history_survives_sweep() -> None:
    lg = Lineage(StateStore(None), retention_s=2 * DAY)
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 0.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 1.5 * DAY)  # refreshes last-seen
    lg.record(obj("receiving", [CARCASS]), 3.0 * DAY)
    assert lg.traced(CARCASS)


def test_durable_across_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path, fsync=False).open()
    lg = Lineage(store)
    lg.record(obj("commissioning", [CARCASS], action="ADD"), 1.0)
    lg.record(obj("inspecting", [CARCASS], "conformant"), 2.0)
    lg.record(cut([CARCASS], [CUT]), 3.0)
    store.commit({("food.trace-events", 0): 3})
    lg.record(obj("receiving", [], classes=[CUT]), 4.0)  # never committed: lost with the crash
    store.close()
    again = StateStore(tmp_path, fsync=False).open()
    lg2 = Lineage(again)
    assert lg2.own_facts(CARCASS) == COMMISSIONED | INSPECTED_OK
    assert lg2.upstream(CUT) == [canonical_id(CARCASS)] and not lg2.traced(CUT)
    lg2.record(obj("receiving", [], classes=[CUT]), 4.0)
    assert lg2.traced(CUT)
    again.close()
