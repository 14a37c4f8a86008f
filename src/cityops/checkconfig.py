"""`cityops check-config`: everything the worker would load at start, loaded and reported, without servers.

Loads the settings (refusing unknown CITYOPS_* variables), the rule manifests and runbooks, the source
registry, the EPCIS schema, the stream contracts and the dashboards; builds the streams and the rules as
the worker does. Prints what would be active. Every problem is collected and named (the setting, or the
file); the command exits 2 if there is any, 0 otherwise. It opens no network connection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityops.errors import ConfigError

__all__ = ["Report", "check_config"]


@dataclass
class Report:
    """What check-config found: ``lines`` to print (what is active), ``problems`` (each names its cause)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """What is active, then "configuration OK" or the number of problems."""
        tail = f"{len(self.problems)} problem(s)" if self.problems else "configuration OK"
        return "\n".join([*self.lines, tail])


def _attempt(report: Report, what: Callable[[], Any]) -> Any:
    """Run one check; a ConfigError (or a data file's ValueError/OSError) becomes a named problem."""
    try:
        return what()
    except ConfigError as exc:
        report.problems.extend(p.removeprefix("bad configuration: ") for p in exc.problems)
    except (ValueError, OSError) as exc:
        report.problems.append(f"{type(exc).__name__}: {exc}")
    return None


def _packaged_files(report: Report) -> None:
    from importlib.resources import files

    from cityops import resources

    for rel in resources.missing_packaged_files():
        report.problems.append(f"package data cityops/data/{rel} is missing from this install "
                               f"({files('cityops')}): reinstall cityops")


def _contracts(report: Report) -> None:
    from cityops.streams.contracts import CONTRACTS_DIR, contract_schema
    from cityops.streams.models import MODELS

    for topic in MODELS:
        path = CONTRACTS_DIR / topic / "schema.json"
        try:
            shipped = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            report.problems.append(f"stream contract {path}: cannot read ({exc})")
            continue
        if shipped != contract_schema(topic):
            report.problems.append(f"stream contract {path}: differs from the models in cityops.streams.models "
                                   f"(regenerate with python -m cityops.streams.contracts)")


def _epcis(report: Report) -> None:
    from cityops.food.epcis import EpcisValidator

    try:
        EpcisValidator()
    except ValueError as exc:
        report.problems.append(f"EPCIS schema: {exc}")


def _dashboards(report: Report, plugins: Any) -> int:
    from cityops import dashboards
    from cityops.plugins import catalogue, load_all_dashboards

    boards = load_all_dashboards(plugins)
    measurements = catalogue(plugins)
    seen: set[str] = set()
    for loaded, board in boards:
        where = "" if loaded.builtin else f" ({loaded.label()})"
        for problem in dashboards.validate(board, seen_uids=seen, measurements=measurements):
            report.problems.append(f"dashboard {board.get('uid')}{where}: {problem}")
    return len(boards)


def _plugin_contracts(report: Report, plugins: Any) -> None:
    """Each installed plugin's stream has its contract: ``<contracts>/<topic>/schema.json``, valid JSON."""
    for loaded in plugins.third_party:
        folder = loaded.plugin.contracts
        for topic in loaded.plugin.topics:
            path = None if folder is None else folder.joinpath(topic, "schema.json")
            if path is None or not path.is_file():
                report.problems.append(f"{loaded.label()}: stream {topic!r} has no contract "
                                       f"{'(contracts unset)' if folder is None else path}")
                continue
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                report.problems.append(f"{loaded.label()}: stream contract {path}: cannot read ({exc})")


def _data_dir(report: Report, data_dir: Path) -> str:
    # The worker creates the directory; it must not be something else, and must be writable if it exists.
    if data_dir.exists():
        if not data_dir.is_dir():
            report.problems.append(f"CITYOPS_DATA_DIR: {data_dir} exists and is not a directory")
        elif not os.access(data_dir, os.W_OK | os.X_OK):
            report.problems.append(f"CITYOPS_DATA_DIR: {data_dir} is not writable by this user")
        elif (data_dir / "state").exists():
            return f"{data_dir} (holds state: the worker restores it)"
        return f"{data_dir}"
    return f"{data_dir} (does not exist yet: the worker creates it)"


