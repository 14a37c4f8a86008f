"""Agent plugins (cityops.plugins): the built-in agents through the plugin API, installed entry points, errors.

Installed plugins are real distributions on ``sys.path`` (a ``*.dist-info`` folder with ``entry_points.txt``
beside a module), found by ``importlib.metadata`` exactly as a pip-installed package is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from cityops.alerts import wiring
from cityops.alerts.kinds import KINDS
from cityops.errors import ConfigError
from cityops.food.stream import RULE_KINDS
from cityops.plugins import ENTRY_POINT_GROUP, PluginSet, collisions, load_plugins
from cityops.runtime import build_streams
from cityops.settings import load_settings
from cityops.topics import topic_specs
from cityops.types import AgentPlugin, StreamFactory

GOOD = {"CITYOPS_KAFKA_BOOTSTRAP": "kafka.example:9092", "CITYOPS_INFLUX_URL": "http://influx.example:8086",
        "CITYOPS_PSEUDONYM_KEY": "0123456789abcdef", "CITYOPS_DATA_DIR": "/nonexistent/cityops"}
BUILTIN_TOPICS = ["traffic.card-taps", "traffic.road-detectors", "health.card-events", "food.trace-events"]

# A plugin module: one JSON stream (its own KPI) and one rule kind, its manifest and runbook in ``agents/``.
PLUGIN_MODULE = '''
from importlib.resources import files

import msgspec

from cityops.types import AgentPlugin, JsonStream, Kpi, RuleKind, StreamFactory


class Reading(msgspec.Struct, kw_only=True):
    event_id: str
    ts: str
    source: str
    level: float


LEVEL = Kpi("{kpi}", ("source",), lambda: [0, 0.0], lambda a: {{"readings": a[0], "level_max": a[1]}},
            doc={{"readings": "readings", "level_max": "highest level"}}, slots=("readings", "level_max"))


class Levels(JsonStream):
    model = Reading
    kpis = {{LEVEL.measurement: LEVEL}}

    def apply(self, ev, ctx):
        acc = ctx.windows.acc(LEVEL, (ev.event.source,), ev.ts)
        acc[0] += 1
        acc[1] = max(acc[1], ev.event.level)


class HighLevel(RuleKind):
    params_schema = {{"max_level": (float, 1.0)}}


PLUGIN = AgentPlugin(
    name="{name}",
    streams=(StreamFactory.json("{topic}", Levels, partitions=2),),
    rule_kinds={{"{kind}": HighLevel}},
    manifests=files(__name__).joinpath("agents"),
    runbook_url="https://plugins.example/{name}/agents",
    dashboards=files(__name__).joinpath("dashboards") if files(__name__).joinpath("dashboards").is_dir() else None,
)


def make():
    return PLUGIN


NOT_A_PLUGIN = 42
'''

MANIFEST = """\
agent: {agent}
description: levels
consumes: [{topic}]
labels: {{domain: platform}}
rules:
  - alert: {alert}
    kind: {kind}
    summary: "level {{value}}"
