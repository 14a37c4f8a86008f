"""Rule kind ``lot_full``: a car park's occupancy at or above a share of its capacity (how long: the rule's ``for``)."""

from __future__ import annotations

from cityops.types import Context, Decoded, RuleKind

__all__ = ["LotFull"]


class LotFull(RuleKind):
    """A lot's reported ``occupied / capacity`` is >= ``min_occupancy``; recovered below it.

    Reported both ways per report, so the lifecycle's ``for`` is "full for longer than" and its
    ``resolve_after`` the hysteresis. Entity ``{"lot"}``; value: the occupancy ratio; ``stream``: the topic
    read (default ``parking.lot-occupancy``). Registered by the plugin (``cityops_parking.PLUGIN``).
    """

    params_schema = {
        "min_occupancy": (float, 0.95),
        "stream": (str, "parking.lot-occupancy"),
    }

    def check(self) -> None:
        if not 0 < self.params["min_occupancy"] <= 2:
            raise self.error("min_occupancy", f"must be in (0, 2], got {self.params['min_occupancy']!r}")

    def on_event(self, stream: str, ev: Decoded, ctx: Context) -> None:
        if stream != self.params["stream"]:
            return
        r = ev.event
        ratio = r.occupied / r.capacity
        full = ratio >= self.params["min_occupancy"]
        self.report(ctx, {"lot": r.lot}, ev.ts, active=full, value=round(ratio, 4),
                    summary=f"{r.occupied} of {r.capacity} spaces taken" if full else "",
                    description=f"reported by {ev.source}" if full else "")
