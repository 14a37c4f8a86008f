"""What stream code may touch while applying an event: state tables, KPI windows, alert conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cityops.engine.state import StateStore
from cityops.engine.windows import Windows
from cityops.types import RuleContext


@dataclass(slots=True)
class Decoded:
    """One event that passed its contract: identity, event time and the normalized event."""

    event_id: str
    ts: float  # event time, epoch seconds (UTC)
    source: str
    digest: bytes  # hash of the event's content, to tell a duplicate from a tampered re-send
    event: Any
    index: int = 0  # position in its message (batches)


@dataclass(slots=True)
class Rejected:
    """One event (or whole message) that broke its contract, with a precise reason."""

    reason: str
    index: int | None = None  # position in its message batch; None = the whole message
    fragment: Any = None
    path: str | None = None  # JSON Pointer of the event in its message ("/3", "/epcisBody/eventList/3")


class Signals(Protocol):
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
        """Report a rule condition for one entity at event time ``ts`` (active = condition holds now)."""


@dataclass
class Context:
    """Handed to ``StreamKind.apply``: durable tables, KPI windows and the alert signal sink."""

    store: StateStore
    windows: Windows
    signals: Signals
    settings: Any
    # The engine's facts for rule kinds (clocks, source registry, start time): typed, shared by the
    # engine's contexts.
    rule: RuleContext = field(default_factory=RuleContext)
    # The clock of the partition the event being applied came from (event time, epoch s; see
    # cityops.engine.clocks): stream state is retained on it, never on one event's own time.
    clock: float | None = None


class StreamKind(Protocol):
    """A stream the engine consumes: how to decode its messages and what an accepted event does."""

    name: str
    topic: str
    # Optional ``event_type`` (or ``model``): the msgspec type of ``Decoded.event``, how an event waiting
    # for the rules is read back from durable state (default: plain maps).
    # Optional ``restore(ctx)``: declare the stream's durable tables (``ctx.store.table(name, codec)``);
    # the engine calls it at start-up.

    def decode(self, raw: bytes) -> list[Decoded | Rejected]: ...

    def apply(self, ev: Decoded, ctx: Context) -> None: ...
