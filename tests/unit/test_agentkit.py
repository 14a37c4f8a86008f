"""`cityops agent new` scaffolds a plugin package that passes its own tests; `cityops agent test` validates plugins."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cityops.agentkit import AgentNames, new_agent
from cityops.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SRC = str(Path(__import__("cityops").__file__).resolve().parents[1])  # the cityops under test


def run(args: list[str], cwd: Path, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, SRC, env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_agent("bike-docks", tmp_path_factory.mktemp("gen"))


def test_names_derived_from_name() -> None:
    n = AgentNames.of("bike-docks")
    assert (n.dist, n.module, n.topic, n.kpi, n.kind, n.alert) == (
        "cityops-bike-docks", "cityops_bike_docks", "bike-docks.readings", "bike_docks_readings", "bike_docks_high",
        "BikeDocksHigh")


def test_generated_package_has_every_part(generated: Path) -> None:
    files = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert files == [
        "README.md", "pyproject.toml", "src/cityops_bike_docks/__init__.py", "src/cityops_bike_docks/contract.py",
        "src/cityops_bike_docks/data/agents/bike-docks.md", "src/cityops_bike_docks/data/agents/bike-docks.yml",
        "src/cityops_bike_docks/data/dashboards/cityops-bike-docks.json",
        "src/cityops_bike_docks/data/streams/bike-docks.readings/samples.jsonl",
        "src/cityops_bike_docks/data/streams/bike-docks.readings/schema.json",
        "src/cityops_bike_docks/py.typed", "src/cityops_bike_docks/rules.py", "src/cityops_bike_docks/stream.py",
        "tests/test_cityops_bike_docks.py"]
    text = (generated / "pyproject.toml").read_text()
    assert '[project.entry-points."cityops.agents"]\nbike-docks = "cityops_bike_docks:PLUGIN"' in text
    assert not [p for p in generated.rglob("*") if p.is_file() and "__" in p.read_text().replace("__init__", "")
                .replace("__name__", "").replace("__future__", "").replace("__all__", "").replace("__main__", "")
                .replace("$__interval", "").replace("$__all", "")]  # every placeholder replaced


def test_generated_package_passes_its_own_tests(generated: Path) -> None:
    r = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], generated, extra_path=str(generated / "src"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^5 passed\b", r.stdout, re.MULTILINE), r.stdout


def test_agent_test_passes_the_generated_package(generated: Path, tmp_path: Path) -> None:
    r = run(["-m", "cityops.cli", "agent", "test", str(generated)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("plugin 'bike-docks' (entry point bike-docks = cityops_bike_docks:PLUGIN (")
    assert "OK (streams bike-docks.readings; KPIs bike_docks_readings; rule kinds bike_docks_high)" in r.stdout


def test_agent_test_passes_the_example_parking_plugin(tmp_path: Path) -> None:
    r = run(["-m", "cityops.cli", "agent", "test", str(REPO / "examples" / "cityops-parking")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OK (streams parking.lot-occupancy; KPIs parking_occupancy; rule kinds lot_full)" in r.stdout


def test_agent_test_exits_2_with_one_line_per_problem(generated: Path, tmp_path: Path) -> None:
    broken = tmp_path / "cityops-bike-docks"
    shutil.copytree(generated, broken)
    pkg = broken / "src" / "cityops_bike_docks"
    # A sample that breaks the contract; a KPI named like a built-in one; a rule without its runbook section;
    # an alert named like a built-in rule.
    samples = pkg / "data/streams/bike-docks.readings/samples.jsonl"
    samples.write_text(samples.read_text() + '{"event_id": "x", "ts": "2026-11-25T08:00:00+08:00", "source": "d", '
                       '"value": 1}\n')
    stream = pkg / "stream.py"
    stream.write_text(stream.read_text().replace('"bike_docks_readings"', '"traffic_road"'))
    manifest = pkg / "data/agents/bike-docks.yml"
    manifest.write_text(manifest.read_text() + """\
  - alert: CardImpossibleTravel
    kind: bike_docks_high
    summary: "x"
