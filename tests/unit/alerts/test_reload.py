"""Manifests reload without a restart: the runtime (engine, lifecycle, outbox) driven record by record.

No servers: the runtime's sinks only queue (nothing is delivered), so the alert outbox holds every
transition the lifecycle emitted, in order.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops.runtime import Runtime
from cityops.settings import load_settings

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=CST)
TAPS = "traffic.card-taps"

RUNBOOK = "# reload-test\n\n## FastCard\n\ntext\n\n## DeclinedCards\n\ntext\n\n## NewRule\n\ntext\n\n## ColdChain\n\ntext\n"


def manifest(*, fast: dict[str, Any] | None = None, declined: bool = True, new_rule: bool = False,
             cold: dict[str, Any] | None = None) -> str:
    """The test manifest: FastCard (impossible_travel) with ``fast`` overriding its keys, and others."""
    rule = {"alert": "FastCard", "kind": "impossible_travel", "severity": "critical", "resolve_after": "30m",
            "params": {"max_speed_kmh": 150, "min_km": 1}, "summary": "Card {card} at {value:.0f} km/h"}
    rules = []
    rule.update(fast or {})
    if not rule.pop("_remove", False):
        rules.append(rule)
    if declined:
        rules.append({"alert": "DeclinedCards", "kind": "declined_burst", "severity": "warning",
                      "resolve_after": "30m", "params": {"count": 3, "window_s": "10m"},
                      "summary": "Card {card}: {value:.0f} declined taps"})
    if new_rule:
        rules.append({"alert": "NewRule", "kind": "declined_burst", "severity": "info", "resolve_after": "30m",
                      "params": {"count": 2, "window_s": "10m"}, "summary": "Card {card}: {value:.0f} declined"})
    if cold is not None:
        rules.append({"alert": "ColdChain", "kind": "cold_chain", "severity": "critical", "for": "5m",
                      "resolve_after": "10m", "params": cold, "summary": "{value} at {location}"})
    doc = {"agent": "reload-test", "labels": {"domain": "security"}, "rules": rules}
    return json.dumps(doc)  # JSON is YAML


def write_rules(rules_dir: Path, text: str) -> None:
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "reload-test.yml").write_text(text)
    (rules_dir / "reload-test.md").write_text(RUNBOOK)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def make_runtime(tmp_path: Path, clock: Clock | None = None, **env: str) -> Runtime:
    settings = load_settings({
        "CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "CITYOPS_INFLUX_URL": "http://127.0.0.1:1",
        "CITYOPS_PSEUDONYM_KEY": "test-pseudonym-key-0123456789", "CITYOPS_DATA_DIR": str(tmp_path / "data"),
        "CITYOPS_RULES_DIR": str(tmp_path / "rules"), **env})
    return Runtime(settings, clock=clock or Clock())


class Feed:
    """Taps on partition 0 of the taps topic, one record each, with increasing offsets."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.offset = runtime.store.offsets.get((TAPS, 0), -1)
        self.n = self.offset + 1
        self.minute = 0.0

    def tap(self, minutes: float, card: str, lat: float = 31.80, lon: float = 119.97,
            result: str | None = None) -> None:
        self.offset += 1
        self.n += 1
        self.minute = max(self.minute, minutes)
        ev = {"event_id": f"t-{self.n}", "ts": (T0 + timedelta(minutes=minutes)).isoformat(),
              "source": "cz-metro-l1-s01", "card_id": card, "mode": "metro", "line": "地铁1号线",
              "direction": "in", "fare_cny": 2, "lat": lat, "lon": lon}
        if result is not None:
            ev["result"] = result
        self.runtime.process(TAPS, 0, self.offset, json.dumps(ev).encode())

    def trip(self, minutes: float, card: str, km_per_min: float, duration_min: float = 10.0) -> None:
        """Two taps of ``card``: 15 km apart (north-south), ``duration_min`` apart."""
        self.tap(minutes, card, 31.80, 119.97)
        self.tap(minutes + duration_min, card, 31.80 - 0.1349 * km_per_min * duration_min / 15.0, 119.97)

    def clock_to(self, minutes: float) -> None:
        """Taps of a bystander card every 5 min up to ``minutes``: move event time (and the rules' clock) there
        in steps the partition clock follows at once (a lone jump past the lateness waits for a second event)."""
        m = self.minute
        while m + 5 < minutes:
            m += 5
            self.tap(m, "2130519900000000000")
        self.tap(minutes, "2130519900000000000")


