"""Reload the rule manifests without a restart (SIGHUP, or a changed file in the rules directory).

A reload is asked for at any time (``RuleReloader.request``) and applied by the next checkpoint, before its
commit (``cityops.runtime.Runtime.tick``), never while a record is being applied: the new rules take effect
at that commit, and the state they leave behind is committed together with it. A start is reconciled the
same way (``reconcile``) with the rules committed with the restored state (table ``alert_rules``), so rules
changed while the worker was down — or a reload that a crash interrupted — end exactly as a reload ends them.

What a rule keeps, compared by its manifest definition (``RuleSpec``):

- unchanged: everything — the rule instance, its state table, its alerts (no new transition);
- changed in ``for``, ``resolve_after``, ``flap_*``, ``summary``, ``description`` or its runbook: kept; the
  lifecycle applies the new timings from now on and the periodic re-send carries the new annotations;
- changed in its labels (``severity``, ``domain``, ``labels``): kept, and each alert Alertmanager holds as
  firing is re-announced: ``resolved`` under the old label set, ``firing`` under the new one, with the
  episode's start (Alertmanager tells alerts apart by their labels; otherwise the old one would stay active
  there until its lease ran out, and routing would not follow the new labels);
- changed in ``kind`` or ``params``: reset — its state table (detectors, per-entity counts) was computed with
  another meaning or other thresholds, and an alert raised under the old definition is not evidence under
  the new one: its alerts are ended (firing → ``resolved``, also at Alertmanager; pending → cancelled), its
  state table is dropped, and it starts as a new rule (raising again if the condition still holds);
- removed: its alerts are ended as above and its state table is dropped;
- added: starts empty.

An invalid manifest set is refused as a whole with the start-up message naming the file and key (logged at
ERROR, counted in ``cityops_manifest_reloads_total{result="refused"}``): the running rules stay.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cityops.alerts.kinds import state_table
from cityops.alerts.lifecycle import AlertEngine, spec_to_plain
from cityops.alerts.spec import RuleSpec
from cityops.engine.state import StateStore
from cityops.errors import ConfigError

__all__ = ["RuleChanges", "RuleReloader", "diff_rules", "reconcile", "rules_hash", "table_shapes"]

log = logging.getLogger("cityops.alerts.reload")

# RuleSpec fields whose change resets the rule (its state means something else), and those that are the
# alert's identity at Alertmanager (its label set).
EVALUATION_FIELDS = ("kind", "params")
LABEL_FIELDS = ("severity", "domain", "labels")


@dataclass(frozen=True)
class RuleChanges:
    """How the rules ``new`` differ from ``old``, by alertname (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()  # kind or params changed
    relabelled: tuple[str, ...] = ()  # severity, domain or labels changed (not reset)
    updated: tuple[str, ...] = ()  # only timings, texts or the runbook changed
    unchanged: tuple[str, ...] = ()
    ended_alerts: int = 0  # alerts of removed and reset rules ended with a transition
    relabelled_alerts: int = 0  # firing alerts re-announced under new labels

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.reset or self.relabelled or self.updated)

    def line(self) -> str:
        """``added=A,B removed=- reset=- relabelled=- updated=- unchanged=12 ended_alerts=0 ...``: for logs."""
        parts = [f"{name}={','.join(getattr(self, name)) or '-'}"
                 for name in ("added", "removed", "reset", "relabelled", "updated")]
        return " ".join(parts + [f"unchanged={len(self.unchanged)}", f"ended_alerts={self.ended_alerts}",
                                 f"relabelled_alerts={self.relabelled_alerts}"])

    def as_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed), "reset": list(self.reset),
                "relabelled": list(self.relabelled), "updated": list(self.updated),
                "unchanged": len(self.unchanged), "ended_alerts": self.ended_alerts,
                "relabelled_alerts": self.relabelled_alerts}


def _differs(a: RuleSpec, b: RuleSpec, names: Iterable[str]) -> bool:
    return any(getattr(a, n) != getattr(b, n) for n in names)


def diff_rules(old: Mapping[str, RuleSpec], new: Mapping[str, RuleSpec]) -> RuleChanges:
    """Classify every rule of ``old`` and ``new`` (see the module doc for what each class keeps)."""
    added, removed, reset, relabelled, updated, unchanged = [], [], [], [], [], []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            added.append(name)
        elif name not in new:
            removed.append(name)
        elif old[name] == new[name]:
            unchanged.append(name)
        elif _differs(old[name], new[name], EVALUATION_FIELDS):
            reset.append(name)
        elif _differs(old[name], new[name], LABEL_FIELDS):
            relabelled.append(name)
        else:
            updated.append(name)
    return RuleChanges(tuple(added), tuple(removed), tuple(reset), tuple(relabelled), tuple(updated),
                       tuple(unchanged))