""")
    runbook = pkg / "data/agents/bike-docks.md"
    runbook.write_text(runbook.read_text() + "\n## CardImpossibleTravel\n\nx\n")
    r = run(["-m", "cityops.cli", "agent", "test", str(broken)], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    label = f"plugin 'bike-docks' (entry point bike-docks = cityops_bike_docks:PLUGIN ({broken}))"
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"cityops: agent test: {label}: KPI measurement 'traffic_road' is also written by plugin " \
                       "'builtin' (built-in)"
    assert lines[1].startswith(f"cityops: agent test: {label}: manifests ({pkg / 'data/agents'}): agents/bike-docks.yml: "
                               "rules (CardImpossibleTravel).alert: duplicate alertname 'CardImpossibleTravel', "
                               "already defined in ")
    assert lines[1].endswith("traffic-security.yml")
    assert lines[2] == (f"cityops: agent test: {label}: contract bike-docks.readings: samples.jsonl:4: breaks the "
                        "schema: \"site\" is a required property at /")
    assert lines[3] == (f"cityops: agent test: {label}: contract bike-docks.readings: samples.jsonl:4: the stream's "
                        "decoder rejects it: contract: Object missing required field `site` - at `$`")
    # The dashboard still queries the measurement's old name.
    assert [line.removeprefix(f"cityops: agent test: {label}: dashboards: dashboard cityops-bike-docks ")
            for line in lines[4:]] == [
        "panel 1 'Mean reading by site' target A: unknown measurement 'bike_docks_readings'",
        "panel 2 'Highest reading by site' target A: unknown measurement 'bike_docks_readings'",
        "variable 'site': unknown measurement 'bike_docks_readings'"]
    assert "7 problem(s)" in r.stdout


def test_agent_test_reports_a_missing_runbook_section_and_bad_params(generated: Path, tmp_path: Path) -> None:
    broken = tmp_path / "cityops-bike-docks"
    shutil.copytree(generated, broken)
    pkg = broken / "src" / "cityops_bike_docks"
    manifest = pkg / "data/agents/bike-docks.yml"
    manifest.write_text(manifest.read_text().replace("params: {max_value: 100}", 'params: {max_value: "high"}'))
    r = run(["-m", "cityops.cli", "agent", "test", str(broken)], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "manifests: agents/bike-docks.yml: rules[0] (BikeDocksHigh).params.max_value: expected float, got 'high'")
    runbook = pkg / "data/agents/bike-docks.md"
    runbook.write_text(runbook.read_text().replace("## BikeDocksHigh", "## Something else"))
    r = run(["-m", "cityops.cli", "agent", "test", str(broken)], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "agents/bike-docks.yml: rules[0] (BikeDocksHigh).alert: runbook bike-docks.md has no section '## BikeDocksHigh'")


def test_agent_new_refuses_a_bad_name_and_an_existing_folder(generated: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^agent new: NAME 'Bike_Docks' must be lower-case words"):
        new_agent("Bike_Docks", tmp_path)
    with pytest.raises(ConfigError, match=r"^agent new: .*cityops-bike-docks exists already"):
        new_agent("bike-docks", generated.parent)
    r = run(["-m", "cityops.cli", "agent", "new", "x y", "--dir", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("cityops: agent new: NAME 'x y'")


def test_agent_test_of_a_plugin_not_installed_exits_2(tmp_path: Path) -> None:
    r = run(["-m", "cityops.cli", "agent", "test", "--plugin", "no-such-plugin"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("cityops: agent test: --plugin no-such-plugin: no installed plugin of that name")


def test_agent_new_refuses_a_dir_that_is_a_file_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    r = run(["-m", "cityops.cli", "agent", "new", "zz", "--dir", str(afile)], tmp_path)
    assert (r.returncode, r.stderr) == (2, f"cityops: --dir {afile}: not a directory\n")
    r = run(["-m", "cityops.cli", "agent", "new", "zz", "--dir", str(afile / "sub")], tmp_path)
    assert (r.returncode, r.stderr) == (2, f"cityops: --dir {afile / 'sub'}: {afile} is not a directory\n")


@pytest.mark.parametrize(("name", "taken"), [
    ("food-safety", "agent 'food-safety' belongs to the built-in agents"),
    ("health-security", "agent 'health-security' belongs to the built-in agents"),
    ("kpi-anomaly", "agent 'kpi-anomaly' belongs to the built-in agents"),
])
def test_agent_new_refuses_the_name_of_a_built_in_agent(name: str, taken: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^agent new: NAME '{name}' is taken: {taken}; choose another NAME$"):
        new_agent(name, tmp_path)
    assert list(tmp_path.iterdir()) == []
    r = run(["-m", "cityops.cli", "agent", "new", name, "--dir", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"cityops: agent new: NAME '{name}' is taken: {taken}")


def test_agent_new_refuses_the_name_of_an_installed_plugin(tmp_path: Path) -> None:
    from importlib import metadata

    installed = {ep.name: ep for ep in metadata.entry_points(group="cityops.agents")}
    assert "parking" in installed, "the example plugin examples/cityops-parking is installed in the test venv"
    with pytest.raises(ConfigError, match=r"^agent new: NAME 'parking' is taken: installed plugin parking = "
                                          r"cityops_parking:PLUGIN \(cityops-parking\) has entry point name 'parking'"):
        new_agent("parking", tmp_path)
    assert list(tmp_path.iterdir()) == []
