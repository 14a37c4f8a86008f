"""The language-neutral stream contracts (streams/<topic>/schema.json) and their link to the typed models.

`python -m cityops.streams.contracts` rewrites the schema files from the models; a unit test fails when
the committed contract and the models drift apart, so a change to either must be made on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from cityops.resources import contracts_dir
from cityops.streams.models import MODELS

# The contracts as shipped (package data); in a source checkout this is the repository's streams/ folder.
CONTRACTS_DIR = contracts_dir()

_TAG = (" InfluxDB tag `{}`: written as it is, or, when it holds a backslash or a control character or starts "
        "with `~b64:`, as `~b64:` + unpadded base64url of its UTF-8 (one to one, reversible; see README).")

DESCRIPTIONS: dict[str, str] = {
    "event_id": "Unique per event; an id seen again within 24 h of event time is counted once "
                "(same content: duplicate; different content: EventTampering).",
    "ts": "Event time, RFC 3339 date-time with an explicit offset, e.g. 2026-11-25T08:00:00.123+08:00. "
          "A leap second (23:59:60 UTC) is accepted and counted at 23:59:59.999999 UTC of its day. Its 60 s "
          "window must lie within what InfluxDB stores (1677-09-21T00:12:43.145224194Z.."
          "2262-04-11T23:47:16.854775806Z), else the event is dead-lettered.",
    "source": "The device or system that produced the event (reader, terminal, detector id).",
    "card_id": "One-card / health-card number. Pseudonymized at ingest with a keyed hash; never stored raw.",
    "mode": "Transport mode.",
    "line": "Metro line, bus route, bike area, coach route or parking lot (any UTF-8)." + _TAG.format("line"),
    "station": "Station, stop or dock, when known.",
    "direction": "in = tap on entry/boarding, out = tap on exit.",
    "fare_cny": "Fare charged, CNY.",
    "result": "Outcome of the tap / step.",
    "lat": "Reader latitude, WGS84 degrees.",
    "lon": "Reader longitude, WGS84 degrees.",
    "sig": "Hex HMAC-SHA256 with the source's key over the event's canonical JSON without sig "
           "(keys sorted, no whitespace, UTF-8). Required from sources the registry marks must_sign.",
    "segment": "Road segment id (any UTF-8)." + _TAG.format("segment"),
    "flow": "Vehicles counted in the interval.",
    "speed_kmh": "Mean speed in the interval, km/h.",
    "occupancy": "Share of the interval the detector was occupied, 0..1.",
    "interval_s": "Length of the reporting interval, seconds.",
    "hospital": "Hospital name (any UTF-8)." + _TAG.format("hospital"),
    "department": "Department, when known.",
    "kind": "Step of the visit.",
    "channel": "Where the step was done.",
    "wait_s": "Queue wait before this step, seconds.",
    "amount_cny": "Amount paid, CNY.",
}


def contract_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one event of ``topic``, derived from its model."""
    model = MODELS[topic]
    raw = msgspec.json.schema(model)
    body = raw["$defs"][model.__name__]
    props = {}
    for name, prop in body["properties"].items():
        prop = dict(prop)
        prop["description"] = DESCRIPTIONS.get(name, "")
        props[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://cityops.example/streams/{topic}/schema.json",
        "title": topic,
        "description": (body.get("description", "") + " A Kafka message value is UTF-8 JSON: one such object, "
                        "or a JSON array of them. Unknown fields are allowed and ignored. `format` is asserted (reference "
                        "validator: jsonschema-rs with format validation); an integer may be written with a zero "
                        "fraction (60.0), as JSON Schema defines integers by value."),
        "type": "object",
        "properties": props,
        "required": sorted(body.get("required", [])),
        "additionalProperties": True,
    }


def write_all(directory: Path = CONTRACTS_DIR) -> list[Path]:
    out = []
    for topic in MODELS:
        path = directory / topic / "schema.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(contract_schema(topic), ensure_ascii=False, indent=2) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":  # pragma: no cover
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else CONTRACTS_DIR):
        print("wrote", p)
