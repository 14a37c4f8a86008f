"""EPCIS intake: official examples, schema rejections, CBV terms, identifier equivalence, event identity."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pytest

from cityops.engine.context import Decoded, Rejected
from cityops.food.epcis import (
    DEFAULT_SCHEMA_PATH,
    canonical_id,
    cbv,
    event_hash_id,
    gs1_check_digit,
    temperatures,
    to_celsius,
)
from cityops.food.stream import FoodStream

SHARED = Path(__file__).resolve().parents[4] / "shared"  # ../shared beside the checkout
EXAMPLES = SHARED / "data" / "epcis" / "JSON"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".json", ".jsonld"))
CONTEXT = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]


@pytest.fixture(scope="module")
def stream() -> FoodStream:
    return FoodStream()


def _expected_events(path: Path) -> int:
    doc = json.loads(path.read_text("utf-8"))
    body = doc["epcisBody"]
    if "eventList" in body:
        return len(body["eventList"])
    return len(body["queryResults"]["resultsBody"]["eventList"])


def _doc(*events: dict) -> dict:
    return {"@context": CONTEXT, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2024-05-01T08:00:00+08:00", "epcisBody": {"eventList": list(events)}}


def _event(**kw: object) -> dict:
    ev = {"type": "ObjectEvent", "eventTime": "2024-05-01T08:00:00.000+08:00", "eventTimeZoneOffset": "+08:00",
          "action": "OBSERVE", "epcList": ["urn:epc:id:sgtin:4012345.011111.987"], "bizStep": "shipping",
          "readPoint": {"id": "urn:epc:id:sgln:4012345.00001.0"}}
    ev.update(kw)
    return ev


def _split(out: list) -> tuple[list[Decoded], list[Rejected]]:
    return [o for o in out if isinstance(o, Decoded)], [o for o in out if isinstance(o, Rejected)]


def test_there_are_47_official_examples() -> None:
    assert len(EXAMPLE_FILES) == 47
    assert sum(_expected_events(p) for p in EXAMPLE_FILES) == 56


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_official_example_accepted_with_exact_event_count(stream: FoodStream, path: Path) -> None:
    ok, bad = _split(stream.decode(path.read_bytes()))
    assert bad == []
    assert len(ok) == _expected_events(path)
    assert [d.index for d in ok] == list(range(len(ok)))
    for d in ok:
        assert d.ts > 0 and d.event_id and len(d.digest) == 16


def test_schema_copy_is_the_official_one() -> None:
    official = SHARED / "data" / "epcis" / "EPCIS-JSON-Schema.json"
    assert DEFAULT_SCHEMA_PATH.read_bytes() == official.read_bytes()
    assert (DEFAULT_SCHEMA_PATH.parent / "PROVENANCE.md").exists()


def test_invalid_document_header_rejects_whole_message(stream: FoodStream) -> None:
    doc = _doc(_event())
    del doc["schemaVersion"]
    out = stream.decode(orjson.dumps(doc))
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].index is None
    assert "/definitions/epcisDocument/required" in out[0].reason
    assert "schemaVersion" in out[0].reason


def test_one_bad_event_does_not_reject_the_rest(stream: FoodStream) -> None:
    doc = _doc(_event(eventID="urn:uuid:00000000-0000-4000-8000-000000000001"),
               _event(eventTime="yesterday"),
               _event(eventID="urn:uuid:00000000-0000-4000-8000-000000000003", action="SIDEWAYS"))
    ok, bad = _split(stream.decode(orjson.dumps(doc)))
    assert [d.index for d in ok] == [0]
    assert [r.index for r in bad] == [1, 2]
    assert "at /epcisBody/eventList/1/eventTime" in bad[0].reason
    assert "schema /definitions/time/format" in bad[0].reason
    assert "at /epcisBody/eventList/2/action" in bad[1].reason
    assert bad[1].fragment["action"] == "SIDEWAYS"


def test_query_document_bad_event_path(stream: FoodStream) -> None:
    doc = json.loads((EXAMPLES / "EPCISQueryDocument.jsonld").read_text("utf-8"))
    del doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"][1]["eventTimeZoneOffset"]
    ok, bad = _split(stream.decode(orjson.dumps(doc)))
    assert len(ok) == 1 and len(bad) == 1 and bad[0].index == 1
    assert "/epcisBody/queryResults/resultsBody/eventList/1" in bad[0].reason
    assert "eventTimeZoneOffset" in bad[0].reason


def test_single_event_message(stream: FoodStream) -> None:
    ev = _event(eventID="urn:uuid:00000000-0000-4000-8000-00000000000a", **{"@context": CONTEXT})
    ok, bad = _split(stream.decode(orjson.dumps(ev)))
    assert len(ok) == 1 and not bad
    del ev["action"]
    out = stream.decode(orjson.dumps(ev))
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].index is None
    assert "action" in out[0].reason and "schema /" in out[0].reason


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"type": "EPCISDocument"'])
def test_malformed_json_rejected(stream: FoodStream, raw: bytes) -> None:
    out = stream.decode(raw)
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].index is None
    assert out[0].reason.startswith("malformed JSON")


@pytest.mark.parametrize("msg", [[1, 2], "EPCISDocument", {"no": "type"}, {"type": "EPCISDocument"}])
def test_not_epcis_rejected(stream: FoodStream, msg: object) -> None:
    out = stream.decode(orjson.dumps(msg))
    assert len(out) == 1 and isinstance(out[0], Rejected) and out[0].index is None


@pytest.mark.parametrize("value", ["shipping", "https://ref.gs1.org/cbv/BizStep-shipping", "cbv:BizStep-shipping",
                                   "urn:epcglobal:cbv:bizstep:shipping"])
def test_cbv_bizstep_spellings(value: str) -> None:
    assert cbv(value, "BizStep") == "shipping"


@pytest.mark.parametrize("value", ["in_transit", "https://ref.gs1.org/cbv/Disp-in_transit", "cbv:Disp-in_transit",
                                   "urn:epcglobal:cbv:disp:in_transit"])
def test_cbv_disposition_spellings(value: str) -> None:
    assert cbv(value, "Disp") == "in_transit"


def test_cbv_extension_uri_unchanged() -> None:
    assert cbv("https://example.com/steps/cutting", "BizStep") == "https://example.com/steps/cutting"
    assert cbv(None, "BizStep") is None


def test_cbv_spellings_equal_through_decode(stream: FoodStream) -> None:
    spellings = ["shipping", "https://ref.gs1.org/cbv/BizStep-shipping", "cbv:BizStep-shipping"]
    doc = _doc(*[_event(bizStep=s, eventID=f"urn:uuid:00000000-0000-4000-8000-00000000010{i}")
                 for i, s in enumerate(spellings)])
    ok, bad = _split(stream.decode(orjson.dumps(doc)))
    assert not bad and {d.event["step"] for d in ok} == {"shipping"}


def test_epcis1_cbv_urns_are_schema_invalid_unless_legacy_enabled() -> None:
    doc = orjson.dumps(_doc(_event(bizStep="urn:epcglobal:cbv:bizstep:shipping",
                                   disposition="urn:epcglobal:cbv:disp:in_transit")))
    ok, bad = _split(FoodStream().decode(doc))
    assert not ok and "/bizStep" in bad[0].reason
    ok, bad = _split(FoodStream(legacy_cbv_urns=True).decode(doc))
    assert not bad and ok[0].event["step"] == "shipping" and ok[0].event["disp"] == "in_transit"


@pytest.mark.parametrize(("a", "b"), [
    ("urn:epc:id:sgtin:4012345.011111.987", "https://id.gs1.org/01/04012345111118/21/987"),
    ("urn:epc:class:lgtin:4012345.012345.998877", "https://id.gs1.org/01/04012345123456/10/998877"),
    ("urn:epc:id:sscc:4012345.0000000001", "https://id.gs1.org/00/040123450000000016"),
    ("urn:epc:id:sgln:4012345.00001.0", "https://id.gs1.org/414/4012345000016"),
    ("https://example.com/01/04012345111118/21/987?linkType=all", "https://id.gs1.org/01/04012345111118/21/987"),
])
def test_identifier_equivalence(a: str, b: str) -> None:
    assert canonical_id(a) == canonical_id(b) == b


def test_check_digits() -> None:
    assert gs1_check_digit("0401234511111") == 8  # GTIN-14 04012345111118
    assert gs1_check_digit("0401234512345") == 6
    assert gs1_check_digit("04012345000000001") == 6  # SSCC 040123450000000016
    assert gs1_check_digit("629104150021") == 3  # GTIN-13 6291041500213 (GS1 example)


def test_non_gs1_identifier_unchanged() -> None:
    assert canonical_id("urn:uuid:1234") == "urn:uuid:1234"
    assert canonical_id("https://example.org/asset/7") == "https://example.org/asset/7"


def test_event_id_used_when_present(stream: FoodStream) -> None:
    ev = _event(eventID="urn:uuid:11111111-2222-4333-8444-555555555555")
    (d,) = stream.decode(orjson.dumps(_doc(ev)))
    assert isinstance(d, Decoded) and d.event_id == "urn:uuid:11111111-2222-4333-8444-555555555555"


def test_hash_id_when_no_event_id_matches_reference_implementation(stream: FoodStream) -> None:
    from epcis_event_hash_generator.hash_generator import epcis_hashes_from_events
    from epcis_event_hash_generator.json_to_py import event_list_from_epcis_document_json

    doc = json.loads((EXAMPLES / "Example_9.6.1-ObjectEvent.jsonld").read_text("utf-8"))
    for ev in doc["epcisBody"]["eventList"]:
        del ev["eventID"]
    reference = epcis_hashes_from_events(event_list_from_epcis_document_json(copy.deepcopy(doc)))
    ok, bad = _split(stream.decode(orjson.dumps(doc)))
    assert not bad
    assert [d.event_id for d in ok] == reference
    assert all(i.startswith("ni:///sha-256;") and i.endswith("?ver=CBV2.0") for i in reference)


def _reverse_keys(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _reverse_keys(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reverse_keys(v) for v in obj]
    return obj


def test_hash_id_and_digest_stable_under_key_order(stream: FoodStream) -> None:
    ev = _event(quantityList=[{"epcClass": "urn:epc:class:lgtin:4012345.012345.998877", "quantity": 20.5,
                               "uom": "KGM"}], bizLocation={"id": "urn:epc:id:sgln:4012345.00002.0"})
    (a,) = stream.decode(orjson.dumps(_doc(ev)))
    (b,) = stream.decode(json.dumps(_reverse_keys(_doc(ev)), indent=3).encode())
    assert isinstance(a, Decoded) and isinstance(b, Decoded)
    assert a.event_id == b.event_id and a.event_id.startswith("ni:///sha-256;")
    assert a.digest == b.digest
    (c,) = stream.decode(orjson.dumps(_doc(_event(bizStep="receiving"))))
    assert isinstance(c, Decoded) and c.event_id != a.event_id and c.digest != a.digest


def test_hash_id_same_for_equivalent_cbv_spelling() -> None:
    a = event_hash_id(_event(bizStep="shipping"), CONTEXT)
    b = event_hash_id(_event(bizStep="https://ref.gs1.org/cbv/BizStep-shipping"), CONTEXT)
    assert a == b


def test_hash_fallback_for_reference_implementation_gap(stream: FoodStream) -> None:
    # The reference code crashes on a bizTransaction without "type" (schema-valid); identity falls back.
    path = EXAMPLES / "Example-TransactionEvents-2020_07_03y.jsonld"
    ok, bad = _split(stream.decode(path.read_bytes()))
    assert not bad and len(ok) == 2
    assert ok[0].event_id.endswith("?ver=cityops-json")
    ok2, _ = _split(stream.decode(path.read_bytes()))
    assert [d.event_id for d in ok2] == [d.event_id for d in ok]


def test_event_time_source_and_roles(stream: FoodStream) -> None:
    ev = _event(eventID="urn:uuid:00000000-0000-4000-8000-0000000000ff", eventTime="2024-05-01T08:00:00.500+08:00",
                bizLocation={"id": "urn:epc:id:sgln:4012345.00002.0"})
    (d,) = stream.decode(orjson.dumps(_doc(ev)))
    assert isinstance(d, Decoded)
    assert d.ts == pytest.approx(1714521600.5)
    assert d.source == "https://id.gs1.org/414/4012345000016"  # readPoint first
    assert d.event["own"] == ["https://id.gs1.org/01/04012345111118/21/987"]
    assert d.event["loc"] == "https://id.gs1.org/414/4012345000023"


def test_temperature_units() -> None:
    assert to_celsius(39.2, "FAH") == pytest.approx(4.0)
    assert to_celsius(275.15, "KEL") == pytest.approx(2.0)
    assert to_celsius(3, None) == 3.0
    assert to_celsius(3, "KGM") is None
    ev = {"sensorElementList": [{"sensorReport": [
        {"type": "gs1:Temperature", "value": 41.0, "uom": "FAH"},
        {"type": "Temperature", "minValue": 1.0, "maxValue": 5.5, "uom": "CEL"},
        {"type": "Humidity", "value": 80, "uom": "A93"},
        {"type": "https://gs1.org/voc/MT-Temperature", "value": 276.15, "uom": "KEL"},
    ]}]}
    assert temperatures(ev) == pytest.approx([5.0, 1.0, 5.5, 3.0])