def rules_hash(specs: Mapping[str, RuleSpec]) -> str:
    """A short content hash of a rule set (12 hex digits of SHA-256 over the specs by field name)."""
    doc = [spec_to_plain(specs[name]) for name in sorted(specs)]
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:12]


def table_shapes(instances: Iterable[Any]) -> dict[str, str]:
    """Alertname -> the shape of the state table its rule instance writes (``RuleKind.state_codec``)."""
    out = {}
    for rule in instances:
        codec = getattr(rule, "state_codec", None)
        if codec is not None:
            out[rule.name] = codec().shape
    return out


def reconcile(alerts: AlertEngine, store: StateStore, old: Mapping[str, RuleSpec] | None,
              new: Mapping[str, RuleSpec], *, one_shot: Iterable[str] | None = None,
              at: float | None = None, shapes: Mapping[str, str] | None = None) -> RuleChanges:
    """Bring the alert state kept for the rules ``old`` to the rules ``new`` (see the module doc).

    ``old``: the rules the state was made with; None = not known (state of a release before the
    ``alert_rules`` table): every rule of ``new`` is then taken as unchanged. ``at``: the event time (epoch s)
    of the ``resolved`` transitions of ended alerts (None: each alert's last evaluation). Call before the
    engine declares the new rules' tables. ``shapes``: alertname -> the state table shape of the new rule's
    kind (``table_shapes``; a rule not in it keeps none): a restored table of another shape is dropped.
    Nothing is committed here: the caller's next commit does it.
    """
    changes = diff_rules(new if old is None else old, new)
    ended = relabelled = 0
    for name in changes.removed + changes.reset:
        assert old is not None
        ended += alerts.end_alerts(name, old[name], at)
        alerts.forget_rule(name)
        dropped = store.drop_table(state_table(name))
        log.info("rule %s: alerts ended, state dropped rule=%s state_entries=%d",
                 "removed" if name in changes.removed else "redefined (kind or params)", name, dropped)
    for name in changes.relabelled:
        assert old is not None
        relabelled += alerts.relabel(name, old[name], new[name], at)
    for name, spec in new.items() if shapes is not None else ():
        # A table of this name written by another kind (state older than the rules record, or a rule that
        # changed kind while no rules record existed) cannot be read by this kind: it would stop the start.
        table = state_table(name)
        shape = store.restored_shape(table)
        if shape is not None and shape != shapes.get(name):
            dropped = store.drop_table(table)
            log.warning("state of rule %s written as %s, its kind %s keeps %s: dropped entries=%d", name, shape,
                        spec.kind, shapes.get(name) or "none", dropped)
    alerts.set_rules(new, one_shot)
    return RuleChanges(changes.added, changes.removed, changes.reset, changes.relabelled, changes.updated,
                       changes.unchanged, ended, relabelled)


