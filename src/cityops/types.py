"""The typed interfaces between the engine, the rules and the outputs (like ``faust/types``): one module.

- ``AlertState``: an alert's status words (the lifecycle's and Alertmanager's: firing, resolved).
- ``Alert``: an alert that is firing as the domain sees it (labels, annotations, event-time start); a sink
  turns it into its own wire format (``cityops.sinks.alertmanager.to_postable``), the domain never does.
- ``Transition``: one alert lifecycle change, as queued in the durable alert outbox. Its durable encoding
  is the ``TransitionRecord`` map (``cityops.alerts.lifecycle.TRANSITION_CODEC``, shape
  ``alert_transition`` version 1, unchanged since format 0): ``to_record``/``from_record`` convert.
- ``RuleContext``: what the engine tells rule kinds besides the event (clocks, source registry, start
  time), as typed fields: no string keys in a shared dict.
- ``Sink``: one output contract for every destination (Kafka topics, InfluxDB, Alertmanager): write a
  batch of ``(cursor, item)`` and get back a ``SinkResult`` — what was done, what to retry later (kept in
  the outbox, in order), what was rejected with why (never retried; dead-lettered or counted by the
  caller). Each sink has its own outbox cursor: ``name`` keys its deliveries in the outbox, so one
  output's outage never holds back another.
- The agent plugin API (``AgentPlugin``, ``StreamFactory``, ``StreamSetup``, ``Stream``): what a package adds
  to the worker — streams with their KPIs, rule kinds, manifests with runbooks, contracts, dashboards. The
  built-in agents are declared with it too (``cityops.builtin``); ``cityops.plugins`` loads them and the
  installed packages' entry points (group ``cityops.agents``). For plugin code, the names it builds on are
  importable from here as well: ``Kpi``, ``Fields``, ``JsonStream``, ``Decoded``, ``Rejected``, ``Context``,
  ``RuleKind``, ``RuleSpec``, ``REQUIRED``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, Required, TypedDict, TypeVar, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from cityops.alerts.kinds import RuleKind
    from cityops.alerts.spec import RuleSpec
    from cityops.engine.context import Context, Decoded, Rejected
    from cityops.engine.windows import Kpi
    from cityops.settings import Settings

__all__ = [
    "AgentPlugin", "Alert", "AlertState", "RuleContext", "Sink", "SinkResult", "Stream", "StreamFactory",
    "StreamSetup", "Transition", "TransitionRecord",
]


class AlertState(enum.StrEnum):
    """An alert's status. ``INACTIVE``/``PENDING``/``FIRING`` are states; ``RESOLVED`` and ``FLAPPING``
    are also notified as transitions. A ``StrEnum``: equal to (and stored as) its lowercase word."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    FLAPPING = "flapping"


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """An alert the domain has firing (Alertmanager was last told "firing").

    ``labels``: label name -> value (``alertname``, ``severity``, ``domain``, the rule's labels and the
    entity); ``annotations``: ``summary``, ``description``, ``runbook_url``; ``starts_at``: event time
    the episode started (epoch s); ``generator_url``: back-link, "" = none.
    """

    labels: dict[str, str]
    annotations: dict[str, str] = {}
    starts_at: float
    generator_url: str = ""

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


