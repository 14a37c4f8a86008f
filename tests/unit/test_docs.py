"""The docs hold: README's settings table lists every setting, every runbook link and relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cityops.alerts.manifest import DEFAULT_RUNBOOK_BASE, load_manifests
from cityops.settings import OTHER_VARIABLES, Settings, setting_names

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PROM_RULES = REPO / "deploy" / "prometheus" / "rules"
# Markdown written for this project (the vendored GS1 schema's folder is not ours).
DOCS = sorted(
    [README, *REPO.glob("agents/*.md"), *REPO.glob("docs/*.md"), *REPO.glob("streams/*.md"),
     *REPO.glob("streams/*/*.md")]
)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", path.read_text(), re.MULTILINE)}


def settings_table_names() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    section = section[:section.index("\n## ", 3)]
    names = []
    for row in re.findall(r"^\| (`CITYOPS_[^|]+)\|", section, re.MULTILINE):  # first column: one or more names
        names += re.findall(r"`(CITYOPS_[A-Z0-9_]+)`", row)
    return names


def test_readme_settings_table_lists_every_setting() -> None:
    names = settings_table_names()
    assert len(names) == len(set(names)), "a setting listed twice"
    assert sorted(names) == setting_names(), (
        f"missing from README: {sorted(set(setting_names()) - set(names))}; "
        f"not settings: {sorted(set(names) - set(setting_names()))}")
    assert set(OTHER_VARIABLES) <= set(names)
    assert len(Settings.model_fields) + len(OTHER_VARIABLES) == len(names)


def test_every_manifest_runbook_link_resolves() -> None:
    specs = load_manifests(REPO / "agents")
    assert specs
    for spec in specs.values():
        assert spec.runbook_url.startswith(DEFAULT_RUNBOOK_BASE + "/")
        path, _, anchor = spec.runbook_url[len(DEFAULT_RUNBOOK_BASE) + 1:].partition("#")
        assert (REPO / path).is_file(), f"{spec.name}: {path} does not exist"
        assert anchor in anchors(REPO / path), f"{spec.name}: {path} has no heading for #{anchor}"


def test_every_prometheus_runbook_link_resolves() -> None:
    urls = []
    for rules in PROM_RULES.glob("*.rules.yml"):
        for group in yaml.safe_load(rules.read_text())["groups"]:
            urls += [(r["alert"], r["annotations"]["runbook_url"]) for r in group["rules"] if "alert" in r]
    assert urls
    for alert, url in urls:
        path, _, anchor = url.partition("#")
        assert (REPO / path).is_file(), f"{alert}: runbook {path} does not exist"
        assert anchor == alert.lower() and anchor in anchors(REPO / path), f"{alert}: no section #{anchor} in {path}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)  # code blocks are not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.relative_to(REPO)}: link {target} points at nothing"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.relative_to(REPO)}: link {target}: no such heading"


def test_readme_commands_table_has_a_row_per_subcommand() -> None:
    """Every `cityops` subcommand (and `agent` action) has its row; the demo row says how to stop it by itself."""
    import argparse

    from cityops.cli import build_parser

    text = README.read_text()
    section = text[text.index("## Commands"):]
    section = section[:section.index("\n## ", 3)]
    rows = re.findall(r"^\| `cityops ([^`]+)`", section, re.MULTILINE)
    commands = {row.split()[0]: row for row in rows}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = sorted(set(sub.choices) - set(commands))
    assert missing == [], f"README ## Commands has no row for: {missing}"
    agent = next(a for a in sub.choices["agent"]._actions if isinstance(a, argparse._SubParsersAction))
    for action in agent.choices:
        assert any(r.startswith(f"agent {action}") for r in rows), f"no row `cityops agent {action} ...`"
    assert "--for SECONDS" in commands["demo"]


def test_agent_readme_step_1_installs_the_test_extra_the_template_declares() -> None:
    import tomllib

    template = REPO / "src" / "cityops" / "templates" / "agent" / "pyproject.toml.tmpl"
    extras = tomllib.loads(template.read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("pytest") for dep in extras["test"])
    step1 = (REPO / "agents" / "README.md").read_text().split("**2. Make it yours.**")[0]
    assert "pip install -e '.[test]' && python -m pytest tests" in step1
