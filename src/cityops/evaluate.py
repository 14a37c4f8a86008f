"""Score alerts against `cityops simulate --incidents` ground truth: per-rule precision, recall, time-to-alert.

Everything here but ``read_alerts`` is pure: the matching is unit-tested without servers.

Definitions (event time throughout, epoch seconds):

* An *alert* is one firing episode of an (alertname, labels) pair: the first ``firing`` transition with a
  given ``starts_at``. Re-announcements of the same episode (a redelivered transition, the end of a
  flapping period) are not counted twice; a new episode of the same pair (fired again after resolving) is
  a new alert, so a spurious re-fire counts as a false positive instead of hiding behind the first one.
* An alert *matches* an incident when its alertname is the incident's rule, the incident's entity is
  consistent with the alert's labels (see ``expected_labels``), and its ``starts_at`` lies within
  [reference − ``before_s``, reference + ``after_s``] (defaults 1 min and 10 min).
* The *reference* time of an incident is its truth ``start`` plus ``REFERENCE_OFFSET_S[rule]``. The
  traffic/health simulator defines ``start`` as the moment the alert can fire (e.g. DataQualityDegraded:
  injection + 6 min, already covering its 5 min ``for``). The food simulator's FoodColdChainBreach
  ``start`` is the first out-of-range reading, while the rule (agents/food-safety.yml) needs the breach
  to hold ``for: 30m`` before it fires: its reference is start + 30 min.
* time-to-alert = starts_at of the earliest matching alert − reference. The alert lifecycle sets a
  firing alert's ``starts_at`` to the event time it fired (for rules with a ``for``: when ``for`` elapsed).
* Per rule: TP = incidents with a matching alert, FN = incidents without, FP = alerts matching no
  incident; precision = matching alerts / alerts, recall = TP / incidents (None when undefined).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ALERTS_TOPIC",
    "REFERENCE_OFFSET_S",
    "RULES",
    "Alert",
    "Incident",
    "RuleScore",
    "Score",
    "check_goals",
    "expected_labels",
    "firing_alerts",
    "format_table",
    "incidents_from_truth",
    "load_alerts",
    "matches",
    "missing_in_alertmanager",
    "raw_cards",
    "read_alerts",
    "score",
    "to_json",
    "write_alerts",
]

ALERTS_TOPIC = "cityops.alerts"

# The rules the incident simulator injects, in the order of the issue.
RULES: tuple[str, ...] = (
    "CardImpossibleTravel", "CardDeclinedBurst", "HealthCardConcurrentUse", "HealthCardRegistrationHoarding",
    "FoodCertificateReuse", "FoodUntracedSale", "FoodColdChainBreach", "EventTampering", "UntrustedSource",
    "BadSignature", "SourceSilent", "DataQualityDegraded", "RidershipAnomaly", "RoadSpeedAnomaly",
    "WaitTimeAnomaly",
)

# Seconds from the truth ``start`` to when the alert can first fire, for rules whose truth ``start`` is the
# condition's onset rather than its detectability (see the module docstring).
REFERENCE_OFFSET_S: dict[str, float] = {"FoodColdChainBreach": 30 * 60.0}

MATCH_BEFORE_S = 60.0
MATCH_AFTER_S = 600.0
TTA_GOAL_S = 120.0
PRECISION_GOAL = 0.95

# Labels that name the rule, not the entity.
_NON_ENTITY_LABELS = frozenset({"alertname", "severity", "domain", "team"})


@dataclass(frozen=True)
class Incident:
    """One injected incident: rule, the labels its alert must carry, reference event time (epoch s)."""

    rule: str
    labels: tuple[tuple[str, str], ...]
    reference: float
    truth: Mapping[str, Any] = field(compare=False, hash=False, default_factory=dict)


@dataclass(frozen=True)
class Alert:
    """One firing episode read from the alerts topic; ``starts_at`` is when it fired (event time, epoch s)."""

    alertname: str
    labels: tuple[tuple[str, str], ...]
    starts_at: float
    id: str = ""
    annotations: tuple[tuple[str, str], ...] = ()

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)

    @property
    def entity(self) -> dict[str, str]:
        return {k: v for k, v in self.labels if k not in _NON_ENTITY_LABELS}


@dataclass
class RuleScore:
    """One row of the table; times in seconds."""

    rule: str
    incidents: int = 0
    alerts: int = 0
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tta_s: list[float] = field(default_factory=list)
    missed: list[Incident] = field(default_factory=list)
    false_alerts: list[Alert] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return (self.alerts - self.fp) / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.tp / self.incidents if self.incidents else None

    @property
    def tta_mean_s(self) -> float | None:
        return sum(self.tta_s) / len(self.tta_s) if self.tta_s else None

    @property
    def tta_max_s(self) -> float | None:
        return max(self.tta_s) if self.tta_s else None


@dataclass
class Score:
    """Per-rule scores plus the (alert, incident) pairs that matched."""

    rules: dict[str, RuleScore]
    matched: list[tuple[Alert, Incident]]

    @property
    def alerts(self) -> int:
        return sum(r.alerts for r in self.rules.values())

    @property
    def fp(self) -> int:
        return sum(r.fp for r in self.rules.values())

    @property
    def precision(self) -> float | None:
        return (self.alerts - self.fp) / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        n = sum(r.incidents for r in self.rules.values())
        return sum(r.tp for r in self.rules.values()) / n if n else None


# -- truth ---------------------------------------------------------------------------------------------
def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def expected_labels(rule: str, entity: Mapping[str, Any],
                    pseudonymize: Callable[[str], str] | None = None) -> dict[str, str]:
    """The labels an alert for this truth entity must carry.

    ``card`` → the worker's pseudonym of the raw card (``pseudonymize``; None = compare raw). Other keys
    (line, segment, hospital, source, stream, certificate, lot, location) are labels as they are.
    ``event_id`` (EventTampering) has no label: the alert is per source and stream. The simulator's event
    ids are ``<source>:<run tag>:x<n>`` (traffic._Sim._xid), so the id's source is required instead.
    """
    out: dict[str, str] = {}
    for key, value in entity.items():
        value = str(value)
        if key == "card":
            out["card"] = pseudonymize(value) if pseudonymize is not None else value
        elif key == "event_id":
            out["source"] = value.split(":", 1)[0]
        else:
            out[key] = value
    return out


def incidents_from_truth(rows: Iterable[Mapping[str, Any]], pseudonymize: Callable[[str], str] | None = None,
                         offsets: Mapping[str, float] = REFERENCE_OFFSET_S) -> list[Incident]:
    """Truth rows (``truth_row`` / incidents.json: rule, entity, start ISO) → incidents with reference times."""
    out = []
    for row in rows:
        rule = str(row["rule"])
        labels = expected_labels(rule, row["entity"], pseudonymize)
        ref = _epoch(row["start"]) + float(offsets.get(rule, 0.0))
        out.append(Incident(rule, tuple(sorted(labels.items())), ref, dict(row)))
    return sorted(out, key=lambda i: (i.reference, i.rule))


def raw_cards(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The raw card numbers in the truth (they must never appear in an alert)."""
    return {str(r["entity"]["card"]) for r in rows if "card" in r.get("entity", {})}


