"""Source registry by choice: none unless CITYOPS_SOURCE_REGISTRY names one; enforce vs observe for unlisted sources."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops import resources
from cityops.alerts.wiring import build_alerting, load_registry_gate, resolve_rules_dir, resolve_source_registry
from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from cityops.errors import ConfigError
from cityops.metrics import Metrics
from cityops.runtime import build_streams
from cityops.settings import load_settings

TAPS = "traffic.card-taps"
T0 = 1795564800.0  # 2026-11-25T00:00:00Z
BASE = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "CITYOPS_INFLUX_URL": "http://127.0.0.1:8086",
        "CITYOPS_PSEUDONYM_KEY": "unit-test-key-0123456789", "CITYOPS_DATA_DIR": "/nonexistent"}


def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"sources": {"gate-1": {"stream": TAPS, "expected": False}}}))
    return path


def tap(i: int, source: str, ts: float = T0) -> bytes:
    return json.dumps({"event_id": f"e{i}", "ts": datetime.fromtimestamp(ts + i, timezone.utc).isoformat(),
                       "source": source, "card_id": f"62220000{i:08d}", "mode": "metro", "line": "L1",
                       "direction": "in", "fare_cny": 2}).encode()


def run(env: dict[str, str]) -> tuple[Engine, Any, Any, Metrics]:
    settings = load_settings({**BASE, **env})
    store = StateStore(None)
    metrics = Metrics()
    alerts, rules, gate = build_alerting(settings, store, metrics.on_unlisted)
    engine = Engine(store, build_streams(settings, alerts.rules if alerts is not None else None), signals=alerts, rules=rules, registry=gate, settings=settings,
                    now=lambda: T0 + 60)
    offset = 0
    for i, source in enumerate(["gate-1", "stranger-a", "stranger-a", "stranger-b", "gate-1", "stranger-a"]):
        engine.process(TAPS, 0, offset, tap(i, source))
        offset += 1
    return engine, alerts, gate, metrics


def untrusted_alerts(alerts: Any) -> dict[str, str]:
    return {dict(key[1])["source"]: rec["status"] for key, rec in alerts.alerts.items() if key[0] == "UntrustedSource"}


def test_no_registry_unless_named(tmp_path: Path) -> None:
    assert resolve_source_registry(None) is None
    assert resolve_source_registry("none") is None
    assert resolve_source_registry("simulator") == resources.simulator_registry()
    assert resolve_source_registry(str(registry_file(tmp_path))) == registry_file(tmp_path)
    engine, alerts, gate, _ = run({})
    assert gate is None
    assert engine.counts[(TAPS, "accepted")] == 6 and engine.counts[(TAPS, "untrusted")] == 0
    assert untrusted_alerts(alerts) == {}


def test_rules_default_to_the_packaged_manifests() -> None:
    assert resolve_rules_dir(None) == resources.rules_dir()
    assert resolve_rules_dir("none") is None
    assert sorted(p.name for p in resources.rules_dir().glob("*.yml")) == [
        "data-quality.yml", "food-safety.yml", "health-security.yml", "kpi-anomaly.yml", "traffic-security.yml"]
    _, alerts, _, _ = run({})
    from tests.installed_plugins import plugin_rules

    # (and the rules of agent plugins installed here, e.g. examples/cityops-parking)
    assert alerts is not None and len(alerts.rules) == 15 + plugin_rules()


def test_enforce_dead_letters_unlisted_sources(tmp_path: Path) -> None:
    engine, alerts, gate, metrics = run({"CITYOPS_SOURCE_REGISTRY": str(registry_file(tmp_path))})
    assert gate.mode == "enforce"
    assert engine.counts[(TAPS, "accepted")] == 2
    assert engine.counts[(TAPS, "untrusted")] == 4
    assert len(engine.dlq) == 4
    assert untrusted_alerts(alerts) == {"stranger-a": "firing", "stranger-b": "firing"}
    assert gate.unlisted == {}


def test_observe_processes_counts_and_alerts_once_per_source(tmp_path: Path) -> None:
    engine, alerts, gate, metrics = run({"CITYOPS_SOURCE_REGISTRY": str(registry_file(tmp_path)),
                                         "CITYOPS_UNKNOWN_SOURCES": "observe"})
    assert gate.mode == "observe"
    # Every event is processed as if its source were listed: counted in the KPI window, nothing dead-lettered.
    assert engine.counts[(TAPS, "accepted")] == 6
    assert engine.counts[(TAPS, "untrusted")] == 0 and len(engine.dlq) == 0
    # ... and the unlisted ones are counted, per source, and in the metric.
    assert gate.unlisted == {(TAPS, "stranger-a"): 3, (TAPS, "stranger-b"): 1}
    assert metrics.registry.get_sample_value("cityops_unlisted_source_events_total", {"stream": TAPS}) == 4
    assert gate.status() == {"path": str(registry_file(tmp_path)), "unknown_sources": "observe", "sources": 1,
                             "gated_streams": [TAPS], "unlisted_sources": 2, "unlisted_events": {TAPS: 4}}
    # One UntrustedSource alert per unlisted source (not per event), saying the event went on.
    assert untrusted_alerts(alerts) == {"stranger-a": "firing", "stranger-b": "firing"}
    transitions = [item for _, item in alerts.pop_outbox(1000)
                   if item.alertname == "UntrustedSource" and item.status == "firing"]
    assert sorted(t.labels["source"] for t in transitions) == ["stranger-a", "stranger-b"]
    assert all("observe mode" in t.annotations["description"] for t in transitions)


def test_observe_still_dead_letters_bad_signatures(tmp_path: Path) -> None:
    path = tmp_path / "signed.json"
    path.write_text(json.dumps({"sources": {"gate-1": {"stream": TAPS, "must_sign": True, "key": "00" * 32}}}))
    settings = load_settings({**BASE, "CITYOPS_SOURCE_REGISTRY": str(path), "CITYOPS_UNKNOWN_SOURCES": "observe"})
    gate = load_registry_gate(settings)
    engine = Engine(StateStore(None), build_streams(settings), registry=gate, settings=settings, now=lambda: T0)
    engine.process(TAPS, 0, 0, tap(1, "gate-1"))  # listed, must sign, no sig
    engine.process(TAPS, 0, 1, tap(2, "newcomer"))  # unlisted: observed
    assert engine.counts[(TAPS, "bad_signature")] == 1
    assert engine.counts[(TAPS, "accepted")] == 1


def test_bad_registry_or_mode_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"sources": {"x": {"stream": "traffic.card-taps", "max_gap": 5}}}')
    with pytest.raises(ConfigError, match="CITYOPS_SOURCE_REGISTRY: .*max_gap"):
        load_registry_gate(load_settings({**BASE, "CITYOPS_SOURCE_REGISTRY": str(bad)}))
    with pytest.raises(ConfigError, match="CITYOPS_SOURCE_REGISTRY: .*cannot read"):
        load_registry_gate(load_settings({**BASE, "CITYOPS_SOURCE_REGISTRY": str(tmp_path / "missing.json")}))
    with pytest.raises(ConfigError, match="CITYOPS_UNKNOWN_SOURCES"):
        load_settings({**BASE, "CITYOPS_UNKNOWN_SOURCES": "allow"})


def test_the_streams_a_registry_gates_and_those_it_does_not_are_named(tmp_path: Path) -> None:
    """A stream is gated once the registry lists a source for it; one it lists none for accepts any source
    (EPCIS partners, a new plugin's stream): check-config and the start-up log name both sets."""
    from cityops.alerts.wiring import registry_mode

    _, _, gate, _ = run({"CITYOPS_SOURCE_REGISTRY": str(registry_file(tmp_path))})
    assert gate is not None and gate.streams == {TAPS}
    text = registry_mode(gate, [TAPS, "food.trace-events"])
    assert text.endswith(f"; gates {TAPS}; not gated (the registry lists no source for them, any source is "
                         "accepted): food.trace-events")
    assert gate.status()["gated_streams"] == [TAPS]
    # An event of a stream the registry does not cover passes the gate whatever its source.
    from cityops.engine.context import Decoded

    ev = Decoded("e-1", T0, "anyone", b"", None, None)
    assert gate.check("food.trace-events", ev, b"{}") is None
    assert gate.check(TAPS, ev, b"{}") == ("untrusted", f"untrusted source: 'anyone' is not registered for {TAPS}")
