"""``Engine.checkpoint(final=True)`` (the end of a backtest's input): every buffered event reaches the rules and
every open window is closed and shown to them; an ordinary checkpoint at the same moment keeps them open."""

from __future__ import annotations

from typing import Any

from cityops.engine.pipeline import Engine
from cityops.engine.state import StateStore
from tests.unit.engine.test_pipeline import T0, TAPS, b, make, tap


class Spy:
    """A rule that records what the engine hands it."""

    subscriptions = ("on_event",)

    def __init__(self) -> None:
        self.events: list[str] = []
        self.windows: list[tuple[str, float]] = []

    def on_event(self, stream: str, ev: Any, ctx: Any) -> None:
        self.events.append(ev.event_id)

    def on_window(self, measurement: str, tags: dict[str, str], fields: dict[str, Any], start: float,
                  ctx: Any) -> None:
        self.windows.append((measurement, start))

    def on_tick(self, ts: float, ctx: Any) -> None:
        pass


def feed() -> tuple[Engine, Spy, list[float]]:
    spy = Spy()
    clock = [T0]
    e = make(StateStore(None), rules=[spy], clock=clock)
    # Partition 0 runs to T0 + 300; partition 1 keeps sending (it flows) but its events stay at T0 + 60, so
    # the stream's watermark stays at T0 + 60.
    for i, at in enumerate((0, 60, 120, 180, 240, 300)):
        clock[0] = T0 + at
        e.process(TAPS, 0, i, b(tap(i, T0 + at)))
        e.process(TAPS, 1, i, b(tap(100 + i, T0 + min(at, 60))))
    return e, spy, clock


def ridership(e: Engine) -> list[int]:
    return sorted(k[2] for k in e.windows.table.data if k[0] == "traffic_ridership")


def test_an_ordinary_checkpoint_keeps_windows_open_and_events_buffered() -> None:
    e, spy, _ = feed()
    e.checkpoint()
    assert ridership(e) == [int(T0) + 60 * i for i in range(6)]  # watermark T0 + 60: none past lateness
    assert sorted(spy.events) == ["e0", "e1"] + [f"e{100 + i}" for i in range(6)]  # up to the watermark
    assert [w for w in spy.windows if w[0] == "traffic_ridership"] == []


def test_the_final_checkpoint_closes_every_window_and_releases_every_event() -> None:
    e, spy, _ = feed()
    res = e.checkpoint(final=True)
    assert e.windows.table.data == {}  # the processing-time quality windows too
    assert sorted(k[2] for k in res.closed if k[0] == "traffic_ridership") == [int(T0) + 60 * i for i in range(6)]
    assert sorted(spy.events) == sorted([f"e{i}" for i in range(6)] + [f"e{100 + i}" for i in range(6)])
    assert sorted(start for m, start in spy.windows if m == "traffic_ridership") == [T0 + 60 * i for i in range(6)]
    # The closed windows' final points are returned, each once.
    starts = sorted(p.ts for p in res.points if p.measurement == "traffic_ridership")
    assert starts == [int(T0) + 60 * i for i in range(6)]