def card(n: int) -> str:
    return f"21305199777700000{n:02d}"


def transitions(rt: Runtime, alertname: str | None = None) -> list[dict[str, Any]]:
    assert rt.alerts is not None
    items = [rec for _seq, rec in sorted(rt.alerts.outbox.items())]
    return [r for r in items if alertname is None or r["alertname"] == alertname]


def reloads(rt: Runtime, result: str) -> float:
    return rt.metrics.registry.get_sample_value("cityops_manifest_reloads_total", {"result": result}) or 0.0


@pytest.fixture
def rt(tmp_path: Path) -> Any:
    write_rules(tmp_path / "rules", manifest())
    runtime = make_runtime(tmp_path)
    yield runtime
    runtime.store.close()


def fire_fast_card(rt: Runtime, feed: Feed, who: str) -> dict[str, Any]:
    feed.trip(0, who, km_per_min=15.0, duration_min=2.0)  # 15 km in 2 min: 450 km/h
    feed.clock_to(3)
    rt.tick()
    firing = [t for t in transitions(rt, "FastCard") if t["status"] == "firing"]
    assert len(firing) == 1 and firing[0]["entity"]["card"] != who  # pseudonymised
    return firing[0]


def test_a_changed_threshold_takes_effect_at_the_next_commit(rt: Runtime, tmp_path: Path) -> None:
    feed = Feed(rt)
    feed.trip(0, card(1), km_per_min=1.5)  # 15 km in 10 min: 90 km/h, under the limit of 150
    feed.clock_to(11)
    rt.tick()
    assert transitions(rt, "FastCard") == []
    hash_before = rt.rules_status()["hash"]

    write_rules(tmp_path / "rules", manifest(fast={"params": {"max_speed_kmh": 60, "min_km": 1}}))
    rt.request_reload("SIGHUP")
    rt.tick()  # the reload is applied by this commit
    assert reloads(rt, "ok") == 1 and reloads(rt, "refused") == 0
    assert rt.metrics.registry.get_sample_value("cityops_manifest_last_reload_successful") == 1
    status = rt.rules_status()
    assert status is not None and status["generation"] == 2 and status["last_reload"]["result"] == "ok"
    assert status["last_reload"]["changes"]["reset"] == ["FastCard"] and status["hash"] != hash_before

    feed.trip(12, card(2), km_per_min=1.5)  # the same journey after the reload: over the new limit of 60
    feed.clock_to(23)
    rt.tick()
    firing = [t for t in transitions(rt, "FastCard") if t["status"] == "firing"]
    assert len(firing) == 1 and firing[0]["value"] == pytest.approx(90, abs=1)


def test_an_invalid_manifest_is_refused_and_the_running_rules_still_fire(
        rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = rt.rules_status()
    assert before is not None
    for bad, where in [
        (manifest(fast={"severity": "urgent"}), "reload-test.yml: rules[0] (FastCard).severity"),
        (manifest(fast={"params": {"max_speed_kmh": -5, "min_km": 1}}),
         "reload-test.yml: rules[0] (FastCard).params.max_speed_kmh: must be > 0, got -5.0"),
        (manifest(fast={"kind": "no_such_kind"}), "rules[0] (FastCard).kind: unknown kind"),
        ("rules: [", "reload-test.yml: not valid YAML"),
    ]:
        write_rules(tmp_path / "rules", bad)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="cityops.alerts.reload"):
            rt.request_reload("SIGHUP")
            rt.tick()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and where in errors[0].getMessage(), (where, caplog.text)
        assert "\n" not in errors[0].getMessage()
        status = rt.rules_status()
        assert status["last_reload"]["result"] == "refused" and where in status["last_reload"]["error"]
        assert (status["generation"], status["hash"]) == (before["generation"], before["hash"])
    assert reloads(rt, "refused") == 4 and reloads(rt, "ok") == 0
    assert rt.metrics.registry.get_sample_value("cityops_manifest_last_reload_successful") == 0

    # The rules in force before the refused reloads still decide: an impossible journey fires.
    fire_fast_card(rt, Feed(rt), card(3))


