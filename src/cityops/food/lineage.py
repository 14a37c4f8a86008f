"""Durable, bounded lot history: what happened to each lot, its inputs and its containers, in StateStore tables."""

from __future__ import annotations

from typing import Any

from cityops.engine.codec import Codec, StateStruct
from cityops.engine.state import StateStore, Table
from cityops.food.epcis import canonical_id

__all__ = [
    "COMMISSIONED",
    "INSPECTED_NC",
    "INSPECTED_OK",
    "Lineage",
    "RECEIVED",
    "SOLD",
    "TRACED",
    "UNTRACED_ALERTED",
    "Lot",
    "Cert",
]

# Fact bits of a lot's own history.
COMMISSIONED = 1  # ObjectEvent commissioning: slaughter, per CBV ("slaughtering (of livestock)")
INSPECTED_OK = 2  # inspecting with disposition conformant
RECEIVED = 4  # receiving
INSPECTED_NC = 8  # inspecting with disposition non_conformant
SOLD = 16  # retail_selling
UNTRACED_ALERTED = 32  # FoodUntracedSale already signalled for this lot
TRACED = COMMISSIONED | INSPECTED_OK | RECEIVED



class Lot(StateStruct, kw_only=True):
    """``food_lots``: what is known of one lot (canonical id)."""

    facts: int = 0  # bitmask of COMMISSIONED, INSPECTED_OK, ...
    seen: float  # last event time that named it, epoch s
    upstream: list[str] = []  # its inputs and containers, canonical ids (at most max_links)


class Cert(StateStruct, kw_only=True):
    """``food_certs``: where one quarantine certificate was used."""

    locations: list[str]  # distinct inspection locations (at most 64)
    seen: float  # last use, event time epoch s


LOT_CODEC = Codec("food_lot", Lot, migrations={0: lambda k, v: {"facts": v[0], "seen": v[1], "upstream": v[2]}})
CERT_CODEC = Codec("food_cert", Cert, migrations={0: lambda k, v: {"locations": v[0], "seen": v[1]}})
FOOD_META_CODEC = Codec("food_clock", float, migrations={0: lambda k, v: v})  # max_ts / last_sweep, epoch s

_SWEEP_EVERY_S = 3600.0


