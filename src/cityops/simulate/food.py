"""Simulated pork chain of a 4.7-million city in GS1 EPCIS 2.0 JSON: slaughter -> inspection -> cutting -> cold chain -> markets.

Names of slaughterhouses, farms and outlets are illustrative (modelled on Changzhou's designated-slaughter system);
only 常州凌家塘农副产品批发市场 is a real market name. GS1 company prefixes (690xxxx) are made up.

Volume basis (estimate, see docs/food.md): 4.7 M people x ~30 kg pork/person/year = ~386 t/day, ~4,800 carcasses
(80 kg) a day of total demand; the city's designated slaughterhouses are taken to kill ~1,400 pigs a day (the rest
arrives as chilled/frozen pork from outside the city and is not simulated).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cityops.food.epcis import canonical_id, gs1_check_digit
from cityops.units import CITY_TZ

__all__ = [
    "CARCASSES_PER_DAY",
    "EVENTS_PER_CARCASS",
    "SLAUGHTERHOUSES",
    "TOPIC",
    "WHOLESALE_MARKET",
    "generate",
    "generate_with_truth",
]

TOPIC = "food.trace-events"
CONTEXT = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
TZ = CITY_TZ  # cityops.units: the one definition
TZ_OFFSET = "+08:00"  # CITY_TZ written as EPCIS eventTimeZoneOffset

POPULATION = 4_700_000
PORK_KG_PER_PERSON_YEAR = 30.0
CARCASS_KG = 80.0
CARCASSES_PER_DAY = 1_400  # local designated slaughter, estimate (total demand would be ~4,800/day)
CUTS_KG_PER_CARCASS = 65.0
CRATE_KG = 25.0
CRATES_PER_PALLET = 20
EVENTS_PER_CARCASS = 11.5  # measured on the default flow; converts ``rate`` (events/s) to carcasses/day

# (name, GS1 company prefix, identifiers as Digital Link?, share of the daily kill). Illustrative names.
SLAUGHTERHOUSES = [
    ("常州市武进区生猪定点屠宰场（示例）", "6901001", False, 0.35),
    ("常州市新北区生猪定点屠宰场（示例）", "6901002", True, 0.30),
    ("常州市金坛区生猪定点屠宰场（示例）", "6901003", False, 0.20),
    ("溧阳市生猪定点屠宰场（示例）", "6901004", True, 0.15),
]
WHOLESALE_MARKET = ("常州凌家塘农副产品批发市场", "6903000")
FARM_COUNT = 24
WET_MARKETS, SUPERMARKETS, RESTAURANTS = 60, 30, 120
TRUCKS = 40
# (cut name, item reference suffix, share of saleable weight)
CUTS = [("前腿肉 shoulder", 1, 0.22), ("后腿肉 ham", 2, 0.28), ("五花肉 belly", 3, 0.20), ("里脊/大排 loin", 4, 0.15),
        ("排骨 ribs", 5, 0.15)]
CHILLED_LO, CHILLED_HI = 0.8, 3.4  # normal readings stay well inside the 0-4 °C range


def _sgln(prefix: str, ref: int, ext: str = "0") -> str:
    return f"urn:epc:id:sgln:{prefix}.{ref:0{12 - len(prefix)}d}.{ext}"


def _gtin(prefix: str, item: int, indicator: int = 0) -> str:
    body = f"{indicator}{prefix}{item:0{12 - len(prefix)}d}"
    return body + str(gs1_check_digit(body))


FARMS = [_sgln("6902000", i + 1) for i in range(FARM_COUNT)]
WM_LOC = _sgln(WHOLESALE_MARKET[1], 1)
WM_DOCK = _sgln(WHOLESALE_MARKET[1], 1, "DOCK1")
OUTLETS: list[tuple[str, str]] = (
    [("wet_market", _sgln("6904000", i + 1)) for i in range(WET_MARKETS)]
    + [("supermarket", _sgln("6904000", 1000 + i + 1)) for i in range(SUPERMARKETS)]
    + [("restaurant", _sgln("6904000", 5000 + i + 1)) for i in range(RESTAURANTS)]
)
_OUTLET_WEIGHTS = [0.5 / WET_MARKETS] * WET_MARKETS + [0.3 / SUPERMARKETS] * SUPERMARKETS \
    + [0.2 / RESTAURANTS] * RESTAURANTS
COLD_ROOMS: list[tuple[str, str]] = (
    [(_sgln(p, 1), _sgln(p, 1, "CHILL1")) for _, p, _, _ in SLAUGHTERHOUSES]
    + [(WM_LOC, _sgln(WHOLESALE_MARKET[1], 1, "COLD1"))]
    + [(loc, loc.rsplit(".", 1)[0] + ".COUNTER") for kind, loc in OUTLETS if kind == "supermarket"]
)
COLD_TICK_S = 900.0


def _truck(i: int) -> str:
    return _sgln("6905000", 1, f"TRUCK{i:03d}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, TZ).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class _Plan:
    no: int
    t0: float
    incident: str | None = None  # cert_reuse, no_inspection, non_conformant, cold_breach
    reuse_of: int | None = None


class _Sim:
    def __init__(self, seed: int, start: datetime, duration_s: float, rate: float | None, incidents: bool) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (e.g. datetime(..., tzinfo=ZoneInfo('Asia/Shanghai')))")
        if duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        self.seed = seed
        self.t_start = start.timestamp()
        self.t_end = self.t_start + duration_s
        per_day = CARCASSES_PER_DAY if rate is None else max(1.0, rate * 86400.0 / EVENTS_PER_CARCASS)
        self.mean_pigs = 50
        self.batch_gap_s = 86400.0 / (per_day / self.mean_pigs)
        self.incidents = incidents
        self.truth: list[tuple[str, dict[str, str], datetime]] = []
        self.inspected: dict[int, float] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def rng(self, *key: Any) -> random.Random:
        return random.Random(":".join(map(str, (self.seed,) + key)))

    def event_id(self, *key: Any) -> str:
        digest = hashlib.sha256(":".join(map(str, (self.seed,) + key)).encode()).digest()
        return f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"

    def ev(self, t: float, kind: str, key: tuple[Any, ...], **fields: Any) -> tuple[float, dict[str, Any]]:
        t = round(t, 3)
        out: dict[str, Any] = {"type": kind, "eventID": self.event_id(*key), "eventTime": _iso(t),
                               "eventTimeZoneOffset": TZ_OFFSET}
        out.update(fields)
        return t, out

    # -- schedule --------------------------------------------------------------------------------------------
    def plans(self) -> Iterator[_Plan]:
        """Slaughter batches in start order; incidents pinned to fixed fractions of the run."""
        rng = self.rng("schedule")
        t = self.t_start + rng.uniform(0, self.batch_gap_s)
        marks = {"cert_reuse": 0.2, "no_inspection": 0.3, "non_conformant": 0.4, "cold_breach": 0.5}
        pending = dict(marks) if self.incidents else {}
        no = 0
        while t < self.t_end:
            incident = None
            frac = (t - self.t_start) / (self.t_end - self.t_start)
            for name, at in list(pending.items()):
                if frac >= at and no > 0:
                    incident = name
                    del pending[name]
                    break
            yield _Plan(no, t, incident, no - 1 if incident == "cert_reuse" else None)
            no += 1
            t += self.batch_gap_s * rng.uniform(0.6, 1.4)

    def slaughterhouse(self, no: int) -> int:
        r = self.rng("sh", no).random()
        acc = 0.0
        for i, (_, _, _, share) in enumerate(SLAUGHTERHOUSES):
            acc += share
            if r < acc:
                return i
        return len(SLAUGHTERHOUSES) - 1

    def certificate(self, no: int) -> str:
        # 动物检疫合格证明 number; the issuing site is illustrative.
        return f"https://cert.example.cn/aq/A{3204_0000_0000 + no * 7919 + self.seed % 1000:013d}"

    # -- one slaughter batch ---------------------------------------------------------------------------------
    def batch(self, plan: _Plan) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng("batch", plan.no)
        no, t0 = plan.no, plan.t0
        sh = self.slaughterhouse(no)
        if plan.incident == "cert_reuse":
            assert plan.reuse_of is not None
            other = self.slaughterhouse(plan.reuse_of)
            if other == sh:
                sh = (sh + 1) % len(SLAUGHTERHOUSES)
        name, prefix, dl, _ = SLAUGHTERHOUSES[sh]
        loc = _sgln(prefix, 1)
        line = _sgln(prefix, 1, "LINE1")
        dock = _sgln(prefix, 1, "DOCK1")
        day = datetime.fromtimestamp(t0, TZ).strftime("%y%m%d")
        pigs = rng.randint(40, 60)
        farm = FARMS[rng.randrange(len(FARMS))]
        carcass_gtin = _gtin(prefix, 10000)
        serial0 = no * 100
        if dl:
            carcasses = [f"https://id.gs1.org/01/{carcass_gtin}/21/{day}{serial0 + i:07d}" for i in range(pigs)]
        else:
            carcasses = [f"urn:epc:id:sgtin:{prefix}.0{10000:0{12 - len(prefix) - 1}d}.{day}{serial0 + i:07d}"
                         for i in range(pigs)]
        lot_code = f"{day}B{no:05d}"

        def cut_lot(item: int) -> str:
            if dl:
                return f"https://id.gs1.org/01/{_gtin(prefix, 20000 + item)}/10/{lot_code}"
            return f"urn:epc:class:lgtin:{prefix}.0{20000 + item:0{12 - len(prefix) - 1}d}.{lot_code}"

        def sscc(kind: int, n: int) -> str:
            ref = f"{kind}{no:06d}{n:03d}"  # extension digit + serial reference: 17 - len(prefix) digits
            ref = ref[-(17 - len(prefix)):].rjust(17 - len(prefix), "0")
            if dl:
                body = ref[0] + prefix + ref[1:]
                return f"https://id.gs1.org/00/{body}{gs1_check_digit(body)}"
            return f"urn:epc:id:sscc:{prefix}.{ref}"

        out: list[tuple[float, dict[str, Any]]] = []
        cert = self.certificate(plan.reuse_of if plan.incident == "cert_reuse" else no)
        out.append(self.ev(t0, "ObjectEvent", (no, "slaughter"), action="ADD", bizStep="commissioning",
                           disposition="active", epcList=carcasses, readPoint={"id": line}, bizLocation={"id": loc},
                           sourceList=[{"type": "location", "source": farm}]))
        t_insp = t0 + rng.uniform(1800, 3000)
        if plan.incident != "no_inspection":
            verdict = "non_conformant" if plan.incident == "non_conformant" else "conformant"
            out.append(self.ev(t_insp, "ObjectEvent", (no, "inspect"), action="OBSERVE", bizStep="inspecting",
                               disposition=verdict, epcList=carcasses, readPoint={"id": line},
                               bizLocation={"id": loc}, certificationInfo=cert))
            self.inspected[no] = round(t_insp, 3)
            if plan.incident == "cert_reuse":
                # The alert starts when the second location shows up, whichever inspection that is.
                second = max(round(t_insp, 3), self.inspected.get(plan.reuse_of, -math.inf))
                self.truth.append(("FoodCertificateReuse", {"certificate": cert}, datetime.fromtimestamp(second, TZ)))
            if verdict == "non_conformant":
                out.append(self.ev(t_insp + rng.uniform(600, 1800), "ObjectEvent", (no, "destroy"), action="DELETE",
                                   bizStep="destroying", disposition="destroyed", epcList=carcasses,
                                   readPoint={"id": line}, bizLocation={"id": loc}))
                return out
        # Cutting (chilling is shortened to ~2.5 h so short runs see whole chains).
        t_cut = t0 + rng.uniform(8400, 9600)
        total = pigs * CUTS_KG_PER_CARCASS * rng.uniform(0.95, 1.05)
        lots = [(cut_lot(item), total * share) for _, item, share in CUTS]
        out.append(self.ev(t_cut, "TransformationEvent", (no, "cut"), inputEPCList=carcasses,
                           outputQuantityList=[{"epcClass": lot, "quantity": round(kg, 1), "uom": "KGM"}
                                               for lot, kg in lots],
                           bizStep="commissioning", disposition="active", readPoint={"id": line},
                           bizLocation={"id": loc}))
        # Packing into crates (each crate ~25 kg, one or two cut lots) and crates onto pallets.
        crates: list[tuple[str, list[tuple[str, float]]]] = []
        k = 0
        t = t_cut + 300
        for lot, kg in lots:
            left = kg
            while left > 1.0:
                take = min(left, CRATE_KG * rng.uniform(0.9, 1.0))
                left -= take
                crate = sscc(1, k)
                k += 1
                crates.append((crate, [(lot, round(take, 1))]))
                t += rng.uniform(5, 15)
                out.append(self.ev(t, "AggregationEvent", (no, "pack", crate), parentID=crate,
                                   childQuantityList=[{"epcClass": lot, "quantity": round(take, 1), "uom": "KGM"}],
                                   action="ADD", bizStep="packing", disposition="in_progress",
                                   readPoint={"id": line}, bizLocation={"id": loc}))
        rng.shuffle(crates)
        pallets: list[tuple[str, list[str]]] = []
        for j in range(0, len(crates), CRATES_PER_PALLET):
            pallet = sscc(2, j // CRATES_PER_PALLET)
            members = [c for c, _ in crates[j:j + CRATES_PER_PALLET]]
            pallets.append((pallet, members))
            t += rng.uniform(20, 60)
            out.append(self.ev(t, "AggregationEvent", (no, "pallet", pallet), parentID=pallet, childEPCs=members,
                               action="ADD", bizStep="packing", disposition="container_closed",
                               readPoint={"id": dock}, bizLocation={"id": loc}))
        pallet_ids = [p for p, _ in pallets]
        # Cold-chain transport to the wholesale market.
        t_dep = t + rng.uniform(300, 900)
        out.append(self.ev(t_dep, "ObjectEvent", (no, "ship"), action="OBSERVE", bizStep="shipping",
                           disposition="in_transit", epcList=pallet_ids, readPoint={"id": dock},
                           bizLocation={"id": loc}, destinationList=[{"type": "location", "destination": WM_LOC}]))
        breach = plan.incident == "cold_breach"
        # The breach gets a truck of its own so no other trip's readings interleave with it.
        truck = _truck(999) if breach else _truck(self.rng("truck", no).randrange(TRUCKS))
        trip = rng.uniform(5700, 6300) if breach else rng.uniform(2400, 4200)
        out += self.transport(rng, (no, "haul"), truck, pallet_ids, t_dep, trip, breach)
        t_arr = t_dep + trip + 60
        out.append(self.ev(t_arr, "ObjectEvent", (no, "wm_recv"), action="OBSERVE", bizStep="receiving",
                           disposition="in_progress", epcList=pallet_ids, readPoint={"id": WM_DOCK},
                           bizLocation={"id": WM_LOC}, sourceList=[{"type": "location", "source": loc}]))
        t = t_arr + rng.uniform(300, 900)
        for pallet, members in pallets:
            t += rng.uniform(30, 90)
            out.append(self.ev(t, "AggregationEvent", (no, "unpack", pallet), parentID=pallet, childEPCs=members,
                               action="DELETE", bizStep="unpacking", disposition="in_progress",
                               readPoint={"id": WM_DOCK}, bizLocation={"id": WM_LOC}))
        # Crates to outlets, on delivery routes of up to 10 stops.
        by_outlet: dict[int, list[tuple[str, list[tuple[str, float]]]]] = {}
        for crate in crates:
            i = rng.choices(range(len(OUTLETS)), weights=_OUTLET_WEIGHTS)[0]
            by_outlet.setdefault(i, []).append(crate)
        stops = sorted(by_outlet)
        rng.shuffle(stops)
        untraced: dict[str, float] = {}
        t_route = t + rng.uniform(600, 1800)
        for r in range(0, len(stops), 10):
            route = stops[r:r + 10]
            route_crates = [c for i in route for c, _ in by_outlet[i]]
            t_go = t_route + r * 60
            out.append(self.ev(t_go, "ObjectEvent", (no, "route", r), action="OBSERVE", bizStep="shipping",
                               disposition="in_transit", epcList=route_crates, readPoint={"id": WM_DOCK},
                               bizLocation={"id": WM_LOC}))
            van = _truck(TRUCKS + self.rng("van", no, r).randrange(TRUCKS))
            t_stop = t_go
            for i in route:
                t_stop += rng.uniform(600, 1500)
                kind, outlet = OUTLETS[i]
                here = [c for c, _ in by_outlet[i]]
                out.append(self.ev(t_stop, "ObjectEvent", (no, "recv", i), action="OBSERVE", bizStep="receiving",
                                   disposition="in_progress", epcList=here, readPoint={"id": outlet},
                                   bizLocation={"id": outlet}))
                if kind == "restaurant":
                    continue  # kitchens consume; no retail sale
                for crate, content in by_outlet[i]:
                    for lot, kg in content:
                        sales = rng.randint(1, 3)
                        for s in range(sales):
                            ts = t_stop + rng.uniform(1800, 8 * 3600)
                            out.append(self.ev(ts, "ObjectEvent", (no, "sale", crate, s), action="OBSERVE",
                                               bizStep="retail_selling", disposition="retail_sold",
                                               quantityList=[{"epcClass": lot, "quantity": round(kg / sales, 2),
                                                              "uom": "KGM"}],
                                               readPoint={"id": outlet}, bizLocation={"id": outlet}))
                            if plan.incident == "no_inspection":
                                untraced[lot] = min(untraced.get(lot, math.inf), round(ts, 3))
            out += self.transport(rng, (no, "van", r), van, route_crates, t_go, t_stop - t_go, False)
        for lot, ts in sorted(untraced.items(), key=lambda kv: kv[1]):
            self.truth.append(("FoodUntracedSale", {"lot": canonical_id(lot)}, datetime.fromtimestamp(ts, TZ)))
        return out

    def transport(self, rng: random.Random, key: tuple[Any, ...], truck: str, epcs: list[str], t_dep: float,
                  trip: float, breach: bool) -> list[tuple[float, dict[str, Any]]]:
        """transporting events with a temperature report every 5 min; a breach runs 6–9 °C from +20 to +75 min."""
        out = []
        temp = rng.uniform(1.5, 2.5)
        n = int(trip // 300)
        first_bad: float | None = None
        for j in range(1, n + 1):
            ts = t_dep + j * 300
            if breach and 1200 <= j * 300 <= 4500:
                temp = rng.uniform(6.0, 9.0)
                first_bad = first_bad if first_bad is not None else round(ts, 3)
            else:
                temp = min(CHILLED_HI, max(CHILLED_LO, (temp if temp <= CHILLED_HI else 2.5)
                                           + rng.uniform(-0.3, 0.3)))
            out.append(self.ev(ts, "ObjectEvent", key + (j,), action="OBSERVE", bizStep="transporting",
                               disposition="in_transit", epcList=epcs, readPoint={"id": truck},
                               sensorElementList=[{"sensorMetadata": {"time": _iso(ts)},
                                                   "sensorReport": [{"type": "gs1:Temperature",
                                                                     "value": round(temp, 1), "uom": "CEL"}]}]))
        if first_bad is not None:
            self.truth.append(("FoodColdChainBreach", {"location": canonical_id(truck)},
                               datetime.fromtimestamp(first_bad, TZ)))
        return out

    def cold_rooms(self, tick: int, t: float) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng("cold", tick)
        out = []
        for k, (site, room) in enumerate(COLD_ROOMS):
            temp = rng.uniform(CHILLED_LO + 0.4, CHILLED_HI - 0.4)
            out.append(self.ev(t + k * 2, "ObjectEvent", ("cold", tick, k), action="OBSERVE", epcList=[],
                               bizStep="sensor_reporting", readPoint={"id": room}, bizLocation={"id": site},
                               sensorElementList=[{"sensorReport": [{"type": "gs1:Temperature",
                                                                     "value": round(temp, 1), "uom": "CEL"}]}]))
        return out

    # -- merge in event time ---------------------------------------------------------------------------------
    def events(self) -> Iterator[dict[str, Any]]:
        heap: list[tuple[float, int, dict[str, Any]]] = []
        seq = 0
        plans = self.plans()
        nxt: _Plan | None = next(plans, None)
        tick = 0
        t_tick = math.ceil(self.t_start / COLD_TICK_S) * COLD_TICK_S
        while True:
            while True:  # every source starting at or before the earliest queued event must be queued first
                head = heap[0][0] if heap else math.inf
                if nxt is not None and nxt.t0 <= head and (t_tick > nxt.t0 or t_tick >= self.t_end):
                    for t, ev in self.batch(nxt):
                        heapq.heappush(heap, (t, seq, ev))
                        seq += 1
                    nxt = next(plans, None)
                elif t_tick < self.t_end and t_tick <= head:
                    for t, ev in self.cold_rooms(tick, t_tick):
                        heapq.heappush(heap, (t, seq, ev))
                        seq += 1
                    tick += 1
                    t_tick += COLD_TICK_S
                else:
                    break
            if not heap:
                return
            t, _, ev = heapq.heappop(heap)
            if t >= self.t_end:
                return
            yield ev


def _documents(events: Iterator[dict[str, Any]], batch: int) -> Iterator[tuple[str, dict[str, Any]]]:
    buf: list[dict[str, Any]] = []
    for ev in events:
        buf.append(ev)
        if len(buf) >= batch:
            yield TOPIC, _doc(buf)
            buf = []
    if buf:
        yield TOPIC, _doc(buf)


def _doc(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@context": CONTEXT, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": events[-1]["eventTime"], "epcisBody": {"eventList": events}}


def generate(*, seed: int, start: datetime, duration_s: float, rate: float | None = None, incidents: bool = False,
             batch: int = 1) -> Iterator[tuple[str, bytes | dict[str, Any]]]:
    """("food.trace-events", EPCISDocument dict with up to ``batch`` events), in non-decreasing event time.

    ``start``: timezone-aware start; ``duration_s``: seconds of event time; ``rate``: mean events/s to aim for
    (None = the city-scale estimate, ~1,400 carcasses/day, about 0.25 events/s); ``incidents``: add a reused
    certificate, an untraced sale (missing inspection), a non-conformant inspection and a >30 min cold-chain
    breach at 20/30/40/50 % of the run. Deterministic for a given seed and arguments.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    sim = _Sim(seed, start, duration_s, rate, incidents)
    yield from _documents(sim.events(), batch)


def generate_with_truth(*, seed: int, start: datetime, duration_s: float, rate: float | None = None,
                        incidents: bool = False, batch: int = 1
                        ) -> tuple[Iterator[tuple[str, bytes | dict[str, Any]]],
                                   list[tuple[str, dict[str, str], datetime]]]:
    """``generate``'s iterator plus the alerts it should cause: (rule, entity, condition start), complete upfront.

    Entities use canonical (GS1 Digital Link) identifiers, as the stream does. The non-conformant inspection has
    no alert rule (it shows in food_inspection.non_conformant) and is not listed.
    """
    dry = _Sim(seed, start, duration_s, rate, incidents)
    for _ in dry.events():  # a dry run: truth entries are only known once their batch is generated
        pass
    truth = sorted((r for r in dry.truth if r[2].timestamp() < dry.t_end), key=lambda r: (r[2], r[0]))
    return generate(seed=seed, start=start, duration_s=duration_s, rate=rate, incidents=incidents,
                    batch=batch), truth