class TransitionRecord(TypedDict, total=False):
    """Durable shape of a ``Transition`` in table ``alert_outbox`` (seq -> record); times are event time (s)."""

    id: Required[str]  # rule|entity|n: the same transition always has the same id
    alertname: Required[str]
    status: Required[str]
    previous: Required[str | None]
    am_action: Required[str | None]
    severity: Required[str]
    domain: Required[str]
    entity: Required[dict[str, str]]
    labels: Required[dict[str, str]]
    annotations: Required[dict[str, str]]
    starts_at: Required[float | None]
    ends_at: Required[float | None]
    value: Required[float]
    ts: Required[float]
    generator_url: str
    delivered: list[str]  # sinks that already have it


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One alert lifecycle change (see ``cityops.alerts.lifecycle`` for the statuses).

    ``id``: ``rule|entity|n`` (the same transition always has the same id); ``status``: the state notified;
    ``previous``: the state notified before (None = first); ``am_action``: what Alertmanager must be told
    (``FIRING``, ``RESOLVED`` or None = nothing); ``entity``: the alert's entity labels; ``starts_at``:
    episode start, ``ends_at``: end (resolved only), ``ts``: when it happened — event time, epoch s;
    ``value``: the rule's last measured value; ``delivered``: sinks that already have it.
    """

    id: str
    alertname: str
    status: AlertState
    previous: AlertState | None
    am_action: AlertState | None
    severity: str
    domain: str
    entity: dict[str, str]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float | None
    ends_at: float | None
    value: float
    ts: float
    generator_url: str = ""
    delivered: tuple[str, ...] = ()

    def to_record(self) -> TransitionRecord:
        """The durable map (``TransitionRecord``); also the value published on ``cityops.alerts`` (without
        ``delivered``)."""
        rec: TransitionRecord = {
            "id": self.id, "alertname": self.alertname, "status": str(self.status),
            "previous": None if self.previous is None else str(self.previous),
            "am_action": None if self.am_action is None else str(self.am_action),
            "severity": self.severity, "domain": self.domain, "entity": dict(self.entity),
            "labels": dict(self.labels), "annotations": dict(self.annotations), "starts_at": self.starts_at,
            "ends_at": self.ends_at, "value": self.value, "ts": self.ts,
        }
        if self.generator_url:
            rec["generator_url"] = self.generator_url
        if self.delivered:
            rec["delivered"] = sorted(self.delivered)
        return rec

    @classmethod
    def from_record(cls, rec: TransitionRecord | dict[str, Any]) -> "Transition":
        """The typed value of a durable record (a ``TransitionRecord``)."""
        prev, action = rec["previous"], rec["am_action"]
        return cls(
            id=rec["id"], alertname=rec["alertname"], status=AlertState(rec["status"]),
            previous=None if prev is None else AlertState(prev),
            am_action=None if action is None else AlertState(action),
            severity=rec["severity"], domain=rec["domain"], entity=rec["entity"], labels=rec["labels"],
            annotations=rec["annotations"], starts_at=rec["starts_at"], ends_at=rec["ends_at"],
            value=rec["value"], ts=rec["ts"], generator_url=rec.get("generator_url", ""),
            delivered=tuple(rec.get("delivered", ())),
        )


@dataclass(slots=True)
class RuleContext:
    """The engine's facts for rule kinds (``Context.rule``), kept current by the engine.

    ``sources``: the source registry (a ``cityops.alerts.sources.SourceRegistry``; None = no registry:
    rules that need one do nothing). ``engine_start_ts``: event time (epoch s) of the first data the
    engine ever committed; silence of never-heard sources counts from it (None = no data yet).
    ``stream_clocks``: stream (topic) -> its event-time clock (the slowest partition still flowing,
    epoch s), set at each checkpoint; None = not computed (a rule then uses the ``on_tick`` time).
    ``kpi_stream``: KPI measurement -> the stream it is computed from.
    """

    sources: Any = None
    engine_start_ts: float | None = None
    stream_clocks: dict[str, float] | None = None
    kpi_stream: dict[str, str] = field(default_factory=dict)


K = TypeVar("K")
T = TypeVar("T", contravariant=True)


@dataclass
class SinkResult(Generic[K]):
    """What a sink did with a batch, by cursor (the keys the batch came with).

    ``done``: delivered (or nothing to deliver: e.g. a pending alert for Alertmanager); ``retry``: not
    delivered for a reason that is not the data's (outage, 5xx, credentials refused) — keep it and try
    again, in order; ``rejected``: (key, reason) the destination will never take — never retried.
    """

    done: list[K] = field(default_factory=list)
    retry: list[K] = field(default_factory=list)
    rejected: list[tuple[K, str]] = field(default_factory=list)

    @property
    def settled(self) -> list[K]:
        """Keys that leave the outbox: done and rejected."""
        return self.done + [k for k, _ in self.rejected]


@runtime_checkable
class Sink(Protocol[T]):
    """One output. ``name`` keys its outbox cursor; ``write`` delivers a batch of ``(cursor, item)``.

    ``write`` never raises for the data or for an outage: those are ``rejected`` and ``retry``. It raises
    only for what no retry can fix without an operator (a ``ConfigError``).
    """

    name: str

    async def write(self, batch: Sequence[tuple[Any, T]]) -> SinkResult[Any]: ...


# --------------------------------------------------------------------------------------- agent plugins
@runtime_checkable
class Stream(Protocol):
    """A stream the engine consumes (one Kafka topic): how its messages decode, what an event does.

    ``name``: a short name for logs; ``topic``: the Kafka topic; ``kpis``: measurement -> ``Kpi`` of the
    windows ``apply`` fills (the engine writes them to InfluxDB). ``decode(raw)``: one result per event of
    the message, in order — a ``Decoded`` (event id, event time in epoch s, source, content digest, the
    typed event) or a ``Rejected`` (the reason, dead-lettered and counted); it never raises. ``apply(ev,
    ctx)``: an accepted, on-time event (``ctx.windows.acc(kpi, tag values, ev.ts)`` gives the window's
    accumulator). Optional: ``event_type`` (how an event waiting for the rules is read back from state) and
    ``restore(ctx)`` (see ``cityops.engine.context.StreamKind``).
    """

    name: str
    topic: str
    kpis: Mapping[str, Kpi]

    def decode(self, raw: bytes) -> list[Decoded | Rejected]: ...

    def apply(self, ev: Decoded, ctx: Context) -> None: ...


@dataclass(frozen=True)
class StreamSetup:
    """What a ``StreamFactory`` builds its stream from.

    ``settings``: the worker's settings; ``pseudonymize``: card number -> its keyed pseudonym (raw card
    numbers never leave ingest); ``rules``: alertname -> ``RuleSpec`` of every loaded manifest (empty when
    alerting is off), for a stream that evaluates rules itself (``AgentPlugin.stream_rule_kinds``).
    """

    settings: Settings
    pseudonymize: Callable[[str], str]
    rules: Mapping[str, RuleSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamFactory:
    """One stream a plugin adds, declared before it is built (topics are created before any stream exists).

    ``topic``: the Kafka topic; ``build(setup)``: the ``Stream`` (its ``topic`` and ``kpis`` must be these);
    ``kpis``: the ``Kpi`` declarations it writes (measurement names are unique across all plugins);
    ``partitions``: the topic's partitions — a number, a function of ``CITYOPS_TOPIC_PARTITIONS``, or None
    for ``CITYOPS_TOPIC_PARTITIONS`` itself. ``task``: the *task* the stream belongs to (``[a-z][a-z0-9_-]*``;
    None = the plugin's name): the streams of one task share one engine and its state, and each task runs
    on one worker at a time (``cityops.ha``); streams that share no state belong in different tasks, so
    that workers can run them in parallel. ``build`` may raise ``ConfigError`` (bad settings or rules).
    """

    topic: str
    build: Callable[[StreamSetup], Stream]
    kpis: tuple[Kpi, ...] = ()
    partitions: int | Callable[[int], int] | None = None
    task: str | None = None

    @classmethod
    def json(cls, topic: str, stream_class: Any, *, partitions: int | Callable[[int], int] | None = None,
             task: str | None = None) -> "StreamFactory":
        """The factory of a ``JsonStream`` subclass (``model``, ``kpis``, ``apply``) on ``topic``."""
        return cls(topic, lambda setup: stream_class(topic, topic, setup.pseudonymize),
                   tuple(stream_class.kpis.values()), partitions, task)

    def partitions_for(self, default: int) -> int:
        """The topic's partitions given ``CITYOPS_TOPIC_PARTITIONS`` = ``default`` (at least 1)."""
        p = self.partitions
        n = default if p is None else p(default) if callable(p) else p
        return max(1, int(n))


_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class AgentPlugin:
    """What one package adds to the worker; the built-in agents are declared the same way (``cityops.builtin``).

    ``name``: the plugin's name (lower-case, ``[a-z][a-z0-9_-]*``; ``CITYOPS_PLUGINS`` selects by it).
    ``streams``: its ``StreamFactory`` values. ``rule_kinds``: rule kind name -> ``RuleKind`` subclass (not
    registered with ``cityops.alerts.kinds.register``: the loader adds them, and sets the class's ``kind``).
    ``stream_rule_kinds``: rule kinds its streams evaluate themselves (kind -> one-shot), given their rules
    through ``StreamSetup.rules``. ``manifests``: a folder (a ``Path`` or ``importlib.resources`` Traversable
    on disk) of ``<agent>.yml`` manifests with their ``<agent>.md`` runbooks (format: agents/README.md).
    ``runbook_url``: URL of that folder for the alerts' ``runbook_url`` (``<url>/<agent>.md#<alertname>``;
    "" = ``CITYOPS_RUNBOOK_BASE/agents``). ``contracts``: a folder with ``<topic>/schema.json`` (JSON Schema
    2020-12 of one event) and ``<topic>/samples.jsonl`` per stream. ``dashboards``: a folder of Grafana
    dashboard JSON files.

    Raises TypeError or ValueError when a field has the wrong shape (the loader names the entry point).
    """

    name: str
    streams: tuple[StreamFactory, ...] = ()
    rule_kinds: Mapping[str, type[RuleKind]] = field(default_factory=dict)
    stream_rule_kinds: Mapping[str, bool] = field(default_factory=dict)
    manifests: Traversable | Path | None = None
    runbook_url: str = ""
    contracts: Traversable | Path | None = None
    dashboards: Traversable | Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _PLUGIN_NAME.match(self.name):
            raise ValueError(f"name must match [a-z][a-z0-9_-]*, got {self.name!r}")
        object.__setattr__(self, "streams", tuple(self.streams))
        for i, f in enumerate(self.streams):
            if not isinstance(f, StreamFactory):
                raise TypeError(f"streams[{i}]: expected a cityops.types.StreamFactory, got {type(f).__name__}")
            if not isinstance(f.topic, str) or not _TOPIC.match(f.topic):
                raise ValueError(f"streams[{i}].topic: not a Kafka topic name: {f.topic!r}")
        from cityops.alerts.kinds import RuleKind

        for kind, cls in dict(self.rule_kinds).items():
            if not isinstance(cls, type) or not issubclass(cls, RuleKind):
                raise TypeError(f"rule_kinds[{kind!r}]: expected a RuleKind subclass, got {cls!r}")
        for key in ("manifests", "contracts", "dashboards"):
            folder = getattr(self, key)
            if folder is not None and not folder.is_dir():
                raise ValueError(f"{key}: {folder} is not a folder")

    @property
    def topics(self) -> tuple[str, ...]:
        """The Kafka topics of its streams."""
        return tuple(f.topic for f in self.streams)

    @property
    def kpis(self) -> tuple[Kpi, ...]:
        """Every ``Kpi`` its streams declare."""
        return tuple(k for f in self.streams for k in f.kpis)


# Names plugin code builds on, importable from this one module; loaded on first use (they import the engine,
# which imports this module).
_LAZY = {
    "Kpi": "cityops.engine.windows", "Fields": "cityops.engine.windows",
    "JsonStream": "cityops.streams.city_streams", "Decoded": "cityops.engine.context",
    "Rejected": "cityops.engine.context", "Context": "cityops.engine.context",
    "RuleKind": "cityops.alerts.kinds", "REQUIRED": "cityops.alerts.kinds", "RuleSpec": "cityops.alerts.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cityops.types' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