"""


def install(root: Path, dist: str, *, name: str = "levels", topic: str = "levels.readings",
            kpi: str = "levels_kpi", kind: str = "high_level", alert: str = "LevelHigh", agent: str | None = None,
            entry: str = "PLUGIN", body: str | None = None) -> None:
    """A distribution ``dist`` (module of the same name) with an entry point ``name`` in cityops.agents."""
    pkg = root / dist
    (pkg / "agents").mkdir(parents=True)
    (pkg / "__init__.py").write_text(body if body is not None else PLUGIN_MODULE.format(
        name=name, topic=topic, kpi=kpi, kind=kind))
    agent = agent or f"{name}-agent"
    (pkg / "agents" / f"{agent}.yml").write_text(MANIFEST.format(agent=agent, topic=topic, alert=alert, kind=kind))
    (pkg / "agents" / f"{agent}.md").write_text(f"# {agent}\n\n## {alert}\n\nWhat to do.\n")
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {dist}:{entry}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path to install plugin distributions into; the plugin cache is cleared around each test."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    load_plugins.cache_clear()
    yield root
    load_plugins.cache_clear()
    for name, module in list(sys.modules.items()):  # each test installs its own module of a given name
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


def settings(**env: str) -> object:
    return load_settings(dict(GOOD, **env))


# ---------------------------------------------------------------------------------- the built-in agents
def test_builtin_agents_are_a_plugin_with_every_stream_kind_and_folder() -> None:
    plugins = load_plugins("none")
    assert [ld.plugin.name for ld in plugins] == ["builtin"] and plugins.third_party == []
    builtin = plugins.loaded[0].plugin
    assert list(builtin.topics) == BUILTIN_TOPICS
    assert dict(builtin.rule_kinds) == KINDS and dict(builtin.stream_rule_kinds) == RULE_KINDS
    assert {k.measurement for k in builtin.kpis} == {
        "traffic_ridership", "traffic_road", "health_service", "food_trace", "food_chain", "food_inspection",
        "food_cold_chain"}
    assert (builtin.manifests / "traffic-security.yml").is_file()
    assert (builtin.contracts / "traffic.card-taps" / "schema.json").is_file()
    assert (builtin.dashboards / "cityops-traffic.json").is_file()
    # The partitions the topics always had: card taps N, road and health N/2, food one.
    assert plugins.topic_partitions(6) == [("traffic.card-taps", 6), ("traffic.road-detectors", 3),
                                           ("health.card-events", 3), ("food.trace-events", 1)]
    assert plugins.topic_partitions(1) == [(t, 1) for t in BUILTIN_TOPICS]


def test_build_streams_builds_the_builtin_streams_through_the_plugin_api() -> None:
    load_plugins.cache_clear()
    s = settings(CITYOPS_PLUGINS="none")
    _, specs = wiring.load_rules(s)
    streams = build_streams(s, specs)
    assert [st.topic for st in streams] == BUILTIN_TOPICS
    food = streams[-1]
    assert food._cold_rule == "FoodColdChainBreach"  # the food stream got its rules from the manifests


# ---------------------------------------------------------------------------------- installed plugins
def test_installed_plugin_adds_stream_topic_kpi_kind_and_rules(site: Path) -> None:
    install(site, "levels_plugin")
    plugins = load_plugins("levels")  # (by name: other plugins may be installed here, e.g. cityops-parking)
    [ld] = plugins.third_party
    assert ld.plugin.name == "levels" and ld.origin == "entry point levels = levels_plugin:PLUGIN (levels_plugin 0.1)"
    assert ("levels.readings", 2) in plugins.topic_partitions(6)
    assert [s.name for s in topic_specs(6, plugins)][-3:] == ["levels.readings", "cityops.dead-letter", "cityops.alerts"]
    assert plugins.rule_kinds["high_level"].kind == "high_level"  # set by the loader, as register() does
    s = settings(CITYOPS_PLUGINS="levels")
    rules_dir, specs = wiring.load_rules(s)
    assert specs["LevelHigh"].kind == "high_level" and specs["LevelHigh"].agent == "levels-agent"
    assert specs["LevelHigh"].runbook_url == "https://plugins.example/levels/agents/levels-agent.md#levelhigh"
    assert "CardImpossibleTravel" in specs  # the built-in manifests as well
    rules = wiring.build_rules(rules_dir, specs, plugins.rule_kinds)
    assert [r.params for r in rules if r.spec.name == "LevelHigh"] == [{"max_level": 1.0}]
    streams = build_streams(s, specs)
    assert [st.topic for st in streams] == [*BUILTIN_TOPICS, "levels.readings"]
    assert list(streams[-1].kpis) == ["levels_kpi"]


def test_entry_point_may_name_a_zero_argument_callable(site: Path) -> None:
    install(site, "levels_callable", entry="make")
    assert [ld.plugin.name for ld in load_plugins("levels").third_party] == ["levels"]


def test_cityops_plugins_selects_by_name_and_refuses_one_not_installed(site: Path) -> None:
    install(site, "levels_plugin")
    assert load_plugins("none").third_party == []
    assert [ld.plugin.name for ld in load_plugins("levels").third_party] == ["levels"]
    with pytest.raises(ConfigError, match=r"^CITYOPS_PLUGINS: bikes not installed \(installed plugins: (.*, )?levels[,;]"):
        load_plugins("levels,bikes")


def test_entry_point_that_does_not_import_stops_start_naming_it(site: Path) -> None:
    install(site, "broken_plugin", body="raise RuntimeError('no licence server')\n")
    with pytest.raises(ConfigError) as exc:
        load_plugins()
    assert str(exc.value) == ("plugin entry point levels = broken_plugin:PLUGIN (broken_plugin 0.1) in group "
                              "cityops.agents: import failed: RuntimeError: no licence server")


def test_entry_point_that_is_no_agent_plugin_stops_start_naming_it(site: Path) -> None:
    install(site, "odd_plugin", entry="NOT_A_PLUGIN")
    with pytest.raises(ConfigError, match=r"^plugin entry point levels = odd_plugin:NOT_A_PLUGIN \(odd_plugin 0.1\) "
                                          r"in group cityops.agents: names a int, not a cityops.types.AgentPlugin"):
        load_plugins()


def test_a_bad_plugin_declaration_is_named_with_its_entry_point(site: Path) -> None:
    install(site, "badname_plugin", name="Levels")  # upper case: not a plugin name
    with pytest.raises(ConfigError, match=r"badname_plugin:PLUGIN .* import failed: ValueError: name must match"):
        load_plugins()


@pytest.mark.parametrize("what, kw, message", [
    ("topic", {"topic": "traffic.card-taps"},
     "stream topic 'traffic.card-taps' is also a topic of plugin 'builtin' (built-in)"),
    ("core topic", {"topic": "cityops.alerts"}, "stream topic 'cityops.alerts' is also a topic of the core"),
    ("KPI", {"kpi": "traffic_road"},
     "KPI measurement 'traffic_road' is also written by plugin 'builtin' (built-in)"),
    ("core KPI", {"kpi": "stream_quality"}, "KPI measurement 'stream_quality' is also written by the core"),
    ("rule kind", {"kind": "impossible_travel"},
     "rule kind 'impossible_travel' is also a rule kind of plugin 'builtin' (built-in)"),
    ("food rule kind", {"kind": "cold_chain"}, "rule kind 'cold_chain' is also a rule kind of plugin 'builtin'"),
])
def test_collisions_with_the_builtin_agents_stop_start_naming_the_plugin(site: Path, what: str, kw: dict[str, str],
                                                                        message: str) -> None:
    install(site, "clash_plugin", **kw)
    with pytest.raises(ConfigError) as exc:
        load_plugins()
    assert exc.value.problems[0].startswith(
        "plugin 'levels' (entry point levels = clash_plugin:PLUGIN (clash_plugin 0.1)): " + message), what


def test_two_installed_plugins_colliding_are_both_named(site: Path) -> None:
    install(site, "first_plugin", name="first", topic="first.readings", kpi="first_kpi", kind="first_kind",
            alert="FirstHigh")
    install(site, "second_plugin", name="second", topic="first.readings", kpi="first_kpi", kind="second_kind",
            alert="SecondHigh")
    with pytest.raises(ConfigError) as exc:
        load_plugins()
    assert exc.value.problems == [
        "plugin 'second' (entry point second = second_plugin:PLUGIN (second_plugin 0.1)): stream topic "
        "'first.readings' is also a topic of plugin 'first' (entry point first = first_plugin:PLUGIN (first_plugin 0.1))",
        "plugin 'second' (entry point second = second_plugin:PLUGIN (second_plugin 0.1)): KPI measurement "
        "'first_kpi' is also written by plugin 'first' (entry point first = first_plugin:PLUGIN (first_plugin 0.1))",
    ]


def test_alertname_colliding_with_a_builtin_rule_stops_start_naming_the_plugin(site: Path) -> None:
    install(site, "alert_plugin", alert="CardImpossibleTravel")
    with pytest.raises(ConfigError) as exc:
        wiring.load_rules(settings())
    text = str(exc.value)
    assert text.startswith("plugin 'levels' (entry point levels = alert_plugin:PLUGIN (alert_plugin 0.1)) manifests (")
    assert "levels-agent.yml: rules (CardImpossibleTravel).alert: duplicate alertname 'CardImpossibleTravel', " \
           "already defined in " in text and text.endswith("traffic-security.yml")


def test_agent_name_colliding_with_a_builtin_manifest_stops_start(site: Path) -> None:
    install(site, "agent_plugin", agent="traffic-security")
    with pytest.raises(ConfigError, match=r"traffic-security.yml: agent: 'traffic-security' is also the agent of "):
        wiring.load_rules(settings())


def _rules_dir_with(tmp: Path, manifest: str, runbook: str, name: str) -> Path:
    """The packaged manifests plus one more (``name``.yml and its runbook): a city's CITYOPS_RULES_DIR."""
    import shutil

    rules = tmp / "rules"
    shutil.copytree(wiring.default_rules_dir(), rules)
    (rules / f"{name}.yml").write_text(manifest)
    (rules / f"{name}.md").write_text(runbook)
    return rules


