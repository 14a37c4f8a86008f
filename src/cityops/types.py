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
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Required, TypedDict, TypeVar, runtime_checkable

import msgspec

__all__ = ["Alert", "AlertState", "RuleContext", "Sink", "SinkResult", "Transition", "TransitionRecord"]


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