def test_an_unchanged_rule_keeps_its_firing_alert_and_its_resolve(rt: Runtime, tmp_path: Path) -> None:
    feed = Feed(rt)
    firing = fire_fast_card(rt, feed, card(4))
    seen = len(transitions(rt))

    # Another rule is added and one changed: FastCard itself is the same.
    write_rules(tmp_path / "rules", manifest(new_rule=True, declined=False))
    rt.request_reload("SIGHUP")
    rt.tick()
    assert rt.rules_status()["last_reload"]["changes"]["added"] == ["NewRule"]
    assert rt.rules_status()["last_reload"]["changes"]["removed"] == ["DeclinedCards"]
    assert len(transitions(rt)) == seen  # nothing emitted by the reload
    assert [t["status"] for t in transitions(rt, "FastCard")] == ["firing"]  # no new transition
    assert [a.labels["card"] for a in rt.alerts.firing()] == [firing["entity"]["card"]]  # still re-sent

    # resolve_after is 30 min: the resolve still comes, once, after the reload.
    feed.clock_to(20)
    rt.tick()
    assert [t["status"] for t in transitions(rt, "FastCard")] == ["firing"]
    feed.clock_to(40)
    rt.tick()
    statuses = [(t["status"], t["am_action"]) for t in transitions(rt, "FastCard")]
    assert statuses == [("firing", "firing"), ("resolved", "resolved")]


def test_a_removed_rule_resolves_its_firing_alert_and_drops_its_state(rt: Runtime, tmp_path: Path) -> None:
    feed = Feed(rt)
    firing = fire_fast_card(rt, feed, card(5))
    assert "rule:FastCard" in rt.store.tables and len(rt.store.tables["rule:FastCard"]) > 0

    write_rules(tmp_path / "rules", manifest(fast={"_remove": True}))
    rt.request_reload("SIGHUP")
    rt.tick()
    out = transitions(rt, "FastCard")
    assert [(t["status"], t["am_action"]) for t in out] == [("firing", "firing"), ("resolved", "resolved")]
    assert out[1]["labels"] == firing["labels"]  # Alertmanager's identity of the alert: the same label set
    assert out[1]["id"] != firing["id"]
    assert rt.alerts.firing() == []
    assert "rule:FastCard" not in rt.store.tables and "rule:FastCard" not in rt.store.undeclared()
    # No rule evaluates it any more: another impossible journey raises nothing.
    feed.trip(5, card(6), km_per_min=15.0, duration_min=2.0)
    feed.clock_to(8)
    rt.tick()
    assert len(transitions(rt, "FastCard")) == 2

    # The reload was committed with its state: a restart on the same manifests restores without complaint
    # and changes nothing.
    rt.store.close()
    again = make_runtime(tmp_path)
    try:
        assert transitions(again, "FastCard") == out
        assert "rule:FastCard" not in again.store.undeclared()
        assert again.alerts is not None and "FastCard" not in (again.alerts.committed_rules() or {})
        assert again.alerts.restored_rules == again.alerts.rules  # read back equal: nothing to reconcile
    finally:
        again.store.close()


def test_changed_params_reset_the_rule_and_end_its_alerts(rt: Runtime, tmp_path: Path) -> None:
    feed = Feed(rt)
    firing = fire_fast_card(rt, feed, card(7))
    write_rules(tmp_path / "rules", manifest(fast={"params": {"max_speed_kmh": 140, "min_km": 1}}))
    rt.request_reload("SIGHUP")
    rt.tick()
    out = transitions(rt, "FastCard")
    assert [(t["status"], t["am_action"]) for t in out] == [("firing", "firing"), ("resolved", "resolved")]
    assert len(rt.store.tables["rule:FastCard"]) == 0  # the card's last tap was dropped with the state
    # The rule raises it again as a new episode (a new transition id) when the condition holds again.
    feed.trip(5, card(7), km_per_min=15.0, duration_min=2.0)
    feed.clock_to(8)
    rt.tick()
    out = transitions(rt, "FastCard")
    assert [t["status"] for t in out] == ["firing", "resolved", "firing"]
    assert len({t["id"] for t in out}) == 3 and out[2]["labels"] == firing["labels"]


