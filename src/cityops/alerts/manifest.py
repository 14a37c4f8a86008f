"""Load and validate the agent manifests (agents/*.yml) into RuleSpecs: rules are configuration, not code.

Format (documented in agents/README.md)::

    agent: traffic-security            # = file stem; the runbook is agents/traffic-security.md
    description: ...
    consumes: [traffic.card-taps]
    labels: {domain: security, team: transit}
    rules:
      - alert: CardImpossibleTravel    # alertname, unique across all manifests
        kind: impossible_travel        # the code that evaluates it
        severity: critical             # info | warning | critical
        for: 0s                        # condition must hold this long before firing
        resolve_after: 30m             # recovery must hold this long before resolving
        params: {max_speed_kmh: 150, min_km: 1}
        summary: "Card {card} travelled {value:.0f} km/h between readers"
        description: ...

Any mistake raises ``ManifestError`` (a ``ValueError``) naming the file and the key, e.g.
``agents/x.yml: rules[1].severity: 'urgent' is not one of info, warning, critical``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cityops.alerts.spec import RuleSpec
from cityops.errors import ConfigError
from cityops.units import DEFAULT_RUNBOOK_BASE, is_duration_text, parse_duration

__all__ = [
    "DEFAULT_RUNBOOK_BASE",
    "SEVERITIES",
    "AgentManifest",
    "ManifestError",
    "load_agent_manifests",
    "load_manifest",
    "load_manifest_folders",
    "load_manifests",
    "parse_duration",
]

SEVERITIES = ("info", "warning", "critical")

_AGENT_KEYS = {"agent", "description", "consumes", "labels", "rules"}
_RULE_KEYS = {
    "alert", "kind", "severity", "for", "resolve_after", "params", "labels", "summary", "description",
    "flap_window", "flap_max_changes",
}
_ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_AGENT = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_RESERVED_LABELS = {"alertname", "severity"}


class ManifestError(ConfigError, ValueError):
    """An agent manifest is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class AgentManifest:
    """One agents/<agent>.yml: what the agent consumes and the rules it raises."""

    agent: str
    path: Path
    description: str
    consumes: tuple[str, ...]
    labels: dict[str, str]
    rules: tuple[RuleSpec, ...] = field(default_factory=tuple)

    @property
    def runbook(self) -> Path:
        return self.path.with_suffix(".md")


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: its problem and where (``expected ',' or ']', but got '<stream end>' at line
    15, column 3``). PyYAML's own text spans several lines (context, the parser's buffer name, a caret)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def _check_template(where: str, template: str) -> None:
    try:
        for _lit, name, spec, _conv in string.Formatter().parse(template):
            if name is not None and spec:
                list(string.Formatter().parse(spec))  # nested fields; syntax only
    except ValueError as exc:
        raise ManifestError(f"{where}: bad template {template!r}: {exc}") from None


