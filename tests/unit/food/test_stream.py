"""FoodStream.apply: KPIs, alert signals, hand-built chains, and the simulator's normal day and incidents."""

from __future__ import annotations

from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from cityops.alerts.lifecycle import AlertEngine
from cityops.alerts.manifest import load_manifests
from cityops.engine.context import Context, Rejected
from cityops.engine.state import StateStore
from cityops.engine.windows import Windows
from cityops.errors import ConfigError
from cityops.food.epcis import canonical_id
from cityops.food.stream import FOOD_KPIS, FoodStream
from cityops.simulate.food import generate, generate_with_truth

CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
SH = "urn:epc:id:sgln:6901001.00001.0"
SH2 = "urn:epc:id:sgln:6901002.00001.0"
MARKET = "urn:epc:id:sgln:6904000.00001.0"
TRUCK = "urn:epc:id:sgln:6905000.00001.TRUCK001"
CARCASS = "urn:epc:id:sgtin:6901001.010000.1"
CUT = "urn:epc:class:lgtin:6901001.020001.L1"
CRATE = "urn:epc:id:sscc:6901001.1000000001"
T0 = 1714521600.0  # 2024-05-01T08:00:00+08:00
SHANGHAI = ZoneInfo("Asia/Shanghai")


class Recorder:
    """Signals sink that keeps every call and the last state per (rule, entity)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], float, bool, float]] = []
        self.state: dict[tuple[str, tuple[tuple[str, str], ...]], bool] = {}
        self.first: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def signal(self, rule: str, entity: dict[str, str], ts: float, *, active: bool, value: float = 0.0,
               summary: str = "", description: str = "") -> None:
        self.calls.append((rule, dict(entity), ts, active, value))
        key = (rule, tuple(sorted(entity.items())))
        self.state[key] = active
        if active:
            self.first.setdefault(key, ts)

    def active(self, rule: str | None = None) -> list[tuple[str, dict[str, str]]]:
        return [(r, dict(e)) for (r, e), on in self.state.items() if on and (rule is None or r == rule)]


AGENTS = Path(__file__).resolve().parents[3] / "agents"
SHIPPED = load_manifests(AGENTS)  # the food rules' names and thresholds: only in agents/food-safety.yml


class Harness:
    def __init__(self, rules: Any = None, **kw: Any) -> None:
        self.stream = FoodStream.from_rules((SHIPPED if rules is None else rules).values(), **kw)
        self.store = StateStore(None)
        self.signals = Recorder()
        self.ctx = Context(self.store, Windows(self.store.table("windows"), FOOD_KPIS), self.signals, None)
        self.seen: set[str] = set()
        self.rejected: list[Rejected] = []
        self.ids = count()

    def feed(self, raw: bytes) -> None:
        for out in self.stream.decode(raw):
            if isinstance(out, Rejected):
                self.rejected.append(out)
            elif out.event_id not in self.seen:  # the engine's dedup
                self.seen.add(out.event_id)
                self.stream.apply(out, self.ctx)

    def send(self, t: float, step: str | None, epcs: list[str] = (), *, classes: list[str] = (),
             kind: str = "ObjectEvent", **kw: Any) -> None:
        ev: dict[str, Any] = {"type": kind, "eventID": f"urn:uuid:00000000-0000-4000-8000-{next(self.ids):012d}",
                              "eventTime": datetime.fromtimestamp(t, SHANGHAI).isoformat(timespec="milliseconds"),
                              "eventTimeZoneOffset": "+08:00"}
        if kind == "ObjectEvent":
            ev["action"] = kw.pop("action", "OBSERVE")
            ev["epcList"] = list(epcs)
            if classes:
                ev["quantityList"] = [{"epcClass": c, "quantity": 5, "uom": "KGM"} for c in classes]
        if step:
            ev["bizStep"] = step
        ev.update(kw)
        self.feed(orjson.dumps({"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
                                "creationDate": ev["eventTime"], "epcisBody": {"eventList": [ev]}}))

    def points(self, measurement: str) -> list[tuple[dict[str, str], dict[str, float], int]]:
        out = []
        for key in list(self.store.table("windows").keys()):
            if key[0] == measurement:
                p = self.ctx.windows.point(key)
                if p:
                    out.append((p[1], p[2], p[3]))
        return sorted(out, key=lambda p: (p[2], sorted(p[0].items())))

    def total(self, measurement: str, fld: str, **tags: str) -> float:
        return sum(f.get(fld, 0) for t, f, _ in self.points(measurement) if all(t[k] == v for k, v in tags.items()))

    # the standard chain
    def slaughter(self, t: float, carcass: str = CARCASS, loc: str = SH) -> None:
        self.send(t, "commissioning", [carcass], action="ADD", disposition="active", bizLocation={"id": loc})

    def inspect(self, t: float, carcass: str = CARCASS, disp: str = "conformant", cert: str | None = "cert:q1",
                loc: str = SH) -> None:
        kw: dict[str, Any] = {"certificationInfo": cert} if cert else {}
        self.send(t, "inspecting", [carcass], disposition=disp, bizLocation={"id": loc}, **kw)

    def cut(self, t: float, carcass: str = CARCASS, lot: str = CUT) -> None:
        self.send(t, "commissioning", kind="TransformationEvent", inputEPCList=[carcass],
                  outputQuantityList=[{"epcClass": lot, "quantity": 40, "uom": "KGM"}], bizLocation={"id": SH})

    def sell(self, t: float, lot: str = CUT) -> None:
        self.send(t, "retail_selling", classes=[lot], disposition="retail_sold", bizLocation={"id": MARKET})


def chain(h: Harness, *, inspect: str | None = "conformant", receive_before_sale: bool = True) -> None:
    h.slaughter(T0)
    if inspect:
        h.inspect(T0 + 60, disp=inspect)
    h.cut(T0 + 120)
    if receive_before_sale:
        h.send(T0 + 180, "receiving", classes=[CUT], bizLocation={"id": MARKET})
    h.sell(T0 + 240)
    if not receive_before_sale:
        h.send(T0 + 300, "receiving", classes=[CUT], bizLocation={"id": MARKET})


def test_kpi_registry() -> None:
    assert set(FOOD_KPIS) == {"food_trace", "food_chain", "food_inspection", "food_cold_chain"}
    assert FOOD_KPIS["food_trace"].tags == ("biz_step",)
    assert FOOD_KPIS["food_chain"].tags == ()
    assert FOOD_KPIS["food_inspection"].tags == FOOD_KPIS["food_cold_chain"].tags == ("location",)
    assert FoodStream.name == "food" and FoodStream.topic == "food.trace-events"


def test_fully_traced_chain() -> None:
    h = Harness()
    chain(h)
    (p,) = h.points("food_chain")
    assert p[1] == {"lots_sold": 1, "lots_traced": 1, "trace_rate": 1.0}
    assert h.signals.calls == []
    assert h.total("food_trace", "events", biz_step="commissioning") == 2
    assert h.total("food_trace", "events", biz_step="retail_selling") == 1


@pytest.mark.parametrize("inspect", [None, "non_conformant"])
def test_incomplete_chain_is_untraced_and_alerts_once(inspect: str | None) -> None:
    h = Harness()
    chain(h, inspect=inspect)
    h.sell(T0 + 250)  # sold again: one lot, one alert
    (p,) = h.points("food_chain")
    assert p[1] == {"lots_sold": 1, "lots_traced": 0, "trace_rate": 0.0}
    assert h.signals.calls == [("FoodUntracedSale", {"lot": canonical_id(CUT)}, T0 + 240, True, 0.0)]


def test_cut_traced_through_transformation_and_container() -> None:
    h = Harness()
    h.slaughter(T0)
    h.inspect(T0 + 60)
    h.cut(T0 + 120)
    h.send(T0 + 130, "packing", kind="AggregationEvent", action="ADD", parentID=CRATE,
           childQuantityList=[{"epcClass": CUT, "quantity": 20, "uom": "KGM"}])
    h.send(T0 + 180, "receiving", [CRATE], bizLocation={"id": MARKET})  # only the crate is scanned
    h.sell(T0 + 240)
    assert h.total("food_chain", "lots_traced") == 1 and h.signals.calls == []


def test_sold_before_receiving_is_untraced() -> None:
    h = Harness()
    chain(h, receive_before_sale=False)
    assert h.total("food_chain", "lots_sold") == 1 and h.total("food_chain", "lots_traced") == 0
    assert h.signals.active("FoodUntracedSale") == [("FoodUntracedSale", {"lot": canonical_id(CUT)})]


def test_repeated_event_counted_once() -> None:
    h = Harness()
    h.slaughter(T0)
    raw = orjson.dumps({"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
                        "creationDate": "2024-05-01T08:00:00+08:00", "epcisBody": {"eventList": [
                            {"type": "ObjectEvent", "action": "OBSERVE", "bizStep": "inspecting",
                             "disposition": "conformant", "epcList": [CARCASS], "bizLocation": {"id": SH},
                             "eventTime": "2024-05-01T08:01:00+08:00", "eventTimeZoneOffset": "+08:00"}]}})
    h.feed(raw)
    h.feed(raw)  # no eventID: the hash ID makes the re-send a duplicate
    assert h.total("food_inspection", "inspections") == 1


def test_inspection_kpis_and_certificate_reuse() -> None:
    h = Harness()
    h.inspect(T0, cert="https://cert.example.cn/aq/1")
    h.inspect(T0 + 10, carcass="urn:epc:id:sgtin:6901001.010000.2", disp="non_conformant",
              cert="https://cert.example.cn/aq/1")  # same place: not reuse
    assert h.signals.calls == []
    h.inspect(T0 + 20, carcass="urn:epc:id:sgtin:6901002.010000.3", cert="https://cert.example.cn/aq/1", loc=SH2)
    sh = canonical_id(SH)
    assert h.total("food_inspection", "inspections", location=sh) == 2
    assert h.total("food_inspection", "non_conformant", location=sh) == 1
    assert h.total("food_inspection", "inspections", location=canonical_id(SH2)) == 1
    assert h.signals.calls == [("FoodCertificateReuse", {"certificate": "https://cert.example.cn/aq/1"},
                                T0 + 20, True, 2.0)]


def _reading(h: Harness, t: float, value: float, uom: str = "CEL", loc: str = TRUCK) -> None:
    h.send(t, "transporting", [CRATE], disposition="in_transit", readPoint={"id": loc},
           sensorElementList=[{"sensorReport": [{"type": "gs1:Temperature", "value": value, "uom": uom}]}])


def test_cold_chain_counts_and_breach_signals() -> None:
    h = Harness()
    _reading(h, T0, 2.0)
    _reading(h, T0 + 300, 39.2, "FAH")  # 4.0 °C: still in range (inclusive)
    _reading(h, T0 + 600, 280.15, "KEL")  # 7.0 °C
    _reading(h, T0 + 900, 6.5)
    _reading(h, T0 + 1200, 3.0)
    _reading(h, T0 + 1500, 2.5)
    loc = canonical_id(TRUCK)
    assert h.total("food_cold_chain", "readings", location=loc) == 6
    assert h.total("food_cold_chain", "out_of_range", location=loc) == 2
    assert [(c[2], c[3]) for c in h.signals.calls] == [(T0 + 600, True), (T0 + 900, True), (T0 + 1200, False)]
    assert all(c[0] == "FoodColdChainBreach" and c[1] == {"location": loc} for c in h.signals.calls)


def _food_rules(tmp_path: Path, edit: Any) -> dict[str, Any]:
    """The shipped manifests with agents/food-safety.yml and its runbook changed by ``edit(text) -> text``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for src in AGENTS.iterdir():
        text = src.read_text()
        (tmp_path / src.name).write_text(edit(text) if src.stem == "food-safety" else text)
    return load_manifests(tmp_path)


