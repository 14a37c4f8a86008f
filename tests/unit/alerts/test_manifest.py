"""Agent manifests: the real agents/*.yml load; every mistake names its file and key; rules need no code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cityops.alerts.manifest import (
    DEFAULT_RUNBOOK_BASE,
    ManifestError,
    load_agent_manifests,
    load_manifest,
    load_manifests,
    parse_duration,
)
from cityops.alerts.spec import RuleSpec
from cityops.errors import ConfigError

AGENTS = Path(__file__).resolve().parents[3] / "agents"

EXPECTED = {
    "traffic-security": {"CardImpossibleTravel", "CardDeclinedBurst", "EventTampering", "UntrustedSource",
                         "BadSignature"},
    "health-security": {"HealthCardConcurrentUse", "HealthCardRegistrationHoarding"},
    "food-safety": {"FoodCertificateReuse", "FoodUntracedSale", "FoodColdChainBreach"},
    "kpi-anomaly": {"RidershipAnomaly", "RoadSpeedAnomaly", "WaitTimeAnomaly"},
    "data-quality": {"SourceSilent", "DataQualityDegraded"},
}

GOOD = """\
    agent: {agent}
    description: test agent
    consumes: [traffic.card-taps]
    labels: {{domain: security, team: transit}}
    rules:
      - alert: {alert}
        kind: impossible_travel
        severity: critical
        for: 0s
        resolve_after: 30m
        params: {{max_speed_kmh: 150, min_km: 1}}
        summary: "Card {{card}} travelled {{value:.0f}} km/h"
        description: "two taps too far apart"