# -- alerts --------------------------------------------------------------------------------------------
def firing_alerts(transitions: Iterable[Mapping[str, Any]]) -> list[Alert]:
    """Alert transitions (the ``cityops.alerts`` topic's JSON values) → firing episodes, in start order.

    Only ``status == "firing"`` counts; one alert per (alertname, labels, starts_at).
    """
    seen: dict[tuple[str, tuple[tuple[str, str], ...], float], Alert] = {}
    for tr in transitions:
        if tr.get("status") != "firing":
            continue
        labels = tuple(sorted((str(k), str(v)) for k, v in (tr.get("labels") or {}).items()))
        name = str(tr.get("alertname") or dict(labels).get("alertname", ""))
        starts = float(tr["starts_at"] if tr.get("starts_at") is not None else tr["ts"])
        key = (name, labels, starts)
        if key not in seen:
            ann = tuple(sorted((str(k), str(v)) for k, v in (tr.get("annotations") or {}).items()))
            seen[key] = Alert(name, labels, starts, str(tr.get("id", "")), ann)
    return sorted(seen.values(), key=lambda a: (a.starts_at, a.alertname, a.labels))


def matches(alert: Alert, incident: Incident, before_s: float = MATCH_BEFORE_S,
            after_s: float = MATCH_AFTER_S) -> bool:
    """Same rule, every expected label equal, and fired within [reference − before_s, reference + after_s]."""
    if alert.alertname != incident.rule:
        return False
    if not incident.reference - before_s <= alert.starts_at <= incident.reference + after_s:
        return False
    labels = dict(alert.labels)
    return all(labels.get(k) == v for k, v in incident.labels)


def score(incidents: Sequence[Incident], alerts: Sequence[Alert], rules: Iterable[str] = RULES,
          before_s: float = MATCH_BEFORE_S, after_s: float = MATCH_AFTER_S) -> Score:
    """Per-rule TP/FP/FN, precision, recall, time-to-alert; rows for ``rules`` plus any rule seen."""
    table: dict[str, RuleScore] = {r: RuleScore(r) for r in rules}
    for name in [i.rule for i in incidents] + [a.alertname for a in alerts]:
        table.setdefault(name, RuleScore(name))
    matched: list[tuple[Alert, Incident]] = []
    used: set[int] = set()
    for inc in incidents:
        row = table[inc.rule]
        row.incidents += 1
        hits = [(k, a) for k, a in enumerate(alerts) if matches(a, inc, before_s, after_s)]
        if not hits:
            row.fn += 1
            row.missed.append(inc)
            continue
        row.tp += 1
        first = min(a.starts_at for _, a in hits)
        row.tta_s.append(first - inc.reference)
        for k, a in hits:
            used.add(k)
            matched.append((a, inc))
    for k, a in enumerate(alerts):
        row = table[a.alertname]
        row.alerts += 1
        if k not in used:
            row.fp += 1
            row.false_alerts.append(a)
    return Score(table, matched)


