"""A rule instance as configured in an agent manifest (agents/<agent>.yml): kind + thresholds + routing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RuleSpec:
    """One alert rule. ``kind`` names the code that evaluates it; everything else is configuration.

    for_s: how long (event-time seconds) the condition must hold before pending becomes firing (0 = at once).
    resolve_after_s: how long the recovery condition must hold before firing becomes resolved (hysteresis);
        for one-shot kinds (a single suspicious event) it is the quiet time after the last occurrence.
    params: kind-specific thresholds (e.g. {"max_speed_kmh": 150, "min_km": 1}).
    labels: routing labels added to every alert of the rule (domain, team, ...).
    """

    name: str  # the alertname, part of the contract
    kind: str
    agent: str
    severity: str = "warning"  # info | warning | critical
    domain: str = "platform"
    for_s: float = 0.0
    resolve_after_s: float = 300.0
    params: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    summary: str = ""  # str.format template over entity labels and {value}
    description: str = ""
    runbook_url: str = ""
    flap_window_s: float = 3600.0  # flapping: >= flap_max_changes state changes within this window
    flap_max_changes: int = 6
    # Where the rule is defined, as manifest errors name it ("agents/x.yml: rules[0] (Alert)"; "" = not from a
    # manifest): errors of its params name the file and key. Not part of the rule: equality, the stored
    # ``alert_rules`` table and reload's comparison ignore it, so moving a rule in its file changes nothing.
    source: str = field(default="", compare=False)
