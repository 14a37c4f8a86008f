"""The wheel carries every data file the service reads, and an install finds them without the source tree.

Builds the wheel as deploy/Dockerfile's builder stage does (only what it COPYs, `pip wheel --no-deps`), checks its file list against the
repository's data folders, then imports cityops from the unpacked wheel in a fresh process whose working
directory is not the checkout: the packaged manifests, registry, EPCIS schema and contracts must be found
and `cityops check-config` must pass. (`make test-wheel` goes further: a fresh virtualenv and the end-to-end
alert and food tests against that install.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _builder_copies() -> list[tuple[str, str]]:
    """(source, destination) of each COPY in deploy/Dockerfile's builder stage."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    builder = text[text.index(" AS builder"):text.index(" AS runtime")]
    out = []
    for line in builder.splitlines():
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            out += [(src, dest) for src in sources]
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built as the Dockerfile's builder stage builds it: from a folder holding only what the
    stage COPYs (symlinks kept, as COPY keeps them), with the same `pip wheel` command."""
    context = tmp_path_factory.mktemp("builder")
    for src, dest in _builder_copies():
        path = REPO / src
        target = context / dest / Path(src).name if dest.endswith("/") else context / dest
        if path.is_dir():
            shutil.copytree(path, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, target)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), "."],
                          cwd=context, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("cityops-*.whl")
    return path


def test_top_level_data_folders_hold_no_python() -> None:
    # Top-level agents/ or streams/ packages would collide with other distributions' import names.
    for folder in ("agents", "streams", "dashboards"):
        assert not [p for p in (REPO / folder).rglob("*.py")], f"{folder}/ must not hold Python"
    for link in ("agents", "streams", "dashboards"):
        path = REPO / "src" / "cityops" / "data" / link
        assert path.is_symlink() and path.resolve() == REPO / link, f"{path} must be a symlink to {link}/"


def test_no_source_tree_lookups_in_the_package() -> None:
    offenders = []
    for path in (REPO / "src" / "cityops").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "__file__" in line or ".parents[" in line:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == [], "package data must be found with importlib.resources:\n" + "\n".join(offenders)


def test_wheel_contains_every_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cityops/data/agents/{p.name}" for p in (REPO / "agents").glob("*.yml")}
    expected |= {f"cityops/data/agents/{p.name}" for p in (REPO / "agents").glob("*.md")}
    expected |= {f"cityops/data/dashboards/{p.name}" for p in (REPO / "dashboards").glob("*.json")}
    expected |= {f"cityops/data/streams/{p.parent.name}/schema.json" for p in (REPO / "streams").glob("*/schema.json")}
    expected |= {"cityops/data/streams/sources.json", "cityops/data/streams/food.trace-events/EPCIS-JSON-Schema.json",
                 "cityops/py.typed"}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    # The template of `cityops agent new`, every file of it.
    template = REPO / "src" / "cityops" / "templates" / "agent"
    wanted = {f"cityops/templates/agent/{p.relative_to(template)}" for p in template.rglob("*.tmpl")}
    assert len(wanted) == 13 and wanted <= names, f"template files missing: {sorted(wanted - names)}"
    assert "cityops/data/agents/platform.md" in names
    # Only the data the service reads: no tests, no samples, no vendored test fixtures.
    assert not [n for n in names if n.startswith("cityops/data/") and ("/test/" in n or n.endswith(".jsonl"))]
    assert not [n for n in names if n.startswith(("tests/", "agents/", "streams/"))]
    # Byte-identical to the canonical copies in git.
    with zipfile.ZipFile(wheel) as z:
        for name in expected - {"cityops/py.typed"}:
            rel = name.removeprefix("cityops/data/")
            assert z.read(name) == (REPO / rel).read_bytes(), name


def test_unpacked_wheel_runs_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    code = (
        "import sys, cityops; from cityops import resources; from cityops.food.epcis import EpcisValidator\n"
        f"assert cityops.__file__.startswith({str(site)!r}), cityops.__file__\n"
        f"assert str(resources.rules_dir()).startswith({str(site)!r})\n"
        "assert resources.missing_packaged_files() == []\n"
        "EpcisValidator()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    env.update(CITYOPS_KAFKA_BOOTSTRAP="127.0.0.1:9", CITYOPS_INFLUX_URL="http://127.0.0.1:9",
               CITYOPS_PSEUDONYM_KEY="packaging-test-key-0123", CITYOPS_DATA_DIR=str(tmp_path / "data"),
               CITYOPS_SOURCE_REGISTRY="simulator")
    proc = subprocess.run([sys.executable, "-m", "cityops.cli", "check-config"], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from tests.installed_plugins import plugin_rules

    # (and the rules of the agent plugins installed in this environment, e.g. examples/cityops-parking)
    assert f"rules: {15 + plugin_rules()} from {site}/cityops/data/agents" in proc.stdout
    assert f"source registry: {site}/cityops/data/streams/sources.json (enforce, " in proc.stdout


def test_every_third_party_import_is_a_runtime_dependency() -> None:
    """What the package imports must be installed by `pip install cityops` alone (the Dockerfile's install):
    a module only in the test extras would crash the worker in a container (numpy, for the ART detector)."""
    import ast
    import importlib.metadata as md
    import re
    import tomllib

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    extras = {name: {norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in deps}
              for name, deps in project["optional-dependencies"].items()}
    optional_modules = {"cityops/localstack.py": extras["local"]}  # `cityops demo`'s embedded broker
    dists = md.packages_distributions()
    missing = []
    for path in (REPO / "src" / "cityops").rglob("*.py"):
        rel = str(path.relative_to(REPO / "src"))
        allowed = runtime | optional_modules.get(rel, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "cityops":
                    continue
                provided = {norm(d) for d in dists.get(top, [top])}
                if not provided & allowed:
                    missing.append(f"{rel}: import {top} (distribution {sorted(provided)})")
    assert missing == [], "imported but not in [project] dependencies:\n" + "\n".join(sorted(set(missing)))