def test_a_rules_dir_manifest_replaces_the_plugin_manifest_of_the_same_agent(site: Path, tmp_path: Path) -> None:
    """A city tunes a plugin's rule without changing the plugin (and backtest --agents tries it)."""
    install(site, "tuned_plugin")
    _, plugin_rules = wiring.load_rules(settings())
    assert plugin_rules["LevelHigh"].severity == "warning" and plugin_rules["LevelHigh"].params == {}
    tuned = MANIFEST.format(agent="levels-agent", topic="levels.readings", alert="LevelHigh", kind="high_level")
    tuned = tuned.replace("    kind: high_level\n", "    kind: high_level\n    severity: critical\n"
                                                     "    params: {max_level: 7.5}\n")
    rules = _rules_dir_with(tmp_path, tuned, "# levels-agent\n\n## LevelHigh\n\nCall the plant.\n", "levels-agent")
    rules_dir, specs = wiring.load_rules(settings(CITYOPS_RULES_DIR=str(rules)))
    assert rules_dir == rules
    assert specs["LevelHigh"].severity == "critical" and specs["LevelHigh"].params == {"max_level": 7.5}
    assert "CardImpossibleTravel" in specs  # the rest of the city's rules as before
    # An error in the replacing manifest names CITYOPS_RULES_DIR, not the plugin.
    (rules / "levels-agent.yml").write_text(tuned.replace("max_level: 7.5", "max_level: high"))
    with pytest.raises(ConfigError, match=r"^CITYOPS_RULES_DIR \("):
        wiring.build_rules(rules, wiring.load_rules(settings(CITYOPS_RULES_DIR=str(rules)))[1])