def check_config(env: Mapping[str, str] | None = None) -> Report:
    """Load and check everything the worker would use with ``env`` (default: the process environment)."""
    from cityops.settings import load_settings, unknown_variables

    report = Report()
    version = _version()
    report.lines.append(f"cityops {version}")
    _attempt(report, lambda: _packaged_files(report))
    _attempt(report, lambda: _epcis(report))
    _attempt(report, lambda: _contracts(report))
    from cityops.plugins import describe, load_plugins, plugin_set

    # The dashboards of every installed plugin (they are files, whichever plugins CITYOPS_PLUGINS selects).
    installed = _attempt(report, load_plugins)
    n_boards = None if installed is None else _attempt(report, lambda: _dashboards(report, installed))
    if n_boards is not None:
        report.lines.append(f"dashboards: {n_boards} (cityops dashboards push, or Grafana's file provider)")

    # Unknown CITYOPS_* names are reported, and the rest is still checked without them.
    environ = dict(os.environ if env is None else env)
    unknown = unknown_variables(environ)
    report.problems.extend(p for p in unknown)
    bad = {p.split(":", 1)[0] for p in unknown}
    settings = _attempt(report, lambda: load_settings({k: v for k, v in environ.items() if k not in bad}))
    if settings is None:
        return report

    # (CITYOPS_PLUGINS unset: the set loaded above; its problems are reported once)
    plugins = installed if not settings.plugins else _attempt(report, lambda: plugin_set(settings))
    if plugins is None:
        return report
    report.lines.append(f"plugins: {len(plugins.third_party)} installed plugin(s) loaded (CITYOPS_PLUGINS="
                        f"{settings.plugins or 'all'}); entry point group cityops.agents")
    report.lines.extend(describe(plugins))
    _attempt(report, lambda: _plugin_contracts(report, plugins))

    from cityops.alerts import wiring
    from cityops.engine.pipeline import DEAD_LETTER_TOPIC
    from cityops.runtime import ALERTS_TOPIC, build_streams

    loaded = _attempt(report, lambda: wiring.load_rules(settings))
    specs = loaded[1] if loaded is not None and loaded[0] is not None else None
    streams = _attempt(report, lambda: build_streams(settings, specs))
    if streams is not None:
        report.lines.append("streams: " + ", ".join(s.topic for s in streams))
    report.lines.append(f"kafka: {settings.kafka_bootstrap} ({settings.kafka_security_protocol})")

    before = len(report.problems)
    gate = _attempt(report, lambda: wiring.load_registry_gate(settings))
    if len(report.problems) == before:
        topics = [s.topic for s in streams] if streams is not None else None
        report.lines.append(f"source registry: {wiring.registry_mode(gate, topics)}")
        if gate is None and settings.unknown_sources != "enforce":
            report.lines.append("  (CITYOPS_UNKNOWN_SOURCES has no effect without a registry)")

    if loaded is not None:
        rules_dir, specs = loaded
        if rules_dir is None:
            report.lines.append("rules: off (CITYOPS_RULES_DIR=none)")
        elif _attempt(report, lambda: wiring.build_rules(rules_dir, specs, plugins.rule_kinds)) is not None:
            report.lines.append(f"rules: {len(specs)} from {rules_dir}" + "".join(
                f" and {folder} (plugin {ld.plugin.name})" for ld, folder, _ in plugins.manifest_folders()))
            by_agent: dict[str, list[str]] = {}
            for spec in specs.values():
                by_agent.setdefault(spec.agent, []).append(spec.name)
            for agent, names in sorted(by_agent.items()):
                report.lines.append(f"  {agent}: {', '.join(names)}")
            from cityops.alerts.reload import rules_hash

            # The hash a worker running these files shows in /healthz (rules.hash): deployed = running?
            watch = (f"and a changed file within {settings.rules_watch_s:g}s (CITYOPS_RULES_WATCH_S)"
                     if settings.rules_watch_s > 0 else "only (CITYOPS_RULES_WATCH_S=0)")
            report.lines.append(f"  rules hash {rules_hash(specs)}; reloaded on SIGHUP {watch}")

    influx = f"{settings.influx_url} database={settings.influx_database}"
    if settings.influx_org:
        influx += f" org={settings.influx_org} (v2 write API)"
    influx += _auth(settings, "influx")
    report.lines.append("outputs:")
    report.lines.append(f"  influxdb: {influx}")
    report.lines.append("  alertmanager: " + (str(settings.alertmanager_url) + _auth(settings, "alertmanager")
                                               if settings.alertmanager_url
                                               else "off (CITYOPS_ALERTMANAGER_URL unset)"))
    report.lines.append(f"  kafka topics: {ALERTS_TOPIC} (alert transitions), {DEAD_LETTER_TOPIC}")
    report.lines.append(f"  web: http://{settings.web_host}:{settings.web_port}/metrics and /healthz")
    report.lines.append(f"data dir: {_data_dir(report, Path(settings.data_dir))}")
    return report


def _auth(settings: Any, service: str) -> str:
    """" user=NAME", " token" or "" for an HTTP output: which credentials are configured (never their value)."""
    user = getattr(settings, f"{service}_username", None)
    if user:
        return f" user={user}"
    if getattr(settings, f"{service}_token", None) or getattr(settings, f"{service}_token_file", None):
        return " token"
    return ""


def _version() -> str:
    from cityops import __version__

    return __version__