def test_cold_range_is_configurable(tmp_path: Path) -> None:
    # The range is the rule's (its manifest params), nowhere else.
    h = Harness(_food_rules(tmp_path, lambda t: t.replace("params: {min_c: 0, max_c: 4}",
                                                           "params: {min_c: -2, max_c: 8}")))
    _reading(h, T0, 7.0)
    assert h.total("food_cold_chain", "out_of_range") == 0 and h.signals.calls == []
    with pytest.raises(ValueError, match="cold_min_c"):
        FoodStream(cold_min_c=5, cold_max_c=4)
    with pytest.raises(ConfigError, match="min_c"):
        Harness(_food_rules(tmp_path / "bad", lambda t: t.replace("params: {min_c: 0, max_c: 4}",
                                                                  "params: {min_c: 5, max_c: 4}")))


def test_renamed_food_alerts_are_raised_under_the_manifest_names(tmp_path: Path) -> None:
    """Issue 10: renaming FoodColdChainBreach in its manifest still started, and the next out-of-range
    reading was dead-lettered (the stream signalled the old name). Every food rule kind, renamed."""
    renames = {"FoodColdChainBreach": "ColdRoomTooWarm", "FoodCertificateReuse": "CertCopied",
               "FoodUntracedSale": "LotWithoutTrace"}

    def edit(text: str) -> str:
        for old, new in renames.items():
            text = text.replace(f"alert: {old}", f"alert: {new}").replace(f"## {old}", f"## {new}")
        return text

    rules = _food_rules(tmp_path, edit)
    assert not set(renames) & set(rules)
    store = StateStore(None).open()
    engine = AlertEngine(store, rules)  # raises UnknownRuleError for a name no manifest defines
    h = Harness(rules)
    h.ctx.signals = engine
    _reading(h, T0, 9.0)
    engine.advance(T0 + 3600)
    assert {tr.alertname for _, tr in engine.pop_outbox(100)} == {"ColdRoomTooWarm"}
    lot = "urn:epc:class:lgtin:6901001.020001.RENAMED"
    h.send(T0 + 10, "retail_selling", classes=[lot], disposition="retail_sold", bizLocation={"id": MARKET})
    assert {tr.alertname for _, tr in engine.pop_outbox(100)} >= {"LotWithoutTrace"}


