"""Alert lifecycle (pending → firing → resolved, with hysteresis and flapping) kept in durable tables.

One alert per (rule, entity). Rule code reports conditions through ``signal``; the engine turns them into
state transitions by EVENT time, so a replay after a crash makes exactly the same decisions. Every
notification is appended to the durable outbox table in the same commit as the state change that caused
it; the dispatcher sends outbox items after the commit and acknowledges them. Hence a restart neither
re-announces a firing alert nor loses a resolve: both live in the committed state.

Statuses in the outbox:
  pending   the condition holds, waiting for ``for_s`` (not sent to Alertmanager)
  firing    the condition held ``for_s``
  resolved  the recovery held ``resolve_after_s``; or, with ``previous == "pending"``, the condition
            dropped before firing (a cancelled pending alert; not sent to Alertmanager)
  flapping  ``flap_max_changes`` changes within ``flap_window_s``: further changes are held back until
            the alert has been stable for ``flap_window_s``; then one item with the then-current status.

Recovery: a "continuous" rule (one that ever reports ``active=False``, has a ``for_s``, or is not in the
``one_shot`` set given to the engine) recovers when inactive signals have held ``resolve_after_s``: the
clock starts with the first inactive signal and an active one cancels it. A one-shot rule (it reports
occurrences only: a tampered event, an impossible journey) recovers when no active signal came for
``resolve_after_s``.

``am_action`` on each outbox item says what Alertmanager must be told: "firing", "resolved" (only for an
alert it was told is firing) or None (nothing: pending, flapping, a cancelled pending alert).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Required, TypedDict

import msgspec

from cityops.alerts.spec import RuleSpec
from cityops.engine.codec import Codec, StateFormatError
from cityops.engine.state import StateStore, Table
from cityops.errors import CityopsError
from cityops.types import Alert, AlertState, Transition, TransitionRecord

__all__ = ["AlertEngine", "UnknownRuleError", "entity_key", "format_entity"]

log = logging.getLogger(__name__)

AlertKey = tuple[str, tuple[tuple[str, str], ...]]  # (rule, sorted entity items)

_INACTIVE = AlertState.INACTIVE
_PENDING = AlertState.PENDING
_FIRING = AlertState.FIRING
_RESOLVED = AlertState.RESOLVED
_FLAPPING = AlertState.FLAPPING

_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")
_META_SEQ = "alert_seq"
_META_CONTINUOUS = "alert_continuous_rules"



class AlertRecord(TypedDict, total=False):
    """Table ``alerts``: one alert's lifecycle record (times: event time, epoch s). A resolved alert is kept
    shrunk to the required fields (its id counter and what was last notified)."""

    status: Required[str]  # inactive | pending | firing
    n: Required[int]  # transitions so far: keeps ids unique across episodes
    t: Required[float]  # event time of the last evaluation
    notified: Required[str | None]  # last status put in the outbox
    active: bool
    last_active: float
    recover_since: float | None
    since: float | None  # entered the current status
    starts_at: float | None  # episode start (pending since, then firing since)
    value: float
    summary: str
    description: str
    changes: list[float]  # event times of status changes within the flap window
    flapping: bool
    am_firing: bool  # Alertmanager was last told "firing"


def _record_codec(shape: str, typ: Any) -> Codec:
    """A codec for a map of named fields kept as a dict: fields checked against the TypedDict ``typ``."""
    known = typ.__required_keys__ | typ.__optional_keys__

    def check(key: Any, rec: dict[str, Any]) -> dict[str, Any]:
        unknown = set(rec) - known
        if unknown:
            raise StateFormatError(f"state {shape!r} {key!r} has fields {sorted(unknown)} this release does not "
                                   "know: CITYOPS_DATA_DIR was written by another release")
        msgspec.convert(rec, typ)  # types and required fields; ValidationError -> StateFormatError
        return rec

    return Codec(shape, dict[str, Any], from_plain=check, migrations={0: lambda k, v: v})


# Durable shapes: both are maps of named fields, kept as dicts in memory; unchanged from format 0.
ALERT_CODEC = _record_codec("alert", AlertRecord)
TRANSITION_CODEC = _record_codec("alert_transition", TransitionRecord)
# Table ``alert_rules``: alertname -> the RuleSpec in force at the last commit, by field name. A restart or
# a reload compares the manifests with it (cityops.alerts.reload), so alerts of a rule removed or redefined
# while the worker was down are ended as a reload would end them.
RULE_SPEC_CODEC = Codec("rule_spec", dict[str, Any])
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(RuleSpec) if f.compare)  # not ``source``


def spec_to_plain(spec: RuleSpec) -> dict[str, Any]:
    """A RuleSpec as plain data (field name -> value), as the ``alert_rules`` table stores it."""
    return {name: getattr(spec, name) for name in _SPEC_FIELDS}


def spec_from_plain(plain: Mapping[str, Any]) -> RuleSpec:
    """The RuleSpec of a stored map; fields this release does not know are ignored, missing ones default."""
    return RuleSpec(**{k: v for k, v in plain.items() if k in _SPEC_FIELDS})


class UnknownRuleError(CityopsError, KeyError):
    """A signal named a rule that no manifest defines (a code/config mismatch: fails loudly)."""


def entity_key(rule: str, entity: dict[str, Any]) -> AlertKey:
    """The table key of the alert of ``rule`` for ``entity``: independent of the dict's order."""
    return rule, tuple(sorted((str(k), str(v)) for k, v in entity.items()))


