"""Load the agent plugins: the built-in agents and the installed packages' entry points (group ``cityops.agents``).

Each entry point names an ``AgentPlugin`` (``cityops.types``) or a zero-argument callable returning one, e.g.
in a plugin's pyproject.toml::

    [project.entry-points."cityops.agents"]
    parking = "cityops_parking:PLUGIN"

``load_plugins(selection)`` returns a ``PluginSet``: the built-in plugin (``cityops.builtin``) first, then the
selected installed plugins by name. Everything that stops the worker names the entry point and the plugin,
as a ``ConfigError`` (exit 2): an entry point that does not import, that is not an ``AgentPlugin``, two
plugins of one name, and a stream topic, KPI measurement or rule kind that another plugin (or the core)
already has. Alertnames are checked across all manifests when they are loaded
(``cityops.alerts.wiring.load_rules``).

``selection`` is the setting ``CITYOPS_PLUGINS``: unset = every installed plugin; ``none`` = the built-in
agents alone; else a comma list of plugin names, each of which must be installed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cityops.errors import ConfigError
from cityops.types import AgentPlugin, Stream, StreamFactory, StreamSetup

if TYPE_CHECKING:
    from cityops.alerts.kinds import RuleKind
    from cityops.engine.windows import Kpi

__all__ = [
    "ENTRY_POINT_GROUP", "RESERVED_MEASUREMENTS", "RESERVED_TOPICS", "Loaded", "PluginSet", "collisions",
    "installed_plugins", "load_plugins", "plugin_from_entry_point",
]

ENTRY_POINT_GROUP = "cityops.agents"
# The core's own topics and measurements: no plugin may declare them.
RESERVED_TOPICS = {"cityops.dead-letter": "the core (dead letters)", "cityops.alerts": "the core (alert transitions)",
                   "cityops.state": "the core (engine state)"}
RESERVED_MEASUREMENTS = {"stream_quality": "the core (stream quality)", "alerts": "the core (alert transitions)"}
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_OFF = {"none", "off", "-"}


@dataclass(frozen=True)
class Loaded:
    """A plugin and where it came from: ``origin`` is "built-in" or "entry point NAME = VALUE (dist VERSION)"."""

    plugin: AgentPlugin
    origin: str

    @property
    def builtin(self) -> bool:
        return self.origin == "built-in"

    def label(self) -> str:
        """``plugin 'NAME' (ORIGIN)``: how messages name it."""
        return f"plugin {self.plugin.name!r} ({self.origin})"


def _origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" ({dist.name} {dist.version})" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{where}"


def plugin_from_entry_point(ep: metadata.EntryPoint) -> Loaded:
    """Import one entry point: its ``AgentPlugin`` (called first if it is a zero-argument callable).

    Raises ConfigError naming the entry point when it does not import or does not give an AgentPlugin.
    """
    origin = _origin(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # whatever the plugin's import raises, start-up stops naming it
        raise ConfigError(f"plugin {origin} in group {ENTRY_POINT_GROUP}: import failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, AgentPlugin) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(f"plugin {origin} in group {ENTRY_POINT_GROUP}: calling {ep.value}() failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, AgentPlugin):
        raise ConfigError(f"plugin {origin} in group {ENTRY_POINT_GROUP}: names a {type(obj).__name__}, not a "
                          "cityops.types.AgentPlugin (or a zero-argument callable returning one)")
    return Loaded(obj, origin)


def _selection(value: str | None) -> set[str] | None:
    """CITYOPS_PLUGINS -> the names to load (None = all installed, empty = none)."""
    if value is None or not value.strip():
        return None
    if value.strip().lower() in _OFF:
        return set()
    return {part.strip() for part in value.split(",") if part.strip()}


def installed_plugins(selection: str | None = None) -> list[Loaded]:
    """The installed plugins (entry points of ``cityops.agents``) ``selection`` (CITYOPS_PLUGINS) picks, by name.

    Raises ConfigError naming the entry point (see ``plugin_from_entry_point``), or CITYOPS_PLUGINS when it
    names a plugin that is not installed.
    """
    wanted = _selection(selection)
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value))
    seen_eps: set[tuple[str, str]] = set()
    out: list[Loaded] = []
    for ep in eps:
        if (ep.name, ep.value) in seen_eps:  # the same distribution found twice on sys.path
            continue
        seen_eps.add((ep.name, ep.value))
        if wanted is not None and ep.name not in wanted:
            continue
        out.append(plugin_from_entry_point(ep))
    if wanted:
        names = {ld.plugin.name for ld in out} | {ep.name for ep in eps}
        missing = sorted(wanted - names)
        if missing:
            raise ConfigError(f"CITYOPS_PLUGINS: {', '.join(missing)} not installed (installed plugins: "
                              f"{', '.join(sorted({ep.name for ep in eps})) or 'none'}; entry point group "
                              f"{ENTRY_POINT_GROUP})")
    return out


def _kind_names(ld: Loaded) -> list[str]:
    return list(ld.plugin.rule_kinds) + list(ld.plugin.stream_rule_kinds)


def collisions(loaded: Sequence[Loaded]) -> list[str]:
    """One message per name two plugins (or a plugin and the core) both claim, in load order.

    Checked: plugin names, stream topics (also against the core's topics), KPI measurements (also against
    ``stream_quality`` and ``alerts``), rule kind names (and their spelling), a rule kind class whose
    ``kind`` names another kind, and task names (a task's streams are one plugin's: its state is one engine's).
    """
    problems: list[str] = []
    names: dict[str, Loaded] = {}
    tasks: dict[str, str] = {}
    topics: dict[str, str] = dict(RESERVED_TOPICS)
    measurements: dict[str, str] = dict(RESERVED_MEASUREMENTS)
    kinds: dict[str, str] = {}
    for ld in loaded:
        p = ld.plugin
        if p.name in names:
            problems.append(f"{ld.label()}: plugin name {p.name!r} is also {names[p.name].label()}")
        names.setdefault(p.name, ld)
        for topic in p.topics:
            if topic in topics:
                problems.append(f"{ld.label()}: stream topic {topic!r} is also a topic of {topics[topic]}")
            topics.setdefault(topic, ld.label())
        for kpi in p.kpis:
            if kpi.measurement in measurements:
                problems.append(f"{ld.label()}: KPI measurement {kpi.measurement!r} is also written by "
                                f"{measurements[kpi.measurement]}")
            measurements.setdefault(kpi.measurement, ld.label())
        for kind in _kind_names(ld):
            if not isinstance(kind, str) or not _KIND.match(kind):
                problems.append(f"{ld.label()}: rule kind {kind!r} must be snake_case ([a-z][a-z0-9_]*)")
            elif kind in kinds:
                problems.append(f"{ld.label()}: rule kind {kind!r} is also a rule kind of {kinds[kind]}")
            kinds.setdefault(kind, ld.label())
        for kind, cls in p.rule_kinds.items():
            if cls.kind and cls.kind != kind:
                problems.append(f"{ld.label()}: rule_kinds[{kind!r}] is {cls.__name__}, the code of rule kind "
                                f"{cls.kind!r}")
        own: set[str] = set()
        for f in p.streams:
            task = task_of(p, f)
            if not isinstance(task, str) or not _TASK.match(task):
                problems.append(f"{ld.label()}: stream {f.topic!r} has task {task!r}: a task name is "
                                "[a-z][a-z0-9_-]* (it names the topics cityops.state.<task> and cityops.leases.<task>)")
            elif task in tasks and task not in own:
                problems.append(f"{ld.label()}: task {task!r} is also a task of {tasks[task]}")
            own.add(task)
            tasks.setdefault(task, ld.label())
    return problems


_TASK = re.compile(r"^[a-z][a-z0-9_-]{0,100}$")


def task_of(plugin: AgentPlugin, factory: StreamFactory) -> str:
    """The task of a plugin's stream: the one it declares, or the plugin's name."""
    return factory.task if factory.task is not None else plugin.name


def _folder(ld: Loaded, key: str) -> Path | None:
    folder = getattr(ld.plugin, key)
    if folder is None:
        return None
    if not isinstance(folder, Path):
        # The readers take paths; importlib.resources gives one for any regular (unzipped) install.
        raise ConfigError(f"{ld.label()}: {key} {folder!r} is not a folder on disk; install the plugin as a "
                          "regular (unzipped) package")
    return folder


class PluginSet:
    """The loaded plugins, built-in first: their streams, KPIs, rule kinds and folders, merged.

    Construct with ``load_plugins``; raises ConfigError listing every collision (``collisions``).
    """

    def __init__(self, loaded: Sequence[Loaded]) -> None:
        problems = collisions(loaded)
        if problems:
            raise ConfigError("; ".join(problems), problems)
        self.loaded: tuple[Loaded, ...] = tuple(loaded)
        for ld in self.loaded:
            for kind, cls in ld.plugin.rule_kinds.items():
                if not cls.kind:
                    cls.kind = kind  # as cityops.alerts.kinds.register does: the state codec is named by it

    def __iter__(self) -> Any:
        return iter(self.loaded)

    @property
    def plugins(self) -> list[AgentPlugin]:
        return [ld.plugin for ld in self.loaded]

    @property
    def third_party(self) -> list[Loaded]:
        """The installed plugins (not the built-in agents)."""
        return [ld for ld in self.loaded if not ld.builtin]

    @property
    def rule_kinds(self) -> dict[str, type[RuleKind]]:
        """Rule kind name -> its class, across all plugins."""
        return {kind: cls for p in self.plugins for kind, cls in p.rule_kinds.items()}

    @property
    def stream_rule_kinds(self) -> dict[str, bool]:
        """Rule kinds streams evaluate themselves -> one-shot, across all plugins."""
        return {kind: one for p in self.plugins for kind, one in p.stream_rule_kinds.items()}

    @property
    def kind_names(self) -> set[str]:
        """Every rule kind a manifest may name."""
        return set(self.rule_kinds) | set(self.stream_rule_kinds)

    @property
    def factories(self) -> list[tuple[Loaded, StreamFactory]]:
        return [(ld, f) for ld in self.loaded for f in ld.plugin.streams]

    @property
    def kpis(self) -> list[Kpi]:
        """Every KPI the plugins' streams declare, in load order."""
        return [k for p in self.plugins for k in p.kpis]

    def owner(self, topic: str) -> Loaded | None:
        """The plugin whose stream reads ``topic``."""
        return next((ld for ld, f in self.factories if f.topic == topic), None)

    def tasks(self) -> dict[str, list[str]]:
        """Task name -> its stream topics, in load order (``StreamFactory.task``; default the plugin's name)."""
        out: dict[str, list[str]] = {}
        for ld, f in self.factories:
            out.setdefault(task_of(ld.plugin, f), []).append(f.topic)
        return out

    def topic_partitions(self, default: int) -> list[tuple[str, int]]:
        """(topic, partitions) of every stream, with ``CITYOPS_TOPIC_PARTITIONS`` = ``default``."""
        return [(f.topic, f.partitions_for(default)) for _, f in self.factories]

    def build_streams(self, setup: StreamSetup, task: str | None = None) -> list[Stream]:
        """Every plugin's streams (those of ``task`` only, if given), built from ``setup``, in load order.

        Raises ConfigError naming the plugin when a factory fails (a ConfigError of its own is kept as it
        is: it names the setting or rule) or builds a stream whose topic or KPIs are not the declared ones.
        """
        out: list[Stream] = []
        for ld, f in self.factories:
            if task is not None and task_of(ld.plugin, f) != task:
                continue
            try:
                stream = f.build(setup)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"{ld.label()}: building the stream of {f.topic!r} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
            declared = sorted(k.measurement for k in f.kpis)
            built = sorted(getattr(stream, "kpis", {}) or {})
            if getattr(stream, "topic", None) != f.topic or built != declared:
                raise ConfigError(f"{ld.label()}: the stream built for {f.topic!r} has topic "
                                  f"{getattr(stream, 'topic', None)!r} and KPIs {built}, not the declared "
                                  f"{f.topic!r} and {declared}")
            out.append(stream)
        return out

    def manifest_folders(self) -> list[tuple[Loaded, Path, str | None]]:
        """(plugin, folder, runbook URL or None) of each installed plugin's manifests (not the built-in's:
        those are ``CITYOPS_RULES_DIR``'s, see ``cityops.alerts.wiring.load_rules``)."""
        out = []
        for ld in self.third_party:
            folder = _folder(ld, "manifests")
            if folder is not None:
                out.append((ld, folder, ld.plugin.runbook_url or None))
        return out

    def contract_folders(self) -> list[tuple[Loaded, Path]]:
        return [(ld, f) for ld in self.loaded if (f := _folder(ld, "contracts")) is not None]

    def dashboard_folders(self) -> list[tuple[Loaded, Path]]:
        return [(ld, f) for ld in self.loaded if (f := _folder(ld, "dashboards")) is not None]


@functools.lru_cache(maxsize=8)
def load_plugins(selection: str | None = None) -> PluginSet:
    """The built-in agents and the installed plugins ``selection`` (``CITYOPS_PLUGINS``) picks; see the module doc.

    Cached per selection (entry points are read once per process; ``load_plugins.cache_clear()`` re-reads).
    """
    from cityops.builtin import builtin_plugin

    loaded = [Loaded(builtin_plugin(), "built-in"), *installed_plugins(selection)]
    return PluginSet(loaded)


def describe_loaded(plugins: PluginSet) -> str:
    """``name (origin), ...`` of the installed plugins loaded, or ``none``: for the worker's start-up log."""
    return ", ".join(f"{ld.plugin.name} ({ld.origin})" for ld in plugins.third_party) or "none"


def plugin_set(settings: Any) -> PluginSet:
    """``load_plugins`` with the settings' ``CITYOPS_PLUGINS`` (settings without it: every installed plugin)."""
    return load_plugins(getattr(settings, "plugins", None))


def describe(plugins: PluginSet | Iterable[Loaded]) -> list[str]:
    """One line per plugin for check-config: name, origin, topics, KPIs and rule kinds."""
    lines = []
    for ld in plugins:
        p = ld.plugin
        kinds = sorted(_kind_names(ld))
        lines.append(f"  {p.name} ({ld.origin}): streams {', '.join(p.topics) or 'none'}; KPIs "
                     f"{', '.join(k.measurement for k in p.kpis) or 'none'}; rule kinds "
                     f"{', '.join(kinds) if len(kinds) <= 6 else f'{len(kinds)}'}")
    return lines


def by_topic(plugins: PluginSet) -> Mapping[str, Loaded]:
    """Stream topic -> the plugin that reads it."""
    return {f.topic: ld for ld, f in plugins.factories}


def catalogue(plugins: PluginSet) -> dict[str, Any]:
    """The InfluxDB measurement catalogue dashboards are checked against: the built-in one
    (``cityops.dashboards.MEASUREMENTS``) and every installed plugin's KPIs (``cityops.catalogue.of_kpi``)."""
    from cityops import dashboards
    from cityops.catalogue import of_kpi

    out: dict[str, Any] = dict(dashboards.MEASUREMENTS)
    for ld in plugins.third_party:
        for kpi in ld.plugin.kpis:
            out[kpi.measurement] = of_kpi(kpi)
    return out


def load_all_dashboards(plugins: PluginSet) -> list[tuple[Loaded, dict[str, Any]]]:
    """(plugin, dashboard) of every plugin's dashboard folder, built-in first; ValueError naming a bad file."""
    from cityops import dashboards

    return [(ld, board) for ld, folder in plugins.dashboard_folders() for board in dashboards.load_dashboards(folder)]
