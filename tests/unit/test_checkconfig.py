"""`cityops check-config`: what the worker would load, without servers; exit 2 naming each bad setting or file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cityops.checkconfig import check_config
from tests.installed_plugins import plugin_dashboards, plugin_rules

REPO = Path(__file__).resolve().parents[2]
GOOD = {"CITYOPS_KAFKA_BOOTSTRAP": "kafka.example:9092", "CITYOPS_INFLUX_URL": "http://influx.example:8086",
        "CITYOPS_PSEUDONYM_KEY": "0123456789abcdef", "CITYOPS_DATA_DIR": "/nonexistent/cityops"}


def cli(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "cityops.cli", "check-config"], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_prints_what_is_active() -> None:
    report = check_config(dict(GOOD, CITYOPS_ALERTMANAGER_URL="http://am.example:9093",
                               CITYOPS_SOURCE_REGISTRY="simulator", CITYOPS_UNKNOWN_SOURCES="observe"))
    assert report.problems == []
    text = report.text()
    assert "streams: traffic.card-taps, traffic.road-detectors, health.card-events, food.trace-events" in text
    assert "kafka: kafka.example:9092 (PLAINTEXT)" in text
    assert "sources.json (observe, " in text
    # The shipped manifests' 15 rules, and those of the installed agent plugins (examples/cityops-parking).
    assert f"rules: {15 + plugin_rules()} from " in text and "  traffic-security: CardImpossibleTravel, " in text
    assert "  influxdb: http://influx.example:8086/ database=cityops" in text
    assert "  alertmanager: http://am.example:9093/" in text
    assert "data dir: /nonexistent/cityops (does not exist yet: the worker creates it)" in text
    assert text.endswith("configuration OK")
    assert "0123456789abcdef" not in text  # secrets are never printed


def test_defaults_no_registry_packaged_rules() -> None:
    report = check_config(GOOD)
    assert report.ok
    assert "source registry: off (CITYOPS_SOURCE_REGISTRY unset: events from any source are accepted)" in report.lines
    assert "  alertmanager: off (CITYOPS_ALERTMANAGER_URL unset)" in report.lines
    rules_none = check_config(dict(GOOD, CITYOPS_RULES_DIR="none"))
    assert "rules: off (CITYOPS_RULES_DIR=none)" in rules_none.lines


def test_cli_exit_2_names_each_bad_setting_and_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for p in (REPO / "agents").glob("*.yml"):
        (rules / p.name).write_text(p.read_text())
        (rules / p.with_suffix(".md").name).write_text(p.with_suffix(".md").read_text())
    (rules / "food-safety.yml").write_text((rules / "food-safety.yml").read_text().replace("for: 0s", "for: -5m", 1))
    registry = tmp_path / "sources.json"
    registry.write_text('{"sources": {"x": {"stream": "traffic.card-taps", "max_gap": 5}}}')
    data_file = tmp_path / "not-a-dir"
    data_file.write_text("")
    r = cli(dict(GOOD, CITYOPS_RULES_DIR=str(rules), CITYOPS_SOURCE_REGISTRY=str(registry),
                 CITYOPS_DATA_DIR=str(data_file), CITYOPS_KAFKA_BROKERS="x:1"), tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    problems = r.stderr.strip().splitlines()
    assert len(problems) == 4, problems
    assert problems.pop(0) == "cityops: CITYOPS_KAFKA_BROKERS: unknown setting (did you mean CITYOPS_KAFKA_BOOTSTRAP?)"
    registry_problem = next(p for p in problems if p.startswith("cityops: CITYOPS_SOURCE_REGISTRY: source registry "))
    assert "max_gap" in registry_problem
    rules_problem = next(p for p in problems if p.startswith(f"cityops: CITYOPS_RULES_DIR ({rules}): "))
    assert "rules/food-safety.yml: rules[" in rules_problem and "duration must be >= 0" in rules_problem
    assert f"cityops: CITYOPS_DATA_DIR: {data_file} exists and is not a directory" in problems
    assert r.stdout.strip().endswith("4 problem(s)")
    # A setting that cannot be read stops the checks that need it; the data files are still checked.
    r = cli(dict(GOOD, CITYOPS_PSEUDONYM_KEY="short"), tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "cityops: CITYOPS_PSEUDONYM_KEY: Value error, must be at least 16 characters (it keys the card-number hash)"]
    assert f"dashboards: {6 + plugin_dashboards()} " in r.stdout


def test_cli_ok_exits_0(tmp_path: Path) -> None:
    r = cli(dict(GOOD, CITYOPS_DATA_DIR=str(tmp_path / "data")), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.strip().endswith("configuration OK")


def test_rule_param_errors_name_the_file_and_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for p in (REPO / "agents").glob("*.yml"):
        (rules / p.name).write_text(p.read_text())
        (rules / p.with_suffix(".md").name).write_text(p.with_suffix(".md").read_text())
    text = (rules / "traffic-security.yml").read_text()
    for old, new, message in [
        ("params: {max_speed_kmh: 150", "params: {max_sped_kmh: 1, max_speed_kmh: 150",
         "rules/traffic-security.yml: rules[0] (CardImpossibleTravel).params.max_sped_kmh: unknown parameter; known: "
         "horizon_s, max_speed_kmh, min_km, stream"),
        ("params: {max_speed_kmh: 150", "params: {max_speed_kmh: lots",
         "rules/traffic-security.yml: rules[0] (CardImpossibleTravel).params.max_speed_kmh: expected float, got 'lots'"),
    ]:
        assert old in text  # guards the table itself
        (rules / "traffic-security.yml").write_text(text.replace(old, new, 1))
        r = cli(dict(GOOD, CITYOPS_RULES_DIR=str(rules)), tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [f"cityops: CITYOPS_RULES_DIR ({rules}): {message}"]


def test_a_manifest_that_consumes_no_stream_stops_check_config_in_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for p in (REPO / "agents").glob("*.yml"):
        (rules / p.name).write_text(p.read_text())
        (rules / p.with_suffix(".md").name).write_text(p.with_suffix(".md").read_text())
    text = (rules / "health-security.yml").read_text()
    assert "consumes: [health.card-events]" in text
    (rules / "health-security.yml").write_text(text.replace("consumes: [health.card-events]",
                                                            "consumes: [health.card-events, bike.readings]"))
    r = cli(dict(GOOD, CITYOPS_RULES_DIR=str(rules), CITYOPS_PLUGINS="none"), tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"cityops: CITYOPS_RULES_DIR ({rules}): rules/health-security.yml: consumes: 'bike.readings' is no stream of "
        "the built-in agents or a loaded plugin (streams: food.trace-events, health.card-events, traffic.card-taps, "
        "traffic.road-detectors)"]


def test_a_stream_rules_params_name_the_file_and_key(tmp_path: Path) -> None:
    """The food stream evaluates cold_chain itself: its params' errors name file and key like a rule kind's."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for p in (REPO / "agents").glob("*.yml"):
        (rules / p.name).write_text(p.read_text())
        (rules / p.with_suffix(".md").name).write_text(p.with_suffix(".md").read_text())
    text = (rules / "food-safety.yml").read_text()
    index = next(i for i, line in enumerate(text.split("  - alert: ")[1:]) if line.startswith("FoodColdChainBreach"))
    where = f"rules/food-safety.yml: rules[{index}] (FoodColdChainBreach).params"
    for new, message in [("params: {min_c: cold, max_c: 4}", f"{where}.min_c: expected a number of °C, got 'cold'"),
                         ("params: {min_c: 0}", f"{where}.max_c: required (kind cold_chain: the allowed range in °C)"),
                         ("params: {min_c: 8, max_c: 4}", f"{where}.min_c: 8 must be below max_c (4)")]:
        (rules / "food-safety.yml").write_text(text.replace("params: {min_c: 0, max_c: 4}", new, 1))
        r = cli(dict(GOOD, CITYOPS_RULES_DIR=str(rules)), tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [f"cityops: {message}"]