def test_a_plugin_agent_named_like_a_builtin_one_stays_a_collision_with_a_rules_dir(site: Path,
                                                                                   tmp_path: Path) -> None:
    install(site, "agent_plugin2", agent="traffic-security")
    rules = tmp_path / "rules"
    import shutil

    shutil.copytree(wiring.default_rules_dir(), rules)
    with pytest.raises(ConfigError, match=r"traffic-security.yml: agent: 'traffic-security' is also the agent of "):
        wiring.load_rules(settings(CITYOPS_RULES_DIR=str(rules)))


def test_plugin_manifests_are_off_with_the_rules(site: Path) -> None:
    install(site, "levels_plugin")
    assert wiring.load_rules(settings(CITYOPS_RULES_DIR="none")) == (None, {})


def test_worker_exits_2_naming_a_plugin_that_does_not_load(site: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    install(site, "broken_plugin", body="import no_such_module_anywhere\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(GOOD, CITYOPS_KAFKA_BOOTSTRAP="127.0.0.1:9", PYTHONPATH=os.pathsep.join(
        [str(site), *[p for p in sys.path if p]]))
    r = subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "cityops: plugin entry point levels = broken_plugin:PLUGIN (broken_plugin 0.1) in group cityops.agents: "
        "import failed: ModuleNotFoundError: No module named 'no_such_module_anywhere'")


def test_check_config_lists_plugins_streams_and_rules(site: Path) -> None:
    from cityops.checkconfig import check_config

    install(site, "levels_plugin")
    report = check_config(dict(GOOD, CITYOPS_PLUGINS="levels"))
    assert report.problems == [f"plugin 'levels' (entry point levels = levels_plugin:PLUGIN (levels_plugin 0.1)): "
                               f"stream 'levels.readings' has no contract (contracts unset)"]
    text = report.text()
    assert "plugins: 1 installed plugin(s) loaded (CITYOPS_PLUGINS=levels); entry point group cityops.agents" in text
    assert ("  levels (entry point levels = levels_plugin:PLUGIN (levels_plugin 0.1)): streams levels.readings; "
            "KPIs levels_kpi; rule kinds high_level") in text
    assert "streams: traffic.card-taps, traffic.road-detectors, health.card-events, food.trace-events, " \
           "levels.readings" in text
    assert "  levels-agent: LevelHigh" in text and "(plugin levels)" in text