def check_goals(result: Score, tta_goal_s: float = TTA_GOAL_S, precision_goal: float = PRECISION_GOAL) -> list[str]:
    """The issue's goals not met (empty = all met): recall 100% per rule with incidents, overall precision
    >= ``precision_goal``, every time-to-alert <= ``tta_goal_s`` (default 120 s)."""
    problems = []
    for r in result.rules.values():
        if r.incidents and r.fn:
            problems.append(f"{r.rule}: recall {r.tp}/{r.incidents} (missed {r.fn})")
        late = [t for t in r.tta_s if t > tta_goal_s]
        if late:
            problems.append(f"{r.rule}: time-to-alert {max(late):.0f} s > {tta_goal_s:.0f} s")
    p = result.precision
    if p is not None and p < precision_goal:
        problems.append(f"overall precision {p:.3f} < {precision_goal:.2f} ({result.fp} false alerts)")
    return problems


def missing_in_alertmanager(matched: Iterable[Alert], received: Iterable[Mapping[str, Any]]) -> list[Alert]:
    """Matched alerts of which Alertmanager never received a firing version (same labels).

    ``received``: alerts in Alertmanager's API format (``labels``, ``startsAt``, ``endsAt``), e.g. what was
    POSTed to it and accepted, or what ``GET /api/v2/alerts`` listed. Alertmanager identifies an alert by
    its label set, so labels are compared exactly.
    """
    got = {tuple(sorted((str(k), str(v)) for k, v in (r.get("labels") or {}).items())) for r in received}
    out, seen = [], set()
    for a in matched:
        if a.labels not in got and (a.labels, a.starts_at) not in seen:
            seen.add((a.labels, a.starts_at))
            out.append(a)
    return out


# -- output --------------------------------------------------------------------------------------------
def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.0f}%" if pct else f"{v:.0f}"


def format_table(result: Score) -> str:
    """The per-rule table as fixed-width text (times in seconds)."""
    head = f"{'rule':32} {'inc':>4} {'alerts':>6} {'TP':>3} {'FP':>3} {'FN':>3} {'prec':>5} {'recall':>6} " \
           f"{'tta_mean_s':>10} {'tta_max_s':>9}"
    lines = [head, "-" * len(head)]
    for r in result.rules.values():
        lines.append(f"{r.rule:32} {r.incidents:>4} {r.alerts:>6} {r.tp:>3} {r.fp:>3} {r.fn:>3} "
                     f"{_fmt(r.precision, True):>5} {_fmt(r.recall, True):>6} {_fmt(r.tta_mean_s):>10} "
                     f"{_fmt(r.tta_max_s):>9}")
    lines.append("-" * len(head))
    lines.append(f"{'overall':32} {sum(r.incidents for r in result.rules.values()):>4} {result.alerts:>6} "
                 f"{sum(r.tp for r in result.rules.values()):>3} {result.fp:>3} "
                 f"{sum(r.fn for r in result.rules.values()):>3} {_fmt(result.precision, True):>5} "
                 f"{_fmt(result.recall, True):>6}")
    return "\n".join(lines)


def to_json(result: Score) -> dict[str, Any]:
    """The table as plain data (for --json and test reports)."""
    return {
        "precision": result.precision, "recall": result.recall, "alerts": result.alerts, "fp": result.fp,
        "rules": {r.rule: {"incidents": r.incidents, "alerts": r.alerts, "tp": r.tp, "fp": r.fp, "fn": r.fn,
                           "precision": r.precision, "recall": r.recall, "tta_s": r.tta_s,
                           "missed": [dict(i.labels) | {"reference": i.reference} for i in r.missed],
                           "false_alerts": [dict(a.labels) | {"starts_at": a.starts_at} for a in r.false_alerts]}
                  for r in result.rules.values()},
    }


# -- I/O -----------------------------------------------------------------------------------------------
def write_alerts(path: Path, transitions: Iterable[Mapping[str, Any]]) -> int:
    """Write alert transitions (``cityops.alerts`` values) as JSONL, one per line; returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for tr in transitions:
            fh.write(json.dumps(tr, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def load_alerts(path: Path) -> list[dict[str, Any]]:
    """Alert transitions from a JSONL file written by ``write_alerts`` (blank lines skipped).

    Raises ValueError naming the line that is not a JSON object.
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"{path}:{n}: not a JSON object")
            out.append(value)
    return out


def read_alerts(bootstrap: str, topic: str = ALERTS_TOPIC, timeout_s: float = 30.0, *,
                security: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every transition on ``topic`` from the beginning up to its current end (no consumer group).

    ``security``: SASL/TLS client arguments (cityops.connections.kafka_client_security; default PLAINTEXT).
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000, **(security or {}))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: not at its end after {timeout_s:.0f}s")
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in recs if r.value)
        return out
    finally:
        consumer.close()
