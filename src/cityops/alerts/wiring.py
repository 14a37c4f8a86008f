"""Assemble alerting for the worker: manifests → rule instances + lifecycle, and the source registry gate."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cityops import resources
from cityops.alerts.kinds import build
from cityops.alerts.lifecycle import AlertEngine
from cityops.alerts.manifest import ManifestError, load_manifests
from cityops.alerts.sources import SourceRegistry
from cityops.engine.context import Decoded
from cityops.engine.state import StateStore
from cityops.errors import ConfigError, RulesDirError
from cityops.food.stream import RULE_KINDS as FOOD_RULE_KINDS
from cityops.streams import jsontext

log = logging.getLogger("cityops.alerts")

# Rule kinds evaluated by stream code itself (the food pipeline) rather than by a registered kind: the
# stream declares them (kind -> one-shot); the rules' names and thresholds come from the manifests.
STREAM_KINDS = FOOD_RULE_KINDS


def default_rules_dir() -> Path:
    """The reference city's manifests shipped in the package (the same files as the repository's agents/)."""
    return resources.rules_dir()


# CITYOPS_UNKNOWN_SOURCES: what happens to an event from a source the registry does not list.
ENFORCE, OBSERVE = "enforce", "observe"
# The verdict for an unlisted source in observe mode: the engine raises UntrustedSource and processes it.
OBSERVED = "observed"


class RegistryGate:
    """Engine hook: the source registry's verdict on each event of a stream the registry covers.

    ``mode``: "enforce" (an unlisted source's events are dead-lettered, outcome "untrusted") or
    "observe" (they are processed; verdict "observed", counted in ``unlisted`` per (stream, source) and
    by ``on_unlisted``). A registered source that must sign and fails its signature is dead-lettered in
    both modes: observe is for onboarding devices the registry does not know yet, not for forgeries.
    """

    def __init__(self, registry: SourceRegistry, *, mode: str = ENFORCE, path: Path | None = None,
                 on_unlisted: Callable[[str], None] | None = None) -> None:
        if mode not in (ENFORCE, OBSERVE):
            raise ConfigError(f"CITYOPS_UNKNOWN_SOURCES: {mode!r} is not enforce or observe")
        self.registry = registry
        self.mode = mode
        self.path = path
        # Per stream: registered source -> whether it must sign. One lookup decides most events.
        self._sources: dict[str, dict[str, bool]] = {}
        for info in registry.sources.values():
            self._sources.setdefault(info.stream, {})[info.source] = info.must_sign
        self.streams = set(self._sources)
        self._parsed: tuple[bytes | None, Any] = (None, None)  # the last message parsed for its signatures
        self.unlisted: dict[tuple[str, str], int] = {}  # (stream, source) -> events let through, since start
        self.on_unlisted = on_unlisted

    def status(self) -> dict[str, Any]:
        """For /healthz: the registry file, the mode, and the events of unlisted sources let through."""
        per_stream: dict[str, int] = {}
        for (stream, _source), n in self.unlisted.items():
            per_stream[stream] = per_stream.get(stream, 0) + n
        return {"path": str(self.path) if self.path else None, "unknown_sources": self.mode,
                "gated_streams": sorted(self.streams),
                "sources": len(self.registry.sources), "unlisted_sources": len(self.unlisted),
                "unlisted_events": per_stream}

    def check(self, topic: str, ev: Decoded, raw: bytes) -> tuple[str, str] | None:
        sources = self._sources.get(topic)
        if sources is None:  # no registry for this stream (e.g. EPCIS partners): not gated
            return None
        must_sign = sources.get(ev.source)
        if must_sign is None:
            if self.mode == OBSERVE:
                key = (topic, str(ev.source))
                self.unlisted[key] = self.unlisted.get(key, 0) + 1
                if self.on_unlisted is not None:
                    self.on_unlisted(topic)
                return OBSERVED, f"unlisted source: {ev.source!r} is not registered for {topic} (observe mode)"
            return "untrusted", f"untrusted source: {ev.source!r} is not registered for {topic}"
        if not must_sign:
            return None
        reg = self.registry
        # The signature covers the event as sent, so verify against the original JSON element, as the decoder
        # parsed it (numbers beyond a double included); a batch is parsed once for all its signed events.
        last, doc = self._parsed
        if last is not raw:
            doc, _lenient = jsontext.loads(raw)
            self._parsed = (raw, doc)
        element = doc[ev.index] if isinstance(doc, list) else doc
        sig = element.get("sig") if isinstance(element, dict) else None
        body = {k: v for k, v in element.items() if k != "sig"}
        if sig is None:
            return "bad_signature", f"bad signature: source {ev.source!r} must sign, event has no sig"
        if not reg.verify(ev.source, body, sig):
            return "bad_signature", f"bad signature: HMAC-SHA256 of source {ev.source!r} does not verify"
        return None


OFF = {"none", "off", "-"}
# CITYOPS_SOURCE_REGISTRY=simulator: the registry of the simulated reference city, shipped in the package.
SIMULATOR = "simulator"


def resolve_rules_dir(value: Path | str | None) -> Path | None:
    """CITYOPS_RULES_DIR → the manifest folder: unset = the package's (the repository's agents/); "none" = off."""
    if value is None or not str(value).strip():
        return default_rules_dir()
    return None if str(value).strip().lower() in OFF else Path(value)


def resolve_source_registry(value: Path | str | None) -> Path | None:
    """CITYOPS_SOURCE_REGISTRY → the registry file: unset or "none" = no registry; "simulator" = the
    simulated city's devices (the package's copy of streams/sources.json); otherwise a path."""
    if value is None or not str(value).strip() or str(value).strip().lower() in OFF:
        return None
    if str(value).strip().lower() == SIMULATOR:
        return resources.simulator_registry()
    return Path(value)


def load_registry_gate(settings: Any, on_unlisted: Callable[[str], None] | None = None) -> RegistryGate | None:
    """The registry gate from CITYOPS_SOURCE_REGISTRY and CITYOPS_UNKNOWN_SOURCES; None without a registry.

    Raises ConfigError naming the setting when the file is unreadable or invalid.
    """
    path = resolve_source_registry(settings.source_registry)
    if path is None:
        return None
    try:
        registry = SourceRegistry.load(path)
    except ValueError as exc:
        raise ConfigError(f"CITYOPS_SOURCE_REGISTRY: {exc}") from exc
    return RegistryGate(registry, mode=getattr(settings, "unknown_sources", ENFORCE), path=path,
                        on_unlisted=on_unlisted)


def load_rules(settings: Any) -> tuple[Path | None, dict[str, Any]]:
    """(manifest folder, rule specs by alertname) from CITYOPS_RULES_DIR and the plugins' manifest folders
    (``cityops.plugins``, CITYOPS_PLUGINS); (None, {}) when rules are off (CITYOPS_RULES_DIR=none).

    Alertnames are unique across all folders; rule kinds are every loaded plugin's, and so are the stream
    topics a manifest's ``consumes`` may name. A manifest in
    CITYOPS_RULES_DIR whose ``agent`` is also a plugin's replaces the plugin's manifest: a city tunes a
    plugin's rules (thresholds, severities, routing) without changing the plugin, and ``cityops backtest
    --agents DIR`` tries such a change. Raises ConfigError naming CITYOPS_RULES_DIR, or the plugin, and the
    file when a manifest or runbook is wrong.
    """
    from cityops.plugins import plugin_set

    rules_dir = resolve_rules_dir(settings.rules_dir)
    if rules_dir is None:
        return None, {}
    plugins = plugin_set(settings)
    kinds = plugins.kind_names
    # What a manifest consumes must be a stream the worker reads (as `cityops agent test` checks a plugin's).
    topics = {f.topic for _ld, f in plugins.factories}
    try:
        specs = load_manifests(rules_dir, runbook_base=settings.runbook_base, kinds=kinds, defined=(defined := {}),
                               topics=topics)
    except ManifestError as exc:
        raise RulesDirError(rules_dir, str(exc)) from exc
    # Only a plugin's own agents can be replaced: one named like a built-in agent stays a collision.
    local_agents = {key[len("agent:"):] for key in defined if key.startswith("agent:")}
    local_agents -= _agents_in(default_rules_dir())
    for loaded, folder, url in plugins.manifest_folders():
        replaced = sorted(local_agents & _agents_in(folder))
        if replaced:
            log.info("manifests of CITYOPS_RULES_DIR (%s) replace those of %s for agents %s", rules_dir,
                     loaded.label(), ",".join(replaced))
        try:
            specs.update(load_manifests(folder, runbook_base=settings.runbook_base, kinds=kinds, runbook_url=url,
                                        defined=defined, overridden=local_agents, topics=topics))
        except ManifestError as exc:
            raise ConfigError(f"{loaded.label()} manifests ({folder}): {exc}") from exc
    return rules_dir, specs


def build_rules(rules_dir: Path, specs: dict[str, Any], kinds: Mapping[str, Any] | None = None) -> list[Any]:
    """The rule instances of ``specs`` (kinds with code: ``kinds``, default every loaded plugin's rule kinds);
    ConfigError naming CITYOPS_RULES_DIR (or the rule's plugin) on bad params."""
    if kinds is None:
        from cityops.plugins import load_plugins

        kinds = load_plugins().rule_kinds
    out = []
    for spec in specs.values():
        if spec.kind not in kinds:
            continue
        try:
            out.append(build(spec, kinds))
        except ValueError as exc:
            where = _rule_folder(spec, rules_dir)
            if where is None:
                raise RulesDirError(rules_dir, str(exc)) from exc
            raise ConfigError(f"{where}: {exc}") from exc
    return out


def _agents_in(folder: Path) -> set[str]:
    """The ``agent`` of each manifest in ``folder`` (files that cannot be read are left to the loader)."""
    out = set()
    for path in sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("agent"), str):
            out.add(doc["agent"])
    return out


def _rule_folder(spec: Any, rules_dir: Path) -> str | None:
    """How an error names where a rule is defined: the plugin whose manifest has it, or None for the rules
    folder (CITYOPS_RULES_DIR: ``RulesDirError``)."""
    from cityops.plugins import load_plugins

    if (rules_dir / f"{spec.agent}.yml").is_file() or (rules_dir / f"{spec.agent}.yaml").is_file():
        return None
    for loaded, folder, _url in load_plugins().manifest_folders():
        if (folder / f"{spec.agent}.yml").is_file() or (folder / f"{spec.agent}.yaml").is_file():
            return f"{loaded.label()} manifests ({folder})"
    return None


def one_shot_rules(rules: list[Any], specs: dict[str, Any], stream_kinds: Mapping[str, bool] | None = None) -> set[str]:
    """Alertnames of the rules that report occurrences only (``RuleKind.one_shot``, or a stream kind's:
    ``stream_kinds``, default every loaded plugin's ``stream_rule_kinds``)."""
    if stream_kinds is None:
        from cityops.plugins import load_plugins

        stream_kinds = load_plugins().stream_rule_kinds
    one_shot = {r.spec.name for r in rules if getattr(r, "one_shot", False)}
    return one_shot | {s.name for s in specs.values() if stream_kinds.get(s.kind)}


def registry_mode(gate: RegistryGate | None, topics: Iterable[str] | None = None) -> str:
    """One phrase for logs and check-config: "off", or "<path> (enforce|observe, N sources)"; with
    ``topics`` (the streams consumed), also which of them the registry gates: a stream is gated once the
    registry lists a source for it; a stream it lists none for accepts any source, and is named here."""
    if gate is None:
        return "off (CITYOPS_SOURCE_REGISTRY unset: events from any source are accepted)"
    text = f"{gate.path} ({gate.mode}, {len(gate.registry.sources)} sources)"
    if topics is not None:
        topics = list(topics)
        gated = [t for t in topics if t in gate.streams]
        open_ = [t for t in topics if t not in gate.streams]
        text += f"; gates {', '.join(gated) or 'no stream'}"
        if open_:
            text += f"; not gated (the registry lists no source for them, any source is accepted): {', '.join(open_)}"
    return text


def build_alerting(settings: Any, store: StateStore,
                   on_unlisted: Callable[[str], None] | None = None) -> tuple[AlertEngine | None, list[Any], Any]:
    """(alert engine, rule instances, registry gate) from CITYOPS_RULES_DIR, CITYOPS_SOURCE_REGISTRY and
    CITYOPS_UNKNOWN_SOURCES.

    CITYOPS_RULES_DIR unset: the manifests shipped in the package; "none": no rules.
    CITYOPS_SOURCE_REGISTRY unset or "none": no registry; "simulator": the simulated city's.
    ``on_unlisted(stream)``: called per event of an unlisted source let through in observe mode.
    """
    gate = load_registry_gate(settings, on_unlisted)
    from cityops.plugins import plugin_set

    log.info("source registry: %s", registry_mode(gate, [f.topic for _, f in plugin_set(settings).factories]))
    rules_dir, specs = load_rules(settings)
    if rules_dir is None:
        log.warning("no rules directory (CITYOPS_RULES_DIR=none): alerting is off")
        return None, [], gate
    from cityops.plugins import plugin_set

    plugins = plugin_set(settings)
    rules = build_rules(rules_dir, specs, plugins.rule_kinds)
    one_shot = one_shot_rules(rules, specs, plugins.stream_rule_kinds)
    # The outputs that each read the outbox with their own cursor (cityops.runtime.Runtime.alert_sinks).
    sinks = ["kafka", "influx"] + (["alertmanager"] if settings.alertmanager_url else [])
    engine = AlertEngine(store, specs, one_shot=one_shot, sinks=sinks, generator_url=f"http://{settings.web_host}:"
                         f"{settings.web_port}/healthz")
    # The manifests may differ from the rules the restored state was committed with (changed while the worker
    # was down, or a reload the last commit did not reach): end, reset and relabel as a reload would.
    from cityops.alerts.reload import reconcile, table_shapes

    changes = reconcile(engine, store, engine.restored_rules, specs, one_shot=one_shot, shapes=table_shapes(rules))
    if changes.changed:
        log.warning("rules differ from those committed with the restored state: %s", changes.line())
    log.info("alerting rules=%d rules_dir=%s kinds=%s sinks=%s", len(specs), rules_dir,
             ",".join(sorted({s.kind for s in specs.values()})), ",".join(sinks))
    return engine, rules, gate