def test_collisions_is_empty_for_distinct_plugins() -> None:
    from cityops.plugins import Loaded

    builtin = load_plugins("none").loaded[0]
    empty = AgentPlugin(name="empty")
    assert collisions([builtin, Loaded(empty, "test")]) == []
    assert PluginSet([builtin, Loaded(empty, "test")]).kind_names == set(KINDS) | set(RULE_KINDS)


def test_plugin_declaration_errors() -> None:
    with pytest.raises(TypeError, match=r"streams\[0\]: expected a cityops.types.StreamFactory, got str"):
        AgentPlugin(name="x", streams=("traffic",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"streams\[0\].topic: not a Kafka topic name: 'a b'"):
        AgentPlugin(name="x", streams=(StreamFactory("a b", lambda s: SimpleNamespace()),))
    with pytest.raises(TypeError, match=r"rule_kinds\['k'\]: expected a RuleKind subclass"):
        AgentPlugin(name="x", rule_kinds={"k": int})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"manifests: /nonexistent is not a folder"):
        AgentPlugin(name="x", manifests=Path("/nonexistent"))


def test_a_stream_built_unlike_its_declaration_is_refused() -> None:
    from cityops.plugins import Loaded
    from cityops.types import StreamSetup

    wrong = AgentPlugin(name="wrong", streams=(StreamFactory(
        "wrong.topic", lambda setup: SimpleNamespace(topic="other.topic", kpis={})),))
    plugins = PluginSet([Loaded(wrong, "test")])
    with pytest.raises(ConfigError, match=r"^plugin 'wrong' \(test\): the stream built for 'wrong.topic' has topic "
                                          r"'other.topic' and KPIs \[\], not the declared 'wrong.topic' and \[\]$"):
        plugins.build_streams(StreamSetup(settings(), str, {}))



def test_plugin_manifest_without_its_runbook_section_stops_start_naming_the_plugin(site: Path) -> None:
    install(site, "runbook_plugin")
    (site / "runbook_plugin" / "agents" / "levels-agent.md").write_text("# levels-agent\n\n## Other\n")
    with pytest.raises(ConfigError) as exc:
        wiring.load_rules(settings(CITYOPS_PLUGINS="levels"))
    assert str(exc.value) == (
        "plugin 'levels' (entry point levels = runbook_plugin:PLUGIN (runbook_plugin 0.1)) manifests "
        f"({site / 'runbook_plugin' / 'agents'}): agents/levels-agent.yml: rules[0] (LevelHigh).alert: runbook "
        "levels-agent.md has no section '## LevelHigh'")


def test_a_stream_factory_that_fails_is_named_with_its_plugin() -> None:
    from cityops.plugins import Loaded
    from cityops.types import StreamSetup

    def broken(setup: StreamSetup) -> object:
        raise KeyError("lot_map")

    plugin = AgentPlugin(name="broken", streams=(StreamFactory("broken.topic", broken),))
    with pytest.raises(ConfigError, match=r"^plugin 'broken' \(test\): building the stream of 'broken.topic' "
                                          r"failed: KeyError: 'lot_map'$"):
        PluginSet([Loaded(plugin, "test")]).build_streams(StreamSetup(settings(), str, {}))