def test_changed_severity_reannounces_the_firing_alert_under_its_new_labels(rt: Runtime, tmp_path: Path) -> None:
    feed = Feed(rt)
    firing = fire_fast_card(rt, feed, card(8))
    write_rules(tmp_path / "rules", manifest(fast={"severity": "warning", "summary": "Card {card}: too fast"}))
    rt.request_reload("SIGHUP")
    rt.tick()
    assert rt.rules_status()["last_reload"]["changes"]["relabelled"] == ["FastCard"]
    out = transitions(rt, "FastCard")
    assert [(t["status"], t["am_action"], t["labels"]["severity"]) for t in out] == [
        ("firing", "firing", "critical"), ("resolved", "resolved", "critical"), ("firing", "firing", "warning")]
    assert out[2]["starts_at"] == firing["starts_at"]  # the same episode
    assert out[2]["annotations"]["summary"].endswith("too fast")
    assert [a.labels["severity"] for a in rt.alerts.firing()] == ["warning"]
    # The lifecycle goes on: the state was kept, and it resolves 30 min after the journey, once.
    feed.clock_to(40)
    rt.tick()
    assert [t["status"] for t in transitions(rt, "FastCard")] == ["firing", "resolved", "firing", "resolved"]


def test_a_start_on_changed_manifests_ends_alerts_as_a_reload_would(rt: Runtime, tmp_path: Path) -> None:
    """The worker was stopped (or crashed after its last commit) and FastCard changed kind meanwhile: the
    restored state of the old kind must not stop the start, and its firing alert must not stay a zombie."""
    feed = Feed(rt)
    firing = fire_fast_card(rt, feed, card(9))
    rt.store.close()
    write_rules(tmp_path / "rules", manifest(fast={"kind": "declined_burst", "params": {"count": 3}}))
    again = make_runtime(tmp_path)
    try:
        out = transitions(again, "FastCard")
        assert [(t["status"], t["am_action"]) for t in out] == [("firing", "firing"), ("resolved", "resolved")]
        assert out[1]["labels"] == firing["labels"]
        assert again.alerts is not None and again.alerts.firing() == []
        assert again.alerts.committed_rules()["FastCard"].kind == "declined_burst"
    finally:
        again.store.close()


