"""`cityops agent new` (scaffold an agent plugin package) and `cityops agent test` (validate a plugin).

``new_agent(name, directory)`` writes a package from the template shipped in cityops
(``cityops/templates/agent``, found with importlib.resources): a contract (schema + samples), a msgspec
decoder, a KPI, a rule kind, a manifest with its runbook, a dashboard, tests, and a pyproject.toml with
the entry point in group ``cityops.agents``. As generated, its tests pass and ``check_plugin`` finds no
problem.

``check_plugin(loaded, others)`` validates one plugin against the built-in agents and the other installed
plugins, one message per problem: the contract of each stream (``schema.json`` is a JSON Schema, every
line of ``samples.jsonl`` validates against it and decodes with the stream's own decoder, and the KPI
points the samples make hold only the fields the ``Kpi`` declares), the manifests (they load with the
rule kinds of every plugin, each rule has its runbook section, their rules build, their alertnames and
agents are not another plugin's, what they consume is a known stream), the dashboards (against the
catalogue with the plugin's KPIs), and the names (topics, KPI measurements, rule kinds) against the others.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from cityops.errors import ConfigError
from cityops.plugins import ENTRY_POINT_GROUP, Loaded, collisions, installed_plugins, load_plugins
from cityops.types import AgentPlugin

__all__ = ["AgentNames", "check_plugin", "load_plugin_from_path", "new_agent", "plugins_to_check"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_SUFFIX = ".tmpl"


@dataclass(frozen=True)
class AgentNames:
    """Every name a scaffolded plugin derives from its NAME (e.g. ``bike-docks``)."""

    name: str  # plugin, agent and manifest name: bike-docks
    dist: str  # distribution: cityops-bike-docks
    module: str  # import package: cityops_bike_docks
    topic: str  # Kafka topic: bike-docks.readings
    kpi: str  # InfluxDB measurement: bike_docks_readings
    kind: str  # rule kind: bike_docks_high
    alert: str  # alertname: BikeDocksHigh
    cls: str  # class-name stem: BikeDocks
    title: str  # Bike docks

    @classmethod
    def of(cls, name: str) -> "AgentNames":
        """Names from NAME: lower-case words of letters and digits joined by '-' (at most 40 characters).

        Raises ConfigError naming NAME otherwise.
        """
        if not _NAME.match(name) or len(name) > 40 or name.startswith("cityops") or name == "builtin":
            raise ConfigError(f"agent new: NAME {name!r} must be lower-case words of letters and digits joined by "
                              "'-', at most 40 characters, e.g. bike-docks (not 'builtin', not starting with cityops)")
        snake = name.replace("-", "_")
        camel = "".join(w.capitalize() for w in name.split("-"))
        return cls(name=name, dist=f"cityops-{name}", module=f"cityops_{snake}", topic=f"{name}.readings",
                   kpi=f"{snake}_readings", kind=f"{snake}_high", alert=f"{camel}High", cls=camel,
                   title=name.replace("-", " ").capitalize())

    def render(self, text: str) -> str:
        for token, value in (("__DIST__", self.dist), ("__MODULE__", self.module), ("__TOPIC__", self.topic),
                             ("__KPI__", self.kpi), ("__KIND__", self.kind), ("__ALERT__", self.alert),
                             ("__CLASS__", self.cls), ("__TITLE__", self.title), ("__NAME__", self.name)):
            text = text.replace(token, value)
        return text


def _template() -> Traversable:
    return files("cityops").joinpath("templates", "agent")


def _walk(node: Traversable, rel: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Traversable]]:
    out = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                out += _walk(child, (*rel, child.name))
        elif child.name.endswith(_SUFFIX):
            out.append(((*rel, child.name[: -len(_SUFFIX)]), child))
    return out


def new_agent(name: str, directory: Path | str = ".") -> Path:
    """Write the plugin package ``cityops-<name>`` into ``directory``; returns its folder.

    Raises ConfigError naming NAME (not a valid name) or the folder (it exists already).
    """
    names = AgentNames.of(name)
    taken = _taken(names)
    if taken:
        raise ConfigError(f"agent new: NAME {name!r} is taken: {taken}; choose another NAME")
    root = Path(directory)
    # Any existing non-folder on the way (the folder itself or a parent) makes mkdir fail: say so in one line.
    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"--dir {directory}: not a directory" if part == root
                                  else f"--dir {directory}: {part} is not a directory")
            break
    target = root / names.dist
    if target.exists():
        raise ConfigError(f"agent new: {target} exists already; choose another NAME or --dir")
    files_ = _walk(_template())
    if not files_:
        raise ConfigError(f"agent new: the template {_template()} is missing from this install: reinstall cityops")
    try:
        for rel, source in files_:
            path = target.joinpath(*(names.render(part) for part in rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(names.render(source.read_text(encoding="utf-8")), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--dir {directory}: cannot write {target}: {exc.strerror or exc}") from None
    return target


def _taken(names: AgentNames) -> str:
    """What a new plugin of ``names`` would collide with ("" = nothing): a built-in agent (its manifest's
    agent name, stream topic, KPI measurement, rule kind or alertname), or an installed plugin (entry point
    name, distribution, import package, or one of its names as above). A collision makes the generated
    package fail `cityops agent test` or shadow the installed one, so `agent new` refuses it up front."""
    from importlib import metadata
    from importlib.util import find_spec

    from cityops.builtin import builtin_plugin

    def normal(dist: str) -> str:  # PEP 503: cityops_parking, cityops.parking and cityops-parking are one
        return re.sub(r"[-_.]+", "-", dist).lower()

    found: list[str] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        where = f"installed plugin {ep.name} = {ep.value}" + (f" ({dist.name})" if dist is not None else "")
        if ep.name in (names.name, names.dist, names.module):
            found.append(f"{where} has entry point name {ep.name!r}")
        elif dist is not None and normal(dist.name) == names.dist:
            found.append(f"{where} is distribution {dist.name!r}")
    if not found and find_spec(names.module) is not None:
        found.append(f"import package {names.module!r} is installed already")
    plugins: list[Loaded] = [Loaded(builtin_plugin(), "built-in")]
    try:
        plugins += installed_plugins()
    except ConfigError:
        pass  # a broken installed plugin is its own problem; its entry point names were checked above
    for ld in plugins:
        p = ld.plugin
        who = "built-in agents" if ld.builtin else ld.label()[len("plugin "):] + " plugin"
        agents = {f.stem for f in p.manifests.glob("*.y*ml")} if isinstance(p.manifests, Path) else set()
        alerts = set()
        if isinstance(p.manifests, Path):
            for f in p.manifests.glob("*.y*ml"):
                alerts |= set(re.findall(r"^\s*-?\s*alert:\s*([A-Za-z_][A-Za-z0-9_]*)", f.read_text(encoding="utf-8"),
                                         re.MULTILINE))
        for what, mine, theirs in (
                ("agent", names.name, agents | ({p.name} if not ld.builtin else set())),
                ("stream topic", names.topic, set(p.topics)),
                ("KPI measurement", names.kpi, {k.measurement for k in p.kpis}),
                ("rule kind", names.kind, set(p.rule_kinds) | set(p.stream_rule_kinds)),
                ("alertname", names.alert, alerts)):
            if mine in theirs:
                found.append(f"{what} {mine!r} belongs to the {who}")
    return "; ".join(dict.fromkeys(found))


# ------------------------------------------------------------------------------------------------ agent test
def load_plugin_from_path(path: Path | str) -> Loaded:
    """The plugin of a package source folder (its pyproject.toml's entry point in ``cityops.agents``), imported
    from ``<path>/src`` (or ``<path>``). Raises ConfigError naming the folder or the entry point."""
    root = Path(path)
    pyproject = root / "pyproject.toml"
    try:
        meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"agent test: {pyproject}: cannot read: {exc}") from None
    eps = meta.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    if len(eps) != 1:
        raise ConfigError(f"agent test: {pyproject}: [project.entry-points.\"{ENTRY_POINT_GROUP}\"] must name one "
                          f"plugin, found {len(eps)}")
    [(ep_name, value)] = eps.items()
    origin = f"entry point {ep_name} = {value} ({root})"
    src = root / "src" if (root / "src").is_dir() else root
    sys.path.insert(0, str(src))
    module_name, _, attr = value.partition(":")
    try:
        obj: Any = import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        if not isinstance(obj, AgentPlugin) and callable(obj):
            obj = obj()
    except Exception as exc:  # whatever the plugin's import raises is the problem to report
        raise ConfigError(f"plugin {origin}: import failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, AgentPlugin):
        raise ConfigError(f"plugin {origin}: names a {type(obj).__name__}, not a cityops.types.AgentPlugin")
    return Loaded(obj, origin)


def plugins_to_check(path: str | None, plugin: str | None) -> tuple[list[Loaded], list[Loaded]]:
    """(plugins to check, the others they must not collide with): a package folder, an installed plugin by
    name, or (neither) every installed plugin. The others: the built-in agents and the installed plugins of
    other names. Raises ConfigError."""
    from cityops.builtin import builtin_plugin

    builtin = Loaded(builtin_plugin(), "built-in")
    installed = installed_plugins()
    if path is not None:
        targets = [load_plugin_from_path(path)]
    elif plugin is not None:
        targets = [ld for ld in installed if ld.plugin.name == plugin]
        if not targets:
            raise ConfigError(f"agent test: --plugin {plugin}: no installed plugin of that name (installed: "
                              f"{', '.join(ld.plugin.name for ld in installed) or 'none'}; entry point group "
                              f"{ENTRY_POINT_GROUP})")
    else:
        targets = installed
        if not targets:
            raise ConfigError(f"agent test: no plugin installed (entry point group {ENTRY_POINT_GROUP}); give PATH "
                              "or --plugin NAME")
    names = {ld.plugin.name for ld in targets}
    return targets, [builtin, *(ld for ld in installed if ld.plugin.name not in names)]


def _settings(tmp: Path) -> Any:
    from cityops.settings import load_settings

    # Placeholders: building a stream needs settings, and nothing here connects anywhere.
    return load_settings({"CITYOPS_KAFKA_BOOTSTRAP": "agent-test.invalid:9092",
                          "CITYOPS_INFLUX_URL": "http://agent-test.invalid:8086",
                          "CITYOPS_PSEUDONYM_KEY": "agent-test-pseudonym-key", "CITYOPS_DATA_DIR": str(tmp)})


def check_plugin(loaded: Loaded, others: Sequence[Loaded]) -> list[str]:
    """Every problem of ``loaded`` against ``others`` (the built-in agents first), one message each; [] = fine."""
    import tempfile

    p = loaded.plugin
    label = loaded.label()
    problems = [m for m in collisions([*others, loaded]) if m.startswith(label)]
    all_kinds: dict[str, Any] = {}
    for ld in [*others, loaded]:
        all_kinds.update(ld.plugin.rule_kinds)
    for kind, cls_ in p.rule_kinds.items():
        if not cls_.kind:
            cls_.kind = kind  # as the loader does
    kind_names = set(all_kinds) | {k for ld in [*others, loaded] for k in ld.plugin.stream_rule_kinds}
    known_topics = {t for ld in [*others, loaded] for t in ld.plugin.topics}
    with tempfile.TemporaryDirectory(prefix="cityops-agent-test-") as tmp:
        settings = _settings(Path(tmp))
        specs = _check_manifests(loaded, others, kind_names, known_topics, settings, problems)
        _check_contracts(loaded, settings, specs, problems)
    _check_rules(loaded, specs, all_kinds, problems)
    _check_dashboards(loaded, others, problems)
    return problems


def _folder(loaded: Loaded, key: str, problems: list[str]) -> Path | None:
    folder = getattr(loaded.plugin, key)
    if folder is None:
        return None
    if not isinstance(folder, Path):
        problems.append(f"{loaded.label()}: {key} {folder!r} is not a folder on disk")
        return None
    return folder


def _check_contracts(loaded: Loaded, settings: Any, specs: dict[str, Any], problems: list[str]) -> None:
    import jsonschema_rs

    from cityops.engine.context import Decoded
    from cityops.engine.pipeline import Engine
    from cityops.engine.state import StateStore
    from cityops.plugins import PluginSet
    from cityops.streams.city_streams import Pseudonymizer
    from cityops.types import StreamSetup

    label = loaded.label()
    folder = _folder(loaded, "contracts", problems)
    if loaded.plugin.streams and folder is None:
        problems.append(f"{label}: contracts: unset, but the plugin has streams {', '.join(loaded.plugin.topics)}")
        return
    try:
        streams = PluginSet([loaded]).build_streams(StreamSetup(settings, Pseudonymizer(b"agent-test-key"),
                                                                specs))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return
    for factory, stream in zip(loaded.plugin.streams, streams):
        topic = factory.topic
        where = f"{label}: contract {topic}"
        schema_path, samples_path = folder / topic / "schema.json", folder / topic / "samples.jsonl"  # type: ignore[operator]
        try:
            validator = jsonschema_rs.validator_for(json.loads(schema_path.read_text(encoding="utf-8")),
                                                    validate_formats=True)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: {schema_path}: not a readable JSON Schema: {exc}")
            continue
        try:
            lines = [(n, line) for n, line in enumerate(samples_path.read_text(encoding="utf-8").splitlines(), 1)
                     if line.strip()]
        except OSError as exc:
            problems.append(f"{where}: {samples_path}: cannot read: {exc}")
            continue
        if not lines:
            problems.append(f"{where}: {samples_path}: no samples")
        engine = Engine(StateStore(None), [stream], now=lambda: 4e9)
        for offset, (n, line) in enumerate(lines):
            at = f"{where}: samples.jsonl:{n}"
            try:
                sample = json.loads(line)
            except ValueError as exc:
                problems.append(f"{at}: not JSON: {exc}")
                continue
            errors = [f"{e.message} at {'/'.join(str(x) for x in e.instance_path) or '/'}"
                      for e in validator.iter_errors(sample)]
            if errors:
                problems.append(f"{at}: breaks the schema: {'; '.join(errors)}")
            for result in stream.decode(line.encode()):
                if not isinstance(result, Decoded):
                    problems.append(f"{at}: the stream's decoder rejects it: {result.reason}")
            engine.process(topic, 0, offset, line.encode(), 4e9)
        declared = {k.measurement: set(k.doc) for k in factory.kpis}
        for point in engine.checkpoint().points:
            if point.measurement not in declared:
                continue  # stream_quality: the core's
            extra = sorted(set(point.fields) - declared[point.measurement])
            if extra:
                problems.append(f"{where}: KPI {point.measurement} writes fields its Kpi.doc does not declare: "
                                f"{', '.join(extra)}")


def _check_manifests(loaded: Loaded, others: Sequence[Loaded], kind_names: set[str], known_topics: set[str],
                     settings: Any, problems: list[str]) -> dict[str, Any]:
    from cityops.alerts.manifest import ManifestError, load_manifests

    label = loaded.label()
    folder = _folder(loaded, "manifests", problems)
    if folder is None:
        return {}
    defined: dict[str, str] = {}
    for ld in others:
        other = ld.plugin.manifests
        if isinstance(other, Path):
            try:
                load_manifests(other, kinds=None, require_runbook=False, defined=defined)
            except ManifestError:
                pass  # another plugin's own problem: `cityops agent test` of that plugin reports it
    try:
        specs = load_manifests(folder, runbook_base=settings.runbook_base, kinds=kind_names,
                               runbook_url=loaded.plugin.runbook_url or None, defined=defined)
    except ManifestError as exc:
        problems.append(f"{label}: manifests ({folder}): {exc}")
        return {}
    if not specs:
        problems.append(f"{label}: manifests ({folder}): no *.yml manifest")
    from cityops.alerts.manifest import load_manifest

    for path in sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml")):
        manifest = load_manifest(path, kinds=kind_names)
        for topic in manifest.consumes:
            if topic not in known_topics:
                problems.append(f"{label}: manifests ({folder}): {path.name}: consumes: {topic!r} is no stream of "
                                "this plugin, the built-in agents or an installed plugin")
    return specs


def _check_rules(loaded: Loaded, specs: dict[str, Any], kinds: dict[str, Any], problems: list[str]) -> None:
    from cityops.alerts.kinds import build

    for spec in specs.values():
        if spec.kind in kinds:
            try:
                build(spec, kinds)
            except ValueError as exc:
                where = "" if spec.source else f" {spec.agent}.yml:"  # a manifest's spec names its file
                problems.append(f"{loaded.label()}: manifests:{where} {exc}")


def _check_dashboards(loaded: Loaded, others: Sequence[Loaded], problems: list[str]) -> None:
    from cityops import dashboards
    from cityops.catalogue import of_kpi

    folder = _folder(loaded, "dashboards", problems)
    if folder is None:
        return
    catalogue = dict(dashboards.MEASUREMENTS)
    for ld in [*others, loaded]:
        for kpi in ld.plugin.kpis:
            catalogue.setdefault(kpi.measurement, of_kpi(kpi))
    seen: set[str] = set()
    for ld in others:
        if isinstance(ld.plugin.dashboards, Path):
            seen |= {str(b.get("uid")) for b in dashboards.load_dashboards(ld.plugin.dashboards)}
    try:
        boards = dashboards.load_dashboards(folder)
    except ValueError as exc:
        problems.append(f"{loaded.label()}: dashboards: {exc}")
        return
    for board in boards:
        for problem in dashboards.validate(board, seen_uids=seen, measurements=catalogue):
            problems.append(f"{loaded.label()}: dashboards: {problem}")


def check(path: str | None = None, plugin: str | None = None) -> tuple[list[str], list[str]]:
    """(lines for stdout, problems) of `cityops agent test`."""
    load_plugins.cache_clear()
    targets, others = plugins_to_check(path, plugin)
    lines, problems = [], []
    for loaded in targets:
        found = check_plugin(loaded, others)
        problems += found
        p = loaded.plugin
        lines.append(f"{loaded.label()}: {'OK' if not found else f'{len(found)} problem(s)'} (streams "
                     f"{', '.join(p.topics) or 'none'}; KPIs {', '.join(k.measurement for k in p.kpis) or 'none'}; "
                     f"rule kinds {', '.join(sorted(p.rule_kinds)) or 'none'})")
    return lines, problems