def format_entity(items: Iterable[tuple[str, str]]) -> str:
    """``k=v,k2=v2`` in key order: the entity part of a transition id."""
    return ",".join(f"{k}={v}" for k, v in items)


def _label_name(name: str) -> str:
    # Alertmanager rejects the whole alert for a label name outside [a-zA-Z_][a-zA-Z0-9_]*.
    out = _LABEL_NAME.sub("_", name)
    return out if out and not out[0].isdigit() else "_" + out


class _Unfilled:
    """Stands in for a template field this alert has no value for: shows ``{name}``, whatever the format."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return "{" + self.name + "}"

    def __str__(self) -> str:
        return "{" + self.name + "}"


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> _Unfilled:
        return _Unfilled(key)


def _render(template: str, fields: dict[str, Any], fallback: str) -> str:
    if not template:
        return fallback
    try:
        # Kind texts may be empty (a recovery signal): no double or trailing blanks in what on-call reads.
        return " ".join(template.format_map(_Fields(fields)).split())
    except (KeyError, ValueError, IndexError, AttributeError, TypeError) as exc:
        # A template naming a label this entity lacks must not stop the agent: show it unformatted.
        log.warning("alert template not formatted template=%r error=%r", template, exc)
        return template + (f" ({fallback})" if fallback else "")


class AlertEngine:
    """Implements ``Signals``: one durable alert per (rule, entity), notifications via the outbox.

    ``store``: the engine's StateStore; tables ``alerts`` (state) and ``alert_outbox`` (seq → transition),
    ``store.meta["alert_seq"]`` (next seq) and ``store.meta["alert_continuous_rules"]``.
    ``rules``: alertname → RuleSpec (from ``cityops.alerts.manifest.load_manifests``).
    ``sinks``: names of the outputs that must each acknowledge an outbox item before it is dropped
    (``ack_outbox(seqs, sink=...)``; partial delivery also via ``update_outbox``); empty = the first
    ``ack_outbox`` drops it.
    ``generator_url``: optional back-link put into Alertmanager's ``generatorURL``.
    ``one_shot``: names of the rules whose kind reports occurrences only (``RuleKind.one_shot``); None =
    infer it: a rule with ``for_s > 0`` is continuous, any other becomes so when it first reports
    ``active=False``.
    Call ``pop_outbox`` only after ``store.commit``: uncommitted items may be regenerated by a replay.
    """

    def __init__(
        self,
        store: StateStore,
        rules: dict[str, RuleSpec],
        *,
        sinks: Collection[str] = (),
        generator_url: str = "",
        one_shot: Collection[str] | None = None,
    ) -> None:
        self.store = store
        self.rules = dict(rules)
        self.sinks = frozenset(sinks)
        self.generator_url = generator_url
        self.alerts: Table[AlertKey, dict[str, Any]] = store.table("alerts", ALERT_CODEC)
        self.outbox: Table[int, dict[str, Any]] = store.table("alert_outbox", TRANSITION_CODEC)
        self.rule_specs: Table[str, dict[str, Any]] = store.table("alert_rules", RULE_SPEC_CODEC)
        store.meta.setdefault(_META_SEQ, 0)
        self._continuous: set[str] = set(store.meta.get(_META_CONTINUOUS, ()))
        # Alerts with a clock running (pending, firing, flapping, recently resolved); rebuilt, not stored.
        self._live: set[AlertKey] = set()
        # The rules committed with the restored state, before this start records its own: what a start
        # compares the manifests with (cityops.alerts.reload.reconcile, called by the wiring).
        self.restored_rules: dict[str, RuleSpec] | None = self.committed_rules()
        self._set_rules(self.rules, one_shot)
        # Alerts still open of a rule neither defined now nor recorded (state of an older release): nothing
        # can end them (their labels are unknown). Ended alerts stay as their id counters, silently.
        unknown: dict[str, int] = {}
        for key, rec in self.alerts.items():
            if key[0] not in self.rules and key[0] not in (self.restored_rules or {}) and "active" in rec:
                unknown[key[0]] = unknown.get(key[0], 0) + 1
        for rule, n in sorted(unknown.items()):
            log.warning("alerts of a rule no manifest defines left as is rule=%s alerts=%d", rule, n)

    # -- the rules in force -------------------------------------------------------------------------
    def committed_rules(self) -> dict[str, RuleSpec] | None:
        """The rules in force at the last commit (``alert_rules``); None when the state predates that table."""
        if not self.rule_specs.data:
            return None
        return {name: spec_from_plain(plain) for name, plain in self.rule_specs.items()}

    def set_rules(self, rules: Mapping[str, RuleSpec], one_shot: Collection[str] | None = None) -> None:
        """The rules in force from now on (a reload; see ``cityops.alerts.reload``). Alerts of a rule not in
        ``rules`` keep their records but get no clock; end them first with ``end_alerts``."""
        self.rules = dict(rules)
        self._set_rules(self.rules, one_shot)

    def _set_rules(self, rules: dict[str, RuleSpec], one_shot: Collection[str] | None) -> None:
        # A continuous rule learnt from its signals stays so while it is defined (forget_rule resets it).
        self._continuous = {name for name in self._continuous if name in rules}
        # A single occurrence cannot "hold for" a duration: a rule with a `for` is continuous.
        self._continuous |= {name for name, spec in rules.items() if spec.for_s > 0}
        if one_shot is not None:
            # Told which rules are one-shot: every other rule is continuous from its first signal.
            self._continuous |= {name for name in rules if name not in one_shot}
        if self._continuous != set(self.store.meta.get(_META_CONTINUOUS, ())):
            self.store.meta[_META_CONTINUOUS] = sorted(self._continuous)
        self._live = set()
        for key, rec in self.alerts.items():
            spec = rules.get(key[0])
            if spec is not None and self._needs_clock(rec, spec):
                self._live.add(key)
        # The rules as committed with the state they produced (compared at the next start or reload).
        stored = self.rule_specs
        for name in [n for n in stored.keys() if n not in rules]:
            del stored[name]
        for name, spec in rules.items():
            plain = spec_to_plain(spec)
            if stored.get(name) != plain:
                stored[name] = plain

    def forget_rule(self, rule: str) -> None:
        """Forget what the lifecycle learnt about ``rule``'s kind (whether it reports recoveries): a rule
        redefined with another kind or parameters starts as a new rule."""
        if rule in self._continuous:
            self._continuous.discard(rule)
            self.store.meta[_META_CONTINUOUS] = sorted(self._continuous)

    def end_alerts(self, rule: str, spec: RuleSpec, at: float | None = None) -> int:
        """End every alert of ``rule`` (removed, or redefined: see ``cityops.alerts.reload``); returns how many.

        ``spec``: the definition the alerts were raised under (their labels at Alertmanager). A firing or
        flapping alert gets a ``resolved`` transition (``am_action`` resolved when Alertmanager was told it
        fires, so no alert is left active there); a pending one is cancelled (``resolved``, previous
        pending). At event time ``at`` (epoch s), never before the alert's last evaluation; None = that
        evaluation's time. The records shrink to their id counter, so the rule's next alert for the same
        entity gets a new transition id.
        """
        ended = 0
        for key in sorted(k for k in self.alerts.keys() if k[0] == rule):
            rec = self.alerts[key]
            self._live.discard(key)
            if "active" not in rec:
                continue  # already resolved and shrunk
            t = rec["t"] if at is None else max(rec["t"], float(at))
            told = rec.get("notified")
            if rec["am_firing"] or told not in (None, _RESOLVED):
                rec["status"] = _INACTIVE
                rec["flapping"] = False
                rec["since"] = t
                self._emit(key, rec, spec, _RESOLVED, t)
                ended += 1
            self.alerts[key] = {"status": _INACTIVE, "n": rec["n"], "t": t, "notified": rec["notified"]}
        return ended

    def relabel(self, rule: str, old: RuleSpec, new: RuleSpec, at: float | None = None) -> int:
        """``rule``'s labels (severity, domain, labels) changed: its alerts Alertmanager holds as firing are
        re-announced under the new labels; returns how many.

        Alertmanager tells alerts apart by their label set, so each gets ``resolved`` under ``old``'s labels
        (nothing stays active there under the old set) and ``firing`` under ``new``'s, with the episode's
        start kept. The lifecycle record (status, timers, flapping) is kept as it is.
        """
        done = 0
        for key in sorted(k for k in self._live if k[0] == rule):
            rec = self.alerts.get(key)
            if rec is None or not rec.get("am_firing"):
                continue
            t = rec["t"] if at is None else max(rec["t"], float(at))
            self._emit(key, rec, old, _RESOLVED, t)
            self._emit(key, rec, new, _FIRING, t)
            self.alerts.mark(key)
            done += 1
        return done

    # -- Signals ------------------------------------------------------------------------------------
    def signal(
        self,
        rule: str,
        entity: dict[str, str],
        ts: float,
        *,
        active: bool,
        value: float = 0.0,
        summary: str = "",
        description: str = "",
    ) -> None:
        """Report ``rule``'s condition for ``entity`` at event time ``ts`` (epoch s); see the module doc."""
        spec = self.rules.get(rule)
        if spec is None:
            raise UnknownRuleError(f"signal for unknown rule {rule!r}: no agents/*.yml manifest defines it")
        if not active and rule not in self._continuous:
            self._continuous.add(rule)
            self.store.meta[_META_CONTINUOUS] = sorted(self._continuous)
        key = entity_key(rule, entity)
        rec = self.alerts.get(key)
        if rec is None or "active" not in rec:
            if not active:
                return  # nothing to recover from; keep no record
            rec = self._fresh(rec)
            self.alerts[key] = rec
        now = max(float(ts), rec["t"])
        self._tick(key, rec, spec, now)  # timers that fell due before this signal
        if active:
            rec["active"] = True
            rec["last_active"] = max(rec["last_active"], now)
            rec["recover_since"] = None
            rec["value"] = float(value)
            rec["summary"] = summary
            rec["description"] = description
            if rec["status"] == _INACTIVE:
                rec["starts_at"] = now
                self._change(key, rec, spec, _FIRING if spec.for_s <= 0 else _PENDING, now)
        else:
            if rec["active"]:
                rec["active"] = False
                rec["recover_since"] = now
            if rec["status"] == _PENDING:
                self._change(key, rec, spec, _INACTIVE, now)
        self._tick(key, rec, spec, now)  # zero-length timers (resolve_after 0)
        rec["t"] = now
        self.alerts.mark(key)
        self._track(key, rec, spec)

    def advance(self, ts: float) -> None:
        """Event time reached ``ts`` (epoch s): fire, resolve and end flapping where their time has come.

        Due timers of all alerts are applied in (event time, alert key) order, so the outbox order does
        not depend on how often this is called nor on the process (set order varies with hash seeds).
        """
        ts = float(ts)
        heap: list[tuple[float, int, AlertKey]] = []
        for key in self._live:
            rec = self.alerts.get(key)
            spec = self.rules.get(key[0])
            if rec is None or spec is None:
                continue
            due = self._next_event(key, rec, spec)
            if due is not None and due[0] <= ts:
                heap.append((due[0], due[1], key))
        heapq.heapify(heap)
        touched: set[AlertKey] = set()
        while heap:
            _at, _prio, key = heapq.heappop(heap)
            rec = self.alerts[key]
            spec = self.rules[key[0]]
            self._step(key, rec, spec)
            touched.add(key)
            due = self._next_event(key, rec, spec)
            if due is not None and due[0] <= ts:
                heapq.heappush(heap, (due[0], due[1], key))
        for key in sorted(touched):
            self.alerts.mark(key)
        for key in sorted(self._live):
            rec = self.alerts.get(key)
            spec = self.rules.get(key[0])
            if rec is None or spec is None:
                self._live.discard(key)
            else:
                self._track(key, rec, spec, ts)

    # -- state machine ------------------------------------------------------------------------------
    @staticmethod
    def _fresh(old: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "status": _INACTIVE,
            "n": old["n"] if old else 0,  # transitions so far: keeps ids unique across episodes
            "t": old["t"] if old else -math.inf,  # event time of the last evaluation
            "active": False,
            "last_active": -math.inf,
            "recover_since": None,
            "since": None,  # entered the current status
            "starts_at": None,  # episode start (pending since, then firing since)
            "value": 0.0,
            "summary": "",
            "description": "",
            "changes": [],  # event times of status changes within the flap window
            "flapping": False,
            "notified": old.get("notified") if old else None,  # last status put in the outbox
            "am_firing": False,  # Alertmanager was last told "firing"
        }

    def _holds_until(self, rec: dict[str, Any], spec: RuleSpec, rule: str) -> float:
        """Event time up to which the condition counts as holding (inf while a continuous one is active)."""
        if rule in self._continuous:
            return math.inf if rec["active"] else (rec["recover_since"] or rec["t"])
        return rec["last_active"] + spec.resolve_after_s

    def _next_event(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec) -> tuple[float, int, str] | None:
        """The alert's earliest pending timer: (event time, priority, what), or None."""
        rule = key[0]
        due: list[tuple[float, int, str]] = []
        status = rec["status"]
        if status == _PENDING:
            fire_at = rec["since"] + spec.for_s
            hold_end = self._holds_until(rec, spec, rule)
            if fire_at < hold_end:
                due.append((fire_at, 0, _FIRING))
            else:
                due.append((hold_end, 0, _INACTIVE))
        elif status == _FIRING:
            start = (None if rec["active"] else rec["recover_since"]) if rule in self._continuous else rec["last_active"]
            if start is not None:
                due.append((start + spec.resolve_after_s, 0, _INACTIVE))
        if rec["flapping"] and rec["changes"]:
            due.append((rec["changes"][-1] + spec.flap_window_s, 1, _FLAPPING))
        return min(due) if due else None

    def _step(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec) -> None:
        """Apply the alert's earliest timer (the caller checked it is due)."""
        event = self._next_event(key, rec, spec)
        if event is None:
            return
        at, _, what = event
        if what == _FLAPPING:
            self._end_flapping(key, rec, spec, at)
        else:
            if what == _FIRING:
                rec["starts_at"] = at
            self._change(key, rec, spec, what, at)
        rec["t"] = max(rec["t"], at)

    def _tick(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec, now: float) -> None:
        """Apply every timer of this alert due at or before ``now``, earliest first."""
        for _ in range(64):  # each step changes state; a handful can be due at once, bound it anyway
            event = self._next_event(key, rec, spec)
            if event is None or event[0] > now:
                return
            self._step(key, rec, spec)

    def _change(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec, status: str, at: float) -> None:
        """The alert's status changes at event time ``at``: notify, or hold it back while flapping."""
        rec["status"] = status
        rec["since"] = at
        changes = rec["changes"]
        changes.append(at)
        horizon = at - spec.flap_window_s
        while changes and changes[0] <= horizon:
            changes.pop(0)
        if rec["flapping"]:
            return
        if spec.flap_max_changes > 0 and len(changes) >= spec.flap_max_changes:
            rec["flapping"] = True
            self._emit(key, rec, spec, _FLAPPING, at)
            return
        self._emit(key, rec, spec, _RESOLVED if status == _INACTIVE else status, at)

    def _end_flapping(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec, at: float) -> None:
        rec["flapping"] = False
        rec["changes"] = []
        status = rec["status"]
        self._emit(key, rec, spec, _RESOLVED if status == _INACTIVE else status, at)

    def _needs_clock(self, rec: dict[str, Any], spec: RuleSpec) -> bool:
        if rec.get("status", _INACTIVE) != _INACTIVE or rec.get("flapping"):
            return True
        changes = rec.get("changes")
        return bool(changes) and changes[-1] + spec.flap_window_s > rec["t"]

    def _track(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec, now: float | None = None) -> None:
        """Keep the live index right; shrink a resolved alert once its flap history has expired."""
        if rec["status"] != _INACTIVE or rec["flapping"]:
            self._live.add(key)
            return
        changes = rec["changes"]
        t = rec["t"] if now is None else max(rec["t"], now)
        if changes and changes[-1] + spec.flap_window_s > t:
            self._live.add(key)
            return
        self._live.discard(key)
        if "active" in rec:
            # Only the transition counter must outlive the episode (ids stay unique); drop the rest.
            self.alerts[key] = {"status": _INACTIVE, "n": rec["n"], "t": rec["t"], "notified": rec["notified"]}

    # -- notifications ------------------------------------------------------------------------------
    def _labels(self, key: AlertKey, spec: RuleSpec) -> dict[str, str]:
        labels = {_label_name(k): str(v) for k, v in spec.labels.items()}
        labels.update({_label_name(k): v for k, v in key[1]})
        labels.update(alertname=spec.name, severity=spec.severity, domain=spec.domain)
        return labels

    def _annotations(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec) -> dict[str, str]:
        fields: dict[str, Any] = dict(spec.params)
        fields.update(key[1])
        fields.update(
            value=rec.get("value", 0.0), summary=rec.get("summary", ""), description=rec.get("description", ""),
            alertname=spec.name, severity=spec.severity, domain=spec.domain,
        )
        summary = _render(spec.summary, fields, rec.get("summary", "") or spec.name)
        description = _render(spec.description, fields, rec.get("description", ""))
        out = {"summary": summary, "description": description}
        if spec.runbook_url:
            out["runbook_url"] = spec.runbook_url
        return out

    def _emit(self, key: AlertKey, rec: dict[str, Any], spec: RuleSpec, status: str, at: float) -> None:
        n = rec["n"]
        rec["n"] = n + 1
        previous = rec.get("notified")
        rec["notified"] = status
        # What Alertmanager must hear: it knows only firing and resolved, and only of alerts it was told
        # fired. A flapping alert stays as last told; one that ends flapping not firing gets resolved.
        am_action: AlertState | None = None
        if status == _FIRING:
            am_action = _FIRING
            rec["am_firing"] = True
        elif status != _FLAPPING and rec["am_firing"]:
            am_action = _RESOLVED
            rec["am_firing"] = False
        starts_at = rec["starts_at"] if rec["starts_at"] is not None else at
        item = Transition(
            id=f"{key[0]}|{format_entity(key[1])}|{n}", alertname=spec.name, status=status,
            previous=None if previous is None else AlertState(previous), am_action=am_action,
            severity=spec.severity, domain=spec.domain, entity=dict(key[1]), labels=self._labels(key, spec),
            annotations=self._annotations(key, rec, spec), starts_at=starts_at,
            ends_at=at if status == _RESOLVED else None, value=rec.get("value", 0.0), ts=at,
            generator_url=self.generator_url,
        )
        seq = self.store.meta[_META_SEQ]
        self.store.meta[_META_SEQ] = seq + 1
        self.outbox[seq] = item.to_record()

    # -- reading ------------------------------------------------------------------------------------
    def status(self, rule: str, entity: dict[str, str]) -> str:
        """Current status of one alert: inactive | pending | firing (flapping is a flag, see ``get``)."""
        rec = self.alerts.get(entity_key(rule, entity))
        return rec["status"] if rec else _INACTIVE

    def get(self, rule: str, entity: dict[str, str]) -> dict[str, Any] | None:
        """A copy of one alert's stored record (None if it never fired or was shrunk after resolving)."""
        rec = self.alerts.get(entity_key(rule, entity))
        return dict(rec) if rec and "active" in rec else None

    def firing(self) -> list[Alert]:
        """Alerts Alertmanager was told are firing, in alert-key order (for the periodic re-send: Alertmanager
        resolves an alert that is not re-sent before its ``endsAt``). A flapping alert stays in the state
        last notified. The sink builds its wire format from them."""
        out = []
        for key in sorted(self._live):
            rec = self.alerts.get(key)
            spec = self.rules.get(key[0])
            if rec is None or spec is None or not rec.get("am_firing"):
                continue
            out.append(Alert(labels=self._labels(key, spec), annotations=self._annotations(key, rec, spec),
                             starts_at=rec["starts_at"], generator_url=self.generator_url))
        return out

    # -- outbox -------------------------------------------------------------------------------------
    def pop_outbox(self, max_n: int = 500, sink: str | None = None) -> list[tuple[int, Transition]]:
        """The oldest ``max_n`` outbox items (not yet delivered to ``sink``, if given), oldest first.

        Items stay in the outbox until acknowledged with ``ack_outbox``. An item's ``delivered`` lists the
        sinks that already have it: each sink's own cursor.
        """
        if sink is None:
            seqs = heapq.nsmallest(max_n, self.outbox.keys())
        else:
            data = self.outbox.data
            seqs = heapq.nsmallest(max_n, (s for s, item in data.items() if sink not in item.get("delivered", ())))
        return [(s, Transition.from_record(self.outbox[s])) for s in seqs]

    def update_outbox(self, seq: int, delivered: Iterable[str]) -> None:
        """Record that item ``seq`` reached the sinks in ``delivered`` (kept; the rest retry later)."""
        item = self.outbox.get(seq)
        if item is None:
            return
        item["delivered"] = sorted(set(delivered))
        self.outbox.mark(seq)

    def ack_outbox(self, seqs: Iterable[int], sink: str | None = None) -> None:
        """Delivered: drop the items (``sink`` None), or once every sink in ``self.sinks`` has them."""
        for seq in seqs:
            item = self.outbox.get(seq)
            if item is None:
                continue
            if sink is not None:
                done = set(item.get("delivered", ())) | {sink}
                if not self.sinks <= done:
                    self.update_outbox(seq, done)
                    continue
            del self.outbox[seq]

    def outbox_size(self) -> int:
        return len(self.outbox)