def _labels(where: str, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be a mapping of label name to value, got {type(raw).__name__}")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise ManifestError(f"{where}.{name}: label names must match [A-Za-z_][A-Za-z0-9_]*")
        if name in _RESERVED_LABELS:
            raise ManifestError(f"{where}.{name}: set by the rule itself (alert / severity), not as a label")
        if isinstance(value, (dict, list)) or value is None:
            raise ManifestError(f"{where}.{name}: label values must be scalars, got {value!r}")
        out[name] = str(value)
    return out


def _params(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be a mapping, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise ManifestError(f"{where}.{name}: parameter names must be strings")
        if is_duration_text(value):
            # Durations arrive in rule code as seconds, like for / resolve_after.
            out[name] = parse_duration(value)
        elif isinstance(value, str) and is_duration_text(value.strip().removeprefix("-").strip()):
            raise ManifestError(f"{where}.{name}: duration must be >= 0, got {value!r}")
        else:
            out[name] = value
    return out


def _duration(where: str, raw: Any, default: float) -> float:
    if raw is None:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def load_manifest(
    path: Path,
    *,
    runbook_base: str = DEFAULT_RUNBOOK_BASE,
    kinds: Collection[str] | None = None,
    require_runbook: bool = True,
    runbook_url: str | None = None,
    topics: Collection[str] | None = None,
) -> AgentManifest:
    """Parse and validate one manifest; see the module doc for the format.

    ``runbook_base``: URL prefix of the repository tree; ``runbook_url`` becomes
    ``{runbook_base}/agents/<agent>.md#<alertname lowercased>``.
    ``kinds``: the rule kinds the code knows; None = do not check.
    ``require_runbook``: the file ``<agent>.md`` must exist beside it with a ``## <AlertName>`` heading per rule.
    ``runbook_url``: URL of the manifest's folder (a plugin's); ``runbook_url`` becomes
    ``{runbook_url}/<agent>.md#<alertname lowercased>`` (None = under ``runbook_base`` as above).
    ``topics``: the stream topics of the loaded agents; each of ``consumes`` must be one (None = do not check).
    """
    path = Path(path)
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: not valid YAML: {yaml_problem(exc)}") from None
    except OSError as exc:
        raise ManifestError(f"{name}: cannot read: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{name}: must be a mapping with keys {', '.join(sorted(_AGENT_KEYS))}")
    for key in doc:
        if key not in _AGENT_KEYS:
            raise ManifestError(f"{name}: {key}: unknown key (allowed: {', '.join(sorted(_AGENT_KEYS))})")
    agent = doc.get("agent")
    if not isinstance(agent, str) or not _AGENT.match(agent):
        raise ManifestError(f"{name}: agent: required, lower-case letters, digits and '-', got {agent!r}")
    if agent != path.stem:
        raise ManifestError(f"{name}: agent: {agent!r} must equal the file name {path.stem!r}")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise ManifestError(f"{name}: description: must be text")
    consumes = doc.get("consumes") or []
    if not isinstance(consumes, list) or not all(isinstance(t, str) and t for t in consumes):
        raise ManifestError(f"{name}: consumes: must be a list of topic names")
    for topic in consumes if topics is not None else ():
        if topic not in topics:
            raise ManifestError(f"{name}: consumes: {topic!r} is no stream of the built-in agents or a loaded plugin "
                                f"(streams: {', '.join(sorted(topics))})")
    labels = _labels(f"{name}: labels", doc.get("labels"))
    domain = labels.get("domain", "platform")
    rules_raw = doc.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise ManifestError(f"{name}: rules: required, a non-empty list")

    runbook_text = ""
    runbook = path.with_suffix(".md")
    if require_runbook:
        if not runbook.exists():
            raise ManifestError(f"{name}: rules: runbook {runbook.name} is missing beside the manifest")
        runbook_text = runbook.read_text(encoding="utf-8")

    specs: list[RuleSpec] = []
    seen: set[str] = set()
    for i, rule in enumerate(rules_raw):
        where = f"{name}: rules[{i}]"
        if not isinstance(rule, dict):
            raise ManifestError(f"{where}: must be a mapping")
        alert = rule.get("alert")
        if not isinstance(alert, str) or not _ALERT_NAME.match(alert):
            raise ManifestError(f"{where}.alert: required, an identifier like CardImpossibleTravel, got {alert!r}")
        where = f"{name}: rules[{i}] ({alert})"
        for key in rule:
            if key not in _RULE_KEYS:
                raise ManifestError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
        if alert in seen:
            raise ManifestError(f"{where}.alert: duplicate alertname {alert!r} in this manifest")
        seen.add(alert)
        kind = rule.get("kind")
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise ManifestError(f"{where}.kind: required, snake_case, got {kind!r}")
        if kinds is not None and kind not in kinds:
            raise ManifestError(f"{where}.kind: unknown kind {kind!r} (known: {', '.join(sorted(kinds))})")
        severity = rule.get("severity", "warning")
        if severity not in SEVERITIES:
            raise ManifestError(f"{where}.severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
        for_s = _duration(f"{where}.for", rule.get("for"), 0.0)
        resolve_after_s = _duration(f"{where}.resolve_after", rule.get("resolve_after"), 300.0)
        flap_window_s = _duration(f"{where}.flap_window", rule.get("flap_window"), 3600.0)
        flap_max = rule.get("flap_max_changes", 6)
        if not isinstance(flap_max, int) or isinstance(flap_max, bool) or flap_max < 0:
            raise ManifestError(f"{where}.flap_max_changes: must be an integer >= 0 (0 = off), got {flap_max!r}")
        params = _params(f"{where}.params", rule.get("params"))
        rule_labels = {**labels, **_labels(f"{where}.labels", rule.get("labels"))}
        texts = {}
        for key in ("summary", "description"):
            text = rule.get(key) or ""
            if not isinstance(text, str):
                raise ManifestError(f"{where}.{key}: must be text")
            _check_template(f"{where}.{key}", text)
            texts[key] = text.strip()
        if not texts["summary"]:
            raise ManifestError(f"{where}.summary: required (the one line on-call sees first)")
        if require_runbook and not re.search(rf"^#+\s+{re.escape(alert)}\s*$", runbook_text, re.MULTILINE):
            raise ManifestError(f"{where}.alert: runbook {runbook.name} has no section '## {alert}'")
        specs.append(
            RuleSpec(
                name=alert,
                kind=kind,
                agent=agent,
                severity=severity,
                domain=rule_labels.get("domain", domain),
                for_s=for_s,
                resolve_after_s=resolve_after_s,
                params=params,
                labels=rule_labels,
                summary=texts["summary"],
                description=texts["description"],
                runbook_url=(f"{runbook_url.rstrip('/')}/{agent}.md#{alert.lower()}" if runbook_url else
                             f"{runbook_base.rstrip('/')}/agents/{agent}.md#{alert.lower()}"),
                flap_window_s=flap_window_s,
                flap_max_changes=flap_max,
                source=where,
            )
        )
    return AgentManifest(agent, path, description.strip(), tuple(consumes), labels, tuple(specs))


def load_manifests(
    directory: Path,
    *,
    runbook_base: str = DEFAULT_RUNBOOK_BASE,
    kinds: Collection[str] | None = None,
    require_runbook: bool = True,
    runbook_url: str | None = None,
    defined: dict[str, str] | None = None,
    overridden: Collection[str] = (),
    topics: Collection[str] | None = None,
) -> dict[str, RuleSpec]:
    """Every rule of every ``directory/*.yml`` manifest, by alertname; alertnames are unique across files.

    ``runbook_url``: see ``load_manifest``. ``defined``: alertname (and ``agent:<name>``) -> the file that
    defines it, from folders loaded before (updated): an alertname or agent another folder already has
    is an error naming both files (``load_manifest_folders``). ``overridden``: agents whose manifest here
    is skipped (still validated) because a folder loaded before replaces it. ``topics``: see ``load_manifest``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ManifestError(f"{directory}: rules directory does not exist (setting CITYOPS_RULES_DIR)")
    rules: dict[str, RuleSpec] = {}
    origin: dict[str, str] = {} if defined is None else defined
    for path in sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml")):
        manifest = load_manifest(path, runbook_base=runbook_base, kinds=kinds, require_runbook=require_runbook,
                                 runbook_url=runbook_url, topics=topics)
        here = f"{directory.name}/{path.name}"
        if manifest.agent in overridden:
            continue
        if f"agent:{manifest.agent}" in origin:
            raise ManifestError(f"{here}: agent: {manifest.agent!r} is also the agent of "
                                f"{origin[f'agent:{manifest.agent}']}")
        origin[f"agent:{manifest.agent}"] = str(path) if defined is not None else here
        for spec in manifest.rules:
            if spec.name in origin:
                raise ManifestError(
                    f"{here}: rules ({spec.name}).alert: duplicate alertname "
                    f"{spec.name!r}, already defined in {origin[spec.name]}"
                )
            rules[spec.name] = spec
            origin[spec.name] = str(path) if defined is not None else here
    return rules


def load_manifest_folders(
    folders: Sequence[tuple[Path, str | None]],
    *,
    runbook_base: str = DEFAULT_RUNBOOK_BASE,
    kinds: Collection[str] | None = None,
    require_runbook: bool = True,
) -> dict[str, RuleSpec]:
    """The rules of several manifest folders — (folder, its runbook URL or None) — by alertname.

    Alertnames and agent names are unique across all of them; errors as ``load_manifests``, the duplicate
    naming both files.
    """
    rules: dict[str, RuleSpec] = {}
    defined: dict[str, str] = {}
    for folder, url in folders:
        rules.update(load_manifests(folder, runbook_base=runbook_base, kinds=kinds,
                                    require_runbook=require_runbook, runbook_url=url, defined=defined))
    return rules


def load_agent_manifests(
    directory: Path, *, runbook_base: str = DEFAULT_RUNBOOK_BASE, kinds: Collection[str] | None = None
) -> list[AgentManifest]:
    """The manifests themselves (agent, consumes, labels, rules), sorted by file name; validated as above."""
    load_manifests(directory, runbook_base=runbook_base, kinds=kinds)  # cross-file checks
    return [
        load_manifest(p, runbook_base=runbook_base, kinds=kinds)
        for p in sorted(Path(directory).glob("*.yml")) + sorted(Path(directory).glob("*.yaml"))
    ]