class Lineage:
    """Per-lot facts plus links to inputs (TransformationEvent) and containers (AggregationEvent parentID).

    ``retention_s``: a lot not seen for this long in event time (default 7 days) is dropped, and so are
    quarantine certificates; swept at most once per event-time hour of the retention clock. That clock is the
    food stream's partition clock handed to ``record`` (``cityops.engine.clocks``: one event dated far ahead
    cannot move it), never one event's own time. ``max_nodes`` bounds one history walk;
    ``max_links`` bounds the upstream list of one lot.
    Tables (names prefixed ``food_``): ``food_lots``, ``food_certs``, ``food_meta``.
    """

    def __init__(self, store: StateStore, *, retention_s: float = 7 * 86400.0, max_nodes: int = 10_000,
                 max_links: int = 256) -> None:
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s}")
        self.store = store
        self.retention_s = float(retention_s)
        self.max_nodes = max_nodes
        self.max_links = max_links
        self.lots: Table[str, Lot] = store.table("food_lots", LOT_CODEC)
        self.certs: Table[str, Cert] = store.table("food_certs", CERT_CODEC)
        self.meta: Table[str, float] = store.table("food_meta", FOOD_META_CODEC)

    # -- writes --------------------------------------------------------------------------------------------
    def _lot(self, lot: str, ts: float) -> Lot:
        rec = self.lots.data.get(lot)
        if rec is None:
            rec = Lot(seen=ts)
            self.lots[lot] = rec
        else:
            if ts > rec.seen:
                rec.seen = ts
            self.lots.mark(lot)
        return rec

    def touch(self, lots: list[str], ts: float) -> None:
        for lot in lots:
            self._lot(lot, ts)

    def add_fact(self, lots: list[str], fact: int, ts: float) -> None:
        for lot in lots:
            self._lot(lot, ts).facts |= fact

    def link(self, lots: list[str], upstream: list[str], ts: float) -> None:
        """Each of ``lots`` now has ``upstream`` (inputs or container) in its history."""
        if not upstream:
            return
        self.touch(upstream, ts)
        for lot in lots:
            ups = self._lot(lot, ts).upstream
            for u in upstream:
                if u != lot and u not in ups and len(ups) < self.max_links:
                    ups.append(u)

    def record(self, ev: dict[str, Any], ts: float, clock: float | None = None) -> None:
        """Apply one normalised event (see ``cityops.food.stream.normalise``) at event time ``ts``.

        ``clock``: the retention clock (the event's partition clock, epoch s); None = ``ts`` (standalone use).
        """
        kind, step, disp = ev["type"], ev["step"], ev["disp"]
        own: list[str] = ev["own"] + ev["parent"] + ev["children"] + ev["outputs"]
        if kind == "TransformationEvent":
            self.link(ev["outputs"], ev["inputs"], ts)
        elif kind == "AggregationEvent" and ev["action"] in ("ADD", "OBSERVE") and ev["parent"]:
            # Kept after a later DELETE too: what happened to the crate while the cut was in it stays history.
            self.link(ev["children"], ev["parent"], ts)
        fact = 0
        if step == "commissioning" and kind == "ObjectEvent":
            fact = COMMISSIONED  # a TransformationEvent commissioning its outputs is processing, not slaughter
        elif step == "inspecting":
            fact = INSPECTED_OK if disp == "conformant" else INSPECTED_NC if disp == "non_conformant" else 0
        elif step == "receiving":
            fact = RECEIVED
        elif step == "retail_selling":
            fact = SOLD
        if fact:
            self.add_fact(own, fact, ts)
        else:
            self.touch(own + ev["inputs"], ts)
        self._advance(ts if clock is None else clock)

    def certificate(self, cert: str, location: str, ts: float) -> int:
        """Note ``cert`` on an inspection at ``location``; returns how many distinct locations used it."""
        rec = self.certs.data.get(cert)
        if rec is None:
            self.certs[cert] = Cert(locations=[location], seen=ts)
            return 1
        locs = rec.locations
        if location not in locs and len(locs) < 64:
            locs.append(location)
        rec.seen = max(rec.seen, ts)
        self.certs.mark(cert)
        return len(locs)

    def mark_alerted(self, lot: str) -> bool:
        """Set the lot's untraced-sale alert bit; True if it was not set before."""
        rec = self.lots.data.get(lot)
        if rec is None or rec.facts & UNTRACED_ALERTED:
            return False
        rec.facts |= UNTRACED_ALERTED
        self.lots.mark(lot)
        return True

    # -- reads ---------------------------------------------------------------------------------------------
    def own_facts(self, lot: str) -> int:
        rec = self.lots.data.get(canonical_id(lot))
        return rec.facts if rec is not None else 0

    def facts(self, lot: str, want: int = TRACED) -> int:
        """Union of fact bits over the lot's history: itself, its inputs and containers, transitively.

        Stops early once every bit of ``want`` is found; walks at most ``max_nodes`` lots. ``lot`` in any
        spelling (EPC URN or Digital Link).
        """
        lot = canonical_id(lot)
        data = self.lots.data
        seen = {lot}
        stack = [lot]
        got = 0
        while stack and len(seen) <= self.max_nodes:
            rec = data.get(stack.pop())
            if rec is None:
                continue  # never seen, or dropped by retention
            got |= rec.facts
            if got & want == want:
                break
            for u in rec.upstream:
                if u not in seen:
                    seen.add(u)
                    stack.append(u)
        return got

    def traced(self, lot: str) -> bool:
        """History holds commissioning, a conformant inspection and a receiving."""
        return self.facts(lot, TRACED) & TRACED == TRACED

    def upstream(self, lot: str) -> list[str]:
        rec = self.lots.data.get(canonical_id(lot))
        return list(rec.upstream) if rec is not None else []

    # -- retention -----------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """The retention clock (epoch s): the highest clock ``record`` was given, 0.0 before any."""
        return float(self.meta.get("max_ts", 0.0))

    def _advance(self, ts: float) -> None:
        meta = self.meta
        if ts > meta.data.get("max_ts", float("-inf")):
            meta["max_ts"] = ts
            last = meta.data.get("last_sweep")
            if last is None:
                meta["last_sweep"] = ts
            elif ts - last >= _SWEEP_EVERY_S:
                self.sweep(ts)

    def sweep(self, now: float) -> int:
        """Drop lots and certificates last seen before ``now - retention_s``; returns how many were dropped."""
        horizon = now - self.retention_s
        old = [k for k, rec in self.lots.data.items() if rec.seen < horizon]
        for k in old:
            del self.lots[k]
        old_certs = [k for k, rec in self.certs.data.items() if rec.seen < horizon]
        for k in old_certs:
            del self.certs[k]
        self.meta["last_sweep"] = now
        return len(old) + len(old_certs)
