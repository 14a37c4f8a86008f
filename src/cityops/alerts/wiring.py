"""Assemble alerting for the worker: manifests → rule instances + lifecycle, and the source registry gate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cityops.alerts.kinds import ENGINE_START, KINDS, SOURCES, build
from cityops.alerts.lifecycle import AlertEngine
from cityops.alerts.manifest import load_manifests
from cityops.alerts.sources import SourceRegistry
from cityops.engine.context import Decoded
from cityops.engine.state import StateStore
from cityops.errors import ConfigError
from cityops.food.stream import RULE_KINDS as FOOD_RULE_KINDS
from cityops.streams import jsontext

log = logging.getLogger("cityops.alerts")

REPO_ROOT = Path(__file__).resolve().parents[3]
# Rule kinds evaluated by stream code itself (the food pipeline) rather than by a registered kind: the
# stream declares them (kind -> one-shot); the rules' names and thresholds come from the manifests.
STREAM_KINDS = FOOD_RULE_KINDS


def default_rules_dir() -> Path | None:
    d = REPO_ROOT / "agents"
    return d if d.is_dir() else None


def default_source_registry() -> Path | None:
    p = REPO_ROOT / "streams" / "sources.json"
    return p if p.is_file() else None


class RegistryGate:
    """Engine hook: events from unknown sources, or with a bad signature, are dead-lettered uncounted."""

    def __init__(self, registry: SourceRegistry) -> None:
        self.registry = registry
        # Per stream: registered source -> whether it must sign. One lookup decides most events.
        self._sources: dict[str, dict[str, bool]] = {}
        for info in registry.sources.values():
            self._sources.setdefault(info.stream, {})[info.source] = info.must_sign
        self.streams = set(self._sources)
        self._parsed: tuple[bytes | None, Any] = (None, None)  # the last message parsed for its signatures

    def check(self, topic: str, ev: Decoded, raw: bytes) -> tuple[str, str] | None:
        sources = self._sources.get(topic)
        if sources is None:  # no registry for this stream (e.g. EPCIS partners): not gated
            return None
        must_sign = sources.get(ev.source)
        if must_sign is None:
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


def _path_setting(value: Path | None, default: Path | None) -> Path | None:
    """Unset → the repository default; "none"/"off" → disabled."""
    if value is None:
        return default
    return None if str(value).strip().lower() in OFF else value


def build_alerting(settings: Any, store: StateStore) -> tuple[AlertEngine | None, list[Any], Any]:
    """(alert engine, rule instances, registry gate) from CITYOPS_RULES_DIR and CITYOPS_SOURCE_REGISTRY.

    Either setting may be "none" to turn that part off.
    """
    rules_dir = _path_setting(settings.rules_dir, default_rules_dir())
    registry_path = _path_setting(settings.source_registry, default_source_registry())
    registry = None
    if registry_path is not None:
        try:
            registry = SourceRegistry.load(registry_path)
        except ValueError as exc:
            raise ConfigError(f"CITYOPS_SOURCE_REGISTRY: {exc}") from exc
    if rules_dir is None:
        log.warning("no rules directory (CITYOPS_RULES_DIR): alerting is off")
        return None, [], RegistryGate(registry) if registry else None
    specs = load_manifests(Path(rules_dir), runbook_base=settings.runbook_base,
                           kinds=set(KINDS) | set(STREAM_KINDS))
    rules = [build(spec) for spec in specs.values() if spec.kind in KINDS]
    one_shot = {r.spec.name for r in rules if getattr(r, "one_shot", False)}
    one_shot |= {s.name for s in specs.values() if STREAM_KINDS.get(s.kind)}
    # The outputs that each read the outbox with their own cursor (cityops.runtime.Runtime.alert_sinks).
    sinks = ["kafka", "influx"] + (["alertmanager"] if settings.alertmanager_url else [])
    engine = AlertEngine(store, specs, one_shot=one_shot, sinks=sinks, generator_url=f"http://{settings.web_host}:"
                         f"{settings.web_port}/healthz")
    log.info("alerting rules=%d kinds=%s registry=%s sinks=%s", len(specs),
             ",".join(sorted({s.kind for s in specs.values()})), registry_path, ",".join(sinks))
    return engine, rules, RegistryGate(registry) if registry else None


def context_extras(store: StateStore, gate: Any, now_ts: float | None) -> dict[str, Any]:
    """ctx.extra for the rule kinds: the registry, and when the engine first started (event time)."""
    extra: dict[str, Any] = {}
    if gate is not None:
        extra[SOURCES] = gate.registry
    start = store.meta.get("engine_start_ts")
    if start is not None:
        extra[ENGINE_START] = start
    return extra