def test_food_rule_kind_without_a_rule_raises_nothing() -> None:
    h = Harness({k: v for k, v in SHIPPED.items() if v.kind != "cold_chain"})
    _reading(h, T0, 9.0)
    assert h.total("food_cold_chain", "out_of_range") == 1 and h.signals.calls == []


def test_trace_step_tag_for_extension_and_missing() -> None:
    h = Harness()
    h.send(T0, "https://example.com/steps/cutting", [CARCASS])
    h.send(T0, None, [CARCASS])
    assert h.total("food_trace", "events", biz_step="extension") == 1
    assert h.total("food_trace", "events", biz_step="none") == 1


# -- simulator -----------------------------------------------------------------------------------------------
START = datetime(2024, 5, 1, 0, 0, tzinfo=SHANGHAI)


def test_simulator_deterministic() -> None:
    a = [orjson.dumps(d) for _, d in generate(seed=3, start=START, duration_s=4 * 3600, batch=5)]
    b = [orjson.dumps(d) for _, d in generate(seed=3, start=START, duration_s=4 * 3600, batch=5)]
    c = [orjson.dumps(d) for _, d in generate(seed=4, start=START, duration_s=4 * 3600, batch=5)]
    assert a == b and a != c
    docs = [orjson.loads(x) for x in a]
    assert all(len(d["epcisBody"]["eventList"]) <= 5 for d in docs)
    times = [datetime.fromisoformat(e["eventTime"]).timestamp() for d in docs for e in d["epcisBody"]["eventList"]]
    assert times == sorted(times) and times[0] >= START.timestamp()
    assert all(e["eventTimeZoneOffset"] == "+08:00" for d in docs for e in d["epcisBody"]["eventList"])


