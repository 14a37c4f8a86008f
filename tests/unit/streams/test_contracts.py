"""The committed stream contracts equal the typed models, and every sample satisfies both."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import pytest

from cityops.streams.contracts import CONTRACTS_DIR, contract_schema
from cityops.streams.models import MODELS

TOPICS = sorted(MODELS)


@pytest.mark.parametrize("topic", TOPICS)
def test_committed_schema_equals_model(topic: str) -> None:
    committed = json.loads((CONTRACTS_DIR / topic / "schema.json").read_text())
    assert committed == contract_schema(topic), (
        f"streams/{topic}/schema.json and cityops.streams.models drifted apart: change both on purpose, "
        "then run `python -m cityops.streams.contracts`")


@pytest.mark.parametrize("topic", TOPICS)
def test_samples_satisfy_schema_and_model(topic: str) -> None:
    schema = json.loads((CONTRACTS_DIR / topic / "schema.json").read_text())
    lines = (CONTRACTS_DIR / topic / "samples.jsonl").read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        doc = json.loads(line)
        jsonschema.validate(doc, schema)
        msgspec.json.decode(line.encode(), type=MODELS[topic])


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_and_model_reject_the_same_broken_events(topic: str) -> None:
    schema = json.loads((CONTRACTS_DIR / topic / "schema.json").read_text())
    good = json.loads((CONTRACTS_DIR / topic / "samples.jsonl").read_text().splitlines()[0])
    for field in schema["required"]:
        broken = {k: v for k, v in good.items() if k != field}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(broken, MODELS[topic])
    for field, prop in schema["properties"].items():
        if "enum" in prop:
            broken = dict(good, **{field: "not-a-member"})
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(broken, schema)
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert(broken, MODELS[topic])
