"""The language-neutral contract of ``parking.lot-occupancy`` (``data/streams/parking.lot-occupancy/schema.json``).

Derived from the typed model (``cityops_parking.stream.LotOccupancy``); ``python -m cityops_parking.contract DIR``
rewrites it, and a test holds the shipped file equal to the model, so a change to either is made on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from cityops_parking.stream import TOPIC, LotOccupancy

DESCRIPTIONS: dict[str, str] = {
    "event_id": "Unique per report; an id seen again within 24 h of event time is counted once "
                "(same content: duplicate; different content: EventTampering).",
    "ts": "Event time of the report, RFC 3339 date-time with an explicit offset, e.g. 2026-11-25T08:00:00+08:00.",
    "source": "The gate controller that reported (e.g. cz-pk-012-gate).",
    "lot": "Car park name or id (any UTF-8); the KPI's InfluxDB tag `lot`.",
    "capacity": "Parking spaces of the lot.",
    "occupied": "Spaces taken at ts (may exceed capacity: cars parked on aisles are counted).",
    "entries": "Cars that entered since the controller's previous report.",
    "exits": "Cars that left since the controller's previous report.",
    "sig": "Hex HMAC-SHA256 with the source's key over the event's canonical JSON without sig "
           "(keys sorted, no whitespace, UTF-8). Required from sources the registry marks must_sign.",
}


def contract_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of one ``parking.lot-occupancy`` event, derived from its model."""
    raw = msgspec.json.schema(LotOccupancy)
    body = raw["$defs"][LotOccupancy.__name__]
    props = {name: {**prop, "description": DESCRIPTIONS.get(name, "")} for name, prop in body["properties"].items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://cityops.example/streams/{TOPIC}/schema.json",
        "title": TOPIC,
        "description": (body.get("description", "") + " A Kafka message value is UTF-8 JSON: one such object, "
                        "or a JSON array of them. Unknown fields are allowed and ignored. `format` is asserted; an "
                        "integer may be written with a zero fraction (60.0), as JSON Schema defines integers by "
                        "value."),
        "type": "object",
        "properties": props,
        "required": sorted(body.get("required", [])),
        "additionalProperties": True,
    }


def write(directory: Path) -> Path:
    """Write ``directory/parking.lot-occupancy/schema.json``; returns its path."""
    path = directory / TOPIC / "schema.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contract_schema(), ensure_ascii=False, indent=2) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    print("wrote", write(Path(sys.argv[1])))