def test_cityops_dashboards_validates_the_plugins_dashboards_against_their_kpis(site: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cityops.cli import main
    from tests.installed_plugins import plugin_dashboards

    install(site, "board_plugin")
    boards = site / "board_plugin" / "dashboards"
    boards.mkdir()
    ds = {"type": "influxdb", "uid": "cityops-influx"}

    def board(field: str) -> dict[str, object]:
        query = f'SELECT max("{field}") FROM "levels_kpi" WHERE $timeFilter GROUP BY time($__interval), "source"'
        return {"uid": "levels", "title": "Levels", "schemaVersion": 39, "panels": [
            {"id": 1, "type": "timeseries", "title": "Level", "datasource": ds,
             "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
             "targets": [{"refId": "A", "datasource": ds, "rawQuery": True, "query": query}]}]}

    (boards / "levels.json").write_text(json.dumps(board("level_max")))
    expected = 6 + plugin_dashboards()  # the built-in ones, the other installed plugins' and this one
    assert main(["dashboards", "validate"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{expected} dashboards, 0 problems"
    (boards / "levels.json").write_text(json.dumps(board("level_min")))
    assert main(["dashboards", "validate"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["levels: dashboard levels panel 1 'Level' target A: 'level_min' is neither a field nor a tag of "
                   "levels_kpi",
                   "levels: dashboard levels panel 1 'Level' target A: SELECT names no field (InfluxDB returns nothing "
                   "for tags alone)", f"{expected} dashboards, 2 problems"]


def test_backtest_names_a_broken_plugin_as_the_plugins_problem(site: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Not as a problem of the manifests' folder (`proposed manifests (CITYOPS_RULES_DIR ...): plugin ...`)."""
    from cityops.cli import main

    install(site, "broken_plugin", body="raise RuntimeError('no licence server')\n")
    for name in [n for n in __import__("os").environ if n.startswith("CITYOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CITYOPS_PSEUDONYM_KEY", "backtest-pseudonym-key-0123456789")
    rec = tmp_path / "rec.jsonl"
    rec.write_text('{"topic": "traffic.card-taps", "timestamp": 1764460800000, "value": []}\n')
    assert main(["backtest", "--from", str(rec), "--quiet"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cityops: plugin entry point levels = broken_plugin:PLUGIN (broken_plugin 0.1) in group "
                           "cityops.agents: ")
    assert "manifests" not in line and "CITYOPS_RULES_DIR" not in line


# ---------------------------------------------------------------------------------- tasks (cityops.ha)
def test_tasks_are_the_declared_stream_groups_and_a_plugin_is_its_own_task(site: Path) -> None:
    install(site, "levels_plugin")
    tasks = load_plugins().tasks()
    assert {t: tasks[t] for t in ("traffic", "health", "food")} == {
        "traffic": ["traffic.card-taps", "traffic.road-detectors"], "health": ["health.card-events"],
        "food": ["food.trace-events"]}
    assert tasks["levels"] == ["levels.readings"]  # no task declared: the plugin's name


def test_a_plugin_task_named_like_another_plugins_task_stops_start(site: Path) -> None:
    install(site, "traffic_plugin", name="traffic", topic="more.readings", kpi="more_kpi", kind="more_kind",
            alert="MoreHigh")
    with pytest.raises(ConfigError) as exc:
        load_plugins()
    assert exc.value.problems == [
        "plugin 'traffic' (entry point traffic = traffic_plugin:PLUGIN (traffic_plugin 0.1)): task 'traffic' is "
        "also a task of plugin 'builtin' (built-in)"]


def test_cityops_task_builds_only_that_tasks_streams_and_must_name_a_task() -> None:
    assert [s.topic for s in build_streams(settings(CITYOPS_TASK="traffic", CITYOPS_PLUGINS="none"))] == [
        "traffic.card-taps", "traffic.road-detectors"]
    assert [s.topic for s in build_streams(settings(CITYOPS_TASK="food", CITYOPS_PLUGINS="none"))] == [
        "food.trace-events"]
    with pytest.raises(ConfigError, match=r"^CITYOPS_TASK: 'transit' is no task of the loaded agents "
                                          r"\(food, health, traffic\)$"):
        build_streams(settings(CITYOPS_TASK="transit", CITYOPS_PLUGINS="none"))


def test_state_in_kafka_is_per_task(tmp_path: Path) -> None:
    from cityops.runtime import kafka_state_store

    with pytest.raises(ConfigError, match="CITYOPS_STATE_STORE=kafka keeps state per task: set CITYOPS_TASK"):
        kafka_state_store(settings(CITYOPS_STATE_STORE="kafka"))
    store = kafka_state_store(settings(CITYOPS_STATE_STORE="kafka", CITYOPS_TASK="health",
                                       CITYOPS_DATA_DIR=str(tmp_path / "data")))
    assert (store.topic, store.partition) == ("cityops.state.health", 0)