"""


def _write(tmp: Path, agent: str = "demo", alert: str = "DemoTravel", text: str | None = None,
           runbook: str | None = None) -> Path:
    path = tmp / f"{agent}.yml"
    path.write_text(textwrap.dedent(text if text is not None else GOOD.format(agent=agent, alert=alert)))
    (tmp / f"{agent}.md").write_text(runbook if runbook is not None else f"# {agent}\n\n## {alert}\n\ntext\n")
    return path


# -- the real manifests --------------------------------------------------------------------------------
def test_real_manifests_load() -> None:
    rules = load_manifests(AGENTS)
    assert set(rules) == set().union(*EXPECTED.values())
    for manifest in load_agent_manifests(AGENTS):
        assert {r.name for r in manifest.rules} == EXPECTED[manifest.agent]
        assert manifest.runbook.exists()
        for spec in manifest.rules:
            assert spec.agent == manifest.agent
            assert spec.runbook_url == f"{DEFAULT_RUNBOOK_BASE}/agents/{manifest.agent}.md#{spec.name.lower()}"
            assert spec.severity in ("info", "warning", "critical")
            assert spec.summary and spec.labels["domain"] == spec.domain


def test_real_manifest_values() -> None:
    rules = load_manifests(AGENTS, runbook_base="https://example.org/repo/")
    travel = rules["CardImpossibleTravel"]
    assert (travel.kind, travel.severity, travel.domain) == ("impossible_travel", "critical", "security")
    assert travel.for_s == 0 and travel.resolve_after_s == 1800
    assert travel.params == {"max_speed_kmh": 150, "min_km": 1}
    assert travel.labels == {"domain": "security", "team": "transit"}
    assert travel.runbook_url == "https://example.org/repo/agents/traffic-security.md#cardimpossibletravel"
    assert rules["CardDeclinedBurst"].params == {"count": 5, "window_s": 600.0}
    assert rules["HealthCardConcurrentUse"].params == {"window_s": 1800.0}
    assert rules["HealthCardRegistrationHoarding"].params == {"max_per_day": 6, "tz": "Asia/Shanghai"}
    cold = rules["FoodColdChainBreach"]
    assert cold.for_s == 1800 and cold.params == {"min_c": 0, "max_c": 4}
    assert rules["RoadSpeedAnomaly"].params["tags"] == ["segment"]
    assert rules["WaitTimeAnomaly"].domain == "health"
    assert rules["DataQualityDegraded"].params == {"max_share": 0.05, "window_s": 300.0, "min_events": 20}


def test_real_manifests_fit_the_rule_kinds() -> None:
    from cityops.alerts import kinds
    from cityops.alerts.wiring import STREAM_KINDS

    for spec in load_manifests(AGENTS).values():
        # Every rule's kind is either a registered kind or raised by stream code (the food pipeline).
        assert spec.kind in kinds.KINDS or spec.kind in STREAM_KINDS, spec.kind
        if spec.kind in kinds.KINDS:
            kinds.build(spec)  # params are accepted by the kind's schema


def test_no_python_in_agents_dir() -> None:
    assert not list(AGENTS.rglob("*.py"))


# -- rules as configuration ----------------------------------------------------------------------------
def test_new_rule_of_existing_kind_needs_no_code(tmp_path: Path) -> None:
    _write(tmp_path, "night-travel", "NightBusImpossibleTravel")
    rules = load_manifests(tmp_path, runbook_base="https://rb.example")
    spec = rules["NightBusImpossibleTravel"]
    assert isinstance(spec, RuleSpec)
    assert spec.kind == "impossible_travel" and spec.agent == "night-travel"
    assert spec.runbook_url == "https://rb.example/agents/night-travel.md#nightbusimpossibletravel"


def test_kinds_check_is_optional(tmp_path: Path) -> None:
    _write(tmp_path)
    load_manifests(tmp_path, kinds={"impossible_travel"})
    with pytest.raises(ManifestError, match=r"demo\.yml: rules\[0\] \(DemoTravel\)\.kind: unknown kind"):
        load_manifests(tmp_path, kinds={"declined_burst"})


# -- errors name file and key --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    severity: critical", "    severity: urgent",
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.severity: 'urgent' is not one of info, warning, critical"),
        ("    for: 0s", "    for: -5m", r"demo\.yml: rules\[0\] \(DemoTravel\)\.for: duration must be >= 0"),
        ("    resolve_after: 30m", "    resolve_after: soon",
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.resolve_after: expected a duration"),
        ("    resolve_after: 30m", "    resolve_after: 30m\n    treshold: 5",
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.treshold: unknown key"),
        ("consumes:", "owner: me\nconsumes:", r"demo\.yml: owner: unknown key"),
        ("agent: demo", "agent: other", r"demo\.yml: agent: 'other' must equal the file name"),
        ("    kind: impossible_travel\n", "", r"demo\.yml: rules\[0\] \(DemoTravel\)\.kind: required"),
        ("{max_speed_kmh: 150, min_km: 1}", "{window_s: -10m}",
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.params\.window_s: duration must be >= 0"),
        ('    summary: "Card {card} travelled {value:.0f} km/h"', '    summary: "Card {card"',
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.summary: bad template"),
        ("team: transit}", "team: transit, severity: x}", r"demo\.yml: labels\.severity"),
        ("  - alert: DemoTravel", "  - alert: Demo-Travel", r"demo\.yml: rules\[0\]\.alert"),
        ("    for: 0s", "    for: 0s\n    flap_max_changes: -1",
         r"demo\.yml: rules\[0\] \(DemoTravel\)\.flap_max_changes: must be an integer >= 0"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = textwrap.dedent(GOOD.format(agent="demo", alert="DemoTravel"))
    assert old in text  # guards the table itself
    path = _write(tmp_path, text=text.replace(old, new, 1))
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)


def test_duplicate_alertname_across_files(tmp_path: Path) -> None:
    _write(tmp_path, "alpha", "SameName")
    _write(tmp_path, "beta", "SameName")
    with pytest.raises(ManifestError, match=r"beta\.yml: rules \(SameName\)\.alert: duplicate alertname "
                                            r"'SameName', already defined in .*alpha\.yml"):
        load_manifests(tmp_path)


def test_duplicate_alertname_in_one_file(tmp_path: Path) -> None:
    text = textwrap.dedent(GOOD.format(agent="demo", alert="DemoTravel"))
    rule = text[text.index("  - alert"):]
    _write(tmp_path, text=text + rule)
    with pytest.raises(ManifestError, match=r"demo\.yml: rules\[1\] \(DemoTravel\)\.alert: duplicate"):
        load_manifests(tmp_path)


def test_runbook_required_with_a_section_per_alert(tmp_path: Path) -> None:
    _write(tmp_path, runbook="# demo\n\n## SomethingElse\n")
    with pytest.raises(ManifestError, match=r"demo\.yml: rules\[0\] \(DemoTravel\)\.alert: runbook demo\.md "
                                            r"has no section '## DemoTravel'"):
        load_manifests(tmp_path)
    (tmp_path / "demo.md").unlink()
    with pytest.raises(ManifestError, match=r"demo\.yml: rules: runbook demo\.md is missing"):
        load_manifests(tmp_path)
    assert "DemoTravel" in load_manifests(tmp_path, require_runbook=False)


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    _write(tmp_path, text="agent: [unclosed\n")
    with pytest.raises(ManifestError, match=r"demo\.yml: not valid YAML"):
        load_manifests(tmp_path)


def test_missing_directory() -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifests(Path("/nonexistent/agents"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("1h30m", 5400.0), ("0s", 0.0),
     (90, 90.0), ("500ms", 0.5), ("1w", 604800.0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-5m", "5 minutes", "", "m", -1, True, None])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_bad_yaml_is_one_line_with_the_problem_and_where(tmp_path: Path) -> None:
    text = textwrap.dedent(GOOD.format(agent="demo", alert="DemoTravel"))
    _write(tmp_path, text=text.replace("consumes: [traffic.card-taps]", "consumes: [traffic.card-taps"))
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert str(info.value) == f"{tmp_path.name}/demo.yml: not valid YAML: expected ',' or ']', but got ':' at line 4, column 7"
    _write(tmp_path, text="agent: [unclosed\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert str(info.value) == (f"{tmp_path.name}/demo.yml: not valid YAML: expected ',' or ']', but got '<stream end>' "
                               "at line 2, column 1")
    _write(tmp_path, text="agent: demo\n\tdescription: tab\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{tmp_path.name}/demo.yml: not valid YAML: ")


@pytest.mark.parametrize(("params", "message"), [
    ("{max_speed_kmh: 150, min_km: 1, max_sped: 3}",
     "demo.yml: rules[0] (DemoTravel).params.max_sped: unknown parameter; known: horizon_s, max_speed_kmh, min_km, stream"),
    ("{max_speed_kmh: lots, min_km: 1}", "demo.yml: rules[0] (DemoTravel).params.max_speed_kmh: expected float, "
                                         "got 'lots'"),
])
def test_param_errors_name_file_and_key(tmp_path: Path, params: str, message: str) -> None:
    from cityops.alerts.kinds import build

    text = textwrap.dedent(GOOD.format(agent="demo", alert="DemoTravel"))
    _write(tmp_path, text=text.replace("{max_speed_kmh: 150, min_km: 1}", params))
    spec = load_manifests(tmp_path)["DemoTravel"]
    assert spec.source == f"{tmp_path.name}/demo.yml: rules[0] (DemoTravel)"
    with pytest.raises(ValueError) as info:
        build(spec)
    assert str(info.value) == f"{tmp_path.name}/{message}"


def test_consumes_must_name_a_known_stream_when_topics_are_given(tmp_path: Path) -> None:
    text = textwrap.dedent(GOOD.format(agent="demo", alert="DemoTravel"))
    _write(tmp_path, text=text.replace("consumes: [traffic.card-taps]", "consumes: [traffic.card-taps, bike.readings]"))
    assert "DemoTravel" in load_manifests(tmp_path)  # not checked without topics
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path, topics={"traffic.card-taps", "food.trace-events"})
    assert str(info.value) == (f"{tmp_path.name}/demo.yml: consumes: 'bike.readings' is no stream of the built-in "
                               "agents or a loaded plugin (streams: food.trace-events, traffic.card-taps)")