def _fingerprint(directory: Path | None) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime ns, size) of the manifests and runbooks in ``directory``: cheap, a few stat calls."""
    if directory is None:
        return ()
    out = []
    try:
        for path in directory.iterdir():
            if path.suffix in (".yml", ".yaml", ".md"):
                try:
                    st = path.stat()
                except OSError:
                    continue
                out.append((path.name, st.st_mtime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(sorted(out))


class RuleReloader:
    """Reloads the manifests into a running worker: ``request()`` any time, ``apply_pending()`` at a commit.

    ``load(settings)`` -> (rules dir, specs by alertname) and ``build(rules_dir, specs)`` -> rule instances,
    ``one_shot(instances, specs)`` -> one-shot alertnames: how the worker loads and builds them at start
    (``cityops.alerts.wiring``), raising ``ConfigError`` naming the file and key. ``engine``: the
    ``cityops.engine.pipeline.Engine``; ``alerts``: its ``AlertEngine``; ``on_result(result)``: counts
    "ok" | "refused". ``watch_s``: poll the rules directory's files every this many seconds (0 = SIGHUP only).
    """

    def __init__(self, settings: Any, engine: Any, alerts: AlertEngine, rules_dir: Path | None, *,
                 load: Callable[[Any], tuple[Path | None, dict[str, RuleSpec]]],
                 build: Callable[[Path, dict[str, RuleSpec]], list[Any]],
                 one_shot: Callable[[list[Any], dict[str, RuleSpec]], set[str]],
                 on_result: Callable[[str], None] | None = None, watch_s: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.engine = engine
        self.alerts = alerts
        self.rules_dir = rules_dir
        self._load, self._build, self._one_shot = load, build, one_shot
        self.on_result = on_result
        self.watch_s = float(watch_s)
        self.clock = clock
        self.generation = 1
        self.hash = rules_hash(alerts.rules)
        self.last: dict[str, Any] | None = None
        self._requested: str | None = None
        self._files = _fingerprint(rules_dir)
        self._last_poll = clock()

    def request(self, why: str = "SIGHUP") -> None:
        """Ask for a reload at the next commit (safe from a signal handler: it only sets a flag)."""
        self._requested = why

    @property
    def pending(self) -> bool:
        return self._requested is not None

    def poll(self) -> None:
        """With ``watch_s``: request a reload when a manifest or runbook changed since the last load."""
        if self.watch_s <= 0 or self._requested is not None:
            return
        now = self.clock()
        if now - self._last_poll < self.watch_s:
            return
        self._last_poll = now
        if _fingerprint(self.rules_dir) != self._files:
            self.request("file change")

    def apply_pending(self) -> RuleChanges | None:
        """Apply a requested reload (call right before the commit); None when none was asked for or it was
        refused. Never raises for a bad manifest: it is logged at ERROR and the running rules stay."""
        why = self._requested
        if why is None:
            return None
        self._requested = None
        t0 = time.perf_counter()
        files = _fingerprint(self.rules_dir)
        try:
            rules_dir, specs = self._load(self.settings)
            if rules_dir is None:
                raise ConfigError("CITYOPS_RULES_DIR: none (alerting off) cannot be reloaded into a worker "
                                  "started with rules; restart it")
            instances = self._build(rules_dir, specs)
            reconfigure = [s for s in self.engine.streams.values() if hasattr(s, "reconfigure")]
            for stream in reconfigure:  # validate before anything changes
                type(stream).rule_config(specs.values())
            self._check_stream_rules(dict(self.alerts.rules), specs, [*instances, *self.engine.rules], reconfigure)
        except ConfigError as exc:
            self._files = files  # a further change of the files tries again
            message = " ".join(str(exc).split())  # one line (a YAML error spans several)
            self._result("refused", why, error=message)
            log.error("rules reload refused (%s): %s; the running rules stay (generation %d, %s)", why, message,
                      self.generation, self.hash)
            return None
        old = dict(self.alerts.rules)
        running = {getattr(r, "name", None): r for r in self.engine.rules}
        keep = {name for name in specs if name in old and old[name] == specs[name]}
        rules = [running[r.name] if r.name in keep and r.name in running else r for r in instances]
        one_shot = self._one_shot(rules, specs)
        at = self.engine.rules_clock(self.engine.now())
        changes = reconcile(self.alerts, self.engine.store, old, specs, one_shot=one_shot, at=at,
                            shapes=table_shapes(rules))
        self.engine.set_rules(rules)
        for stream in reconfigure:
            stream.reconfigure(specs.values())
        self.rules_dir = rules_dir
        self._files = files
        if changes.changed:
            self.generation += 1
        self.hash = rules_hash(specs)
        took = time.perf_counter() - t0
        self._result("ok", why, changes=changes.as_dict(), took_s=round(took, 4))
        log.info("rules reloaded (%s) generation=%d hash=%s rules=%d %s took_s=%.3f", why, self.generation,
                 self.hash, len(specs), changes.line(), took)
        return changes

    @staticmethod
    def _check_stream_rules(old: Mapping[str, RuleSpec], new: Mapping[str, RuleSpec], instances: list[Any],
                            reconfigure: list[Any]) -> None:
        """A rule evaluated by a stream's own code (no rule instance: the food rules) reaches that stream only
        through ``reconfigure``; a stream without it (a plugin's) takes new rules of its kinds at a restart
        only: ConfigError naming the rule rather than a reload that silently changes nothing."""
        coded = {r.spec.kind for r in instances if hasattr(r, "spec")}  # the new and the running instances
        reachable = {kind for s in reconfigure for kind in getattr(s, "rule_kinds", ())}
        for name in sorted(set(old) | set(new)):
            before, after = old.get(name), new.get(name)
            if before is not None and after is not None and not _differs(before, after, EVALUATION_FIELDS):
                continue  # only lifecycle, labels or texts changed: the lifecycle applies those, not the stream
            for spec in (before, after):
                if spec is not None and spec.kind not in coded and spec.kind not in reachable:
                    raise ConfigError(f"rule {name!r} (kind {spec.kind!r}) is evaluated by its stream, which "
                                      f"cannot take a changed rule of that kind without a restart: restart the worker")

    def _result(self, result: str, why: str, **extra: Any) -> None:
        self.last = {"result": result, "trigger": why, "at": round(self.clock(), 3), **extra}
        if self.on_result is not None:
            self.on_result(result)

    def status(self) -> dict[str, Any]:
        """For /healthz: ``{rules_dir, generation, hash, rules, pending, last_reload}``."""
        return {"rules_dir": str(self.rules_dir) if self.rules_dir else None, "generation": self.generation,
                "hash": self.hash, "rules": len(self.alerts.rules), "pending": self._requested,
                "watch_s": self.watch_s, "last_reload": self.last}