def test_the_food_rules_follow_a_reload(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules", manifest(cold={"min_c": 0, "max_c": 4}))
    rt = make_runtime(tmp_path)
    try:
        food = rt.engine.streams["food.trace-events"]
        assert (food._cold_rule, food.cold_min_c, food.cold_max_c) == ("ColdChain", 0.0, 4.0)
        write_rules(tmp_path / "rules", manifest(cold={"min_c": -2, "max_c": 8}))
        rt.request_reload("SIGHUP")
        rt.tick()
        assert (food._cold_rule, food.cold_min_c, food.cold_max_c) == ("ColdChain", -2.0, 8.0)
        write_rules(tmp_path / "rules", manifest(cold={"min_c": 9, "max_c": 8}))  # refused: min above max
        rt.request_reload("SIGHUP")
        rt.tick()
        assert rt.rules_status()["last_reload"]["result"] == "refused"
        assert (food.cold_min_c, food.cold_max_c) == (-2.0, 8.0)
        write_rules(tmp_path / "rules", manifest())  # no cold_chain rule: no alert, the default range
        rt.request_reload("SIGHUP")
        rt.tick()
        assert (food._cold_rule, food.cold_min_c, food.cold_max_c) == (None, 0.0, 4.0)
    finally:
        rt.store.close()


def test_a_changed_file_is_reloaded_when_watching(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules", manifest())
    clock = Clock()
    rt = make_runtime(tmp_path, clock, CITYOPS_RULES_WATCH_S="5")
    try:
        rt.tick()
        assert rt.rules_status()["last_reload"] is None
        (tmp_path / "rules" / "reload-test.yml").write_text(manifest(new_rule=True))
        clock.t += 2
        rt.tick()  # not yet looked at
        assert rt.rules_status()["last_reload"] is None
        clock.t += 5
        rt.tick()
        last = rt.rules_status()["last_reload"]
        assert last["result"] == "ok" and last["trigger"] == "file change" and last["changes"]["added"] == ["NewRule"]
        clock.t += 10
        rt.tick()  # nothing changed since: no further reload
        assert reloads(rt, "ok") == 1
    finally:
        rt.store.close()


def test_a_start_on_state_without_a_rules_record_drops_a_table_another_kind_wrote(rt: Runtime, tmp_path: Path) -> None:
    """State of a release before the ``alert_rules`` table, and a rule whose kind changed meanwhile: its table
    (shape rule:impossible_travel) cannot be read by the new kind and stopped the start (StateFormatError);
    now it is dropped with a warning, and every other rule's state is kept."""
    from cityops.engine.state import StateStore

    feed = Feed(rt)
    fire_fast_card(rt, feed, card(10))
    rt.store.close()
    store = StateStore(tmp_path / "data" / "state").open()  # as an older release left it: no rules record
    from tests.installed_plugins import plugin_rules

    # (the record holds the installed agent plugins' rules too, e.g. examples/cityops-parking's)
    assert store.drop_table("alert_rules") == 2 + plugin_rules()
    store.commit({})
    store.close()
    write_rules(tmp_path / "rules", manifest(fast={"kind": "declined_burst", "params": {"count": 3}}))
    again = make_runtime(tmp_path)
    try:
        assert again.alerts is not None and again.alerts.restored_rules is None
        assert len(again.store.tables["rule:FastCard"]) == 0
        assert again.store.tables["rule:FastCard"].codec.shape == "rule:declined_burst"
    finally:
        again.store.close()


def test_the_shipped_rules_read_back_equal_from_the_rules_record(tmp_path: Path) -> None:
    """Every shipped rule (lists, maps, durations in params) is committed and read back as the same RuleSpec:
    a restart on unchanged manifests resets nothing."""
    settings = dict(CITYOPS_SOURCE_REGISTRY="simulator")
    first = make_runtime(tmp_path, **settings, CITYOPS_RULES_DIR="")
    assert first.alerts is not None and len(first.alerts.rules) >= 10
    first.tick()
    first.store.close()
    again = make_runtime(tmp_path, **settings, CITYOPS_RULES_DIR="")
    try:
        assert again.alerts is not None and again.alerts.restored_rules == again.alerts.rules
    finally:
        again.store.close()


def test_a_rule_evaluated_by_a_stream_that_cannot_take_it_is_refused(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream evaluating rules of its kinds itself without ``reconfigure`` (a plugin's): a reload that changes
    such a rule is refused naming it, instead of leaving the stream on the old rule while reporting ok."""
    from cityops.food.stream import FoodStream

    write_rules(tmp_path / "rules", manifest(cold={"min_c": 0, "max_c": 4}))
    monkeypatch.delattr(FoodStream, "reconfigure")
    rt = make_runtime(tmp_path)
    try:
        write_rules(tmp_path / "rules", manifest(cold={"min_c": 0, "max_c": 4}, new_rule=True))
        rt.request_reload("SIGHUP")
        rt.tick()  # ColdChain unchanged: the reload goes through
        assert rt.rules_status()["last_reload"]["result"] == "ok"
        write_rules(tmp_path / "rules", manifest(cold={"min_c": 0, "max_c": 6}, new_rule=True))
        rt.request_reload("SIGHUP")
        rt.tick()
        last = rt.rules_status()["last_reload"]
        assert last["result"] == "refused" and "rule 'ColdChain' (kind 'cold_chain') is evaluated by its stream" \
            in last["error"]
    finally:
        rt.store.close()


def test_check_config_prints_the_hash_the_worker_reports_for_the_same_files(rt: Runtime, tmp_path: Path) -> None:
    """Deployed = running: ``cityops check-config`` on the files and ``/healthz`` of the worker agree."""
    from cityops.checkconfig import check_config

    env = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "CITYOPS_INFLUX_URL": "http://127.0.0.1:1",
           "CITYOPS_PSEUDONYM_KEY": "test-pseudonym-key-0123456789", "CITYOPS_DATA_DIR": str(tmp_path / "data"),
           "CITYOPS_RULES_DIR": str(tmp_path / "rules"), "CITYOPS_RULES_WATCH_S": "30"}
    text = check_config(env).text()
    assert f"  rules hash {rt.rules_status()['hash']}; reloaded on SIGHUP and a changed file within 30s" in text
    write_rules(tmp_path / "rules", manifest(new_rule=True))
    assert f"rules hash {rt.rules_status()['hash']}" not in check_config(env).text()  # files changed, not reloaded
    rt.request_reload()
    rt.tick()
    assert f"rules hash {rt.rules_status()['hash']}" in check_config(env).text()