@pytest.fixture(scope="module")
def normal_day() -> Harness:
    h = Harness()
    n = 0
    for topic, doc in generate(seed=11, start=START, duration_s=86400, batch=20):
        assert topic == "food.trace-events"
        h.feed(orjson.dumps(doc))
        n += len(doc["epcisBody"]["eventList"])
    h.n_events = n  # type: ignore[attr-defined]
    return h


def test_normal_day_is_fully_traced_and_quiet(normal_day: Harness) -> None:
    h = normal_day
    assert h.rejected == []
    assert len(h.seen) == h.n_events  # type: ignore[attr-defined]
    chain_points = h.points("food_chain")
    assert chain_points and all(f["trace_rate"] == 1.0 for _, f, _ in chain_points)
    sold = h.total("food_chain", "lots_sold")
    assert sold > 100
    assert h.signals.calls == []
    assert h.total("food_cold_chain", "readings") > 1000 and h.total("food_cold_chain", "out_of_range") == 0
    assert h.total("food_inspection", "non_conformant") == 0


def test_normal_day_volume_is_city_scale(normal_day: Harness) -> None:
    h = normal_day
    carcasses = 0
    # commissioning ObjectEvents carry the carcasses; about 1,400 a day by the documented estimate
    for (lot, rec) in h.store.table("food_lots").items():
        if "/21/" in lot and rec.facts & 1:
            carcasses += 1
    assert 1100 <= carcasses <= 1700


def test_incidents_match_ground_truth() -> None:
    it, truth = generate_with_truth(seed=5, start=START, duration_s=86400, incidents=True, batch=10)
    rules = {r for r, _, _ in truth}
    assert rules == {"FoodCertificateReuse", "FoodUntracedSale", "FoodColdChainBreach"}
    h = Harness()
    for _, doc in it:
        h.feed(orjson.dumps(doc))
    assert h.rejected == []
    fired = dict(h.signals.first)
    expected = {(r, tuple(sorted(e.items()))): t.timestamp() for r, e, t in truth}
    assert set(fired) == set(expected)
    for key, ts in expected.items():
        assert fired[key] == pytest.approx(ts, abs=0.001)
    # the breach lasts more than 30 minutes and ends
    (breach,) = [k for k in fired if k[0] == "FoodColdChainBreach"]
    on = [c for c in h.signals.calls if c[0] == "FoodColdChainBreach"]
    assert on[-1][3] is False and on[-1][2] - on[0][2] > 1800
    assert h.total("food_inspection", "non_conformant") >= 1
    rates = [f["trace_rate"] for _, f, _ in h.points("food_chain")]
    assert min(rates) < 1.0


def test_generate_truth_iterator_equals_generate() -> None:
    it, _ = generate_with_truth(seed=2, start=START, duration_s=3 * 3600, incidents=True)
    assert [orjson.dumps(d) for _, d in it] == [orjson.dumps(d) for _, d in
                                                generate(seed=2, start=START, duration_s=3 * 3600, incidents=True)]
