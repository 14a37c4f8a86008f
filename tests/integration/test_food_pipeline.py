"""Food traceability end to end against real Tansu + InfluxDB: official EPCIS examples, known chains, bad input.

Expected outcomes are computed here from the JSON itself (identities, bizStep terms, lot histories); only the
standard event-hash ID of events without eventID comes from ``cityops.food.epcis`` (it is the GS1 algorithm).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops.food.epcis import event_identity
from cityops.simulate.food import generate
from tests.conftest import influx_rows, produce

pytestmark = pytest.mark.integration

FOOD = "food.trace-events"
DEAD_LETTER = "cityops.dead-letter"
EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "epcis" / "JSON"  # ../shared beside the checkout
CST = timezone(timedelta(hours=8))
CONTEXT = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
# The official examples span 2005..2020s of event time: judged with the default 10 min lateness and 24 h dedup
# horizon they would be "late" or re-accepted, which says nothing about identity. Widen both past the span.
WIDE = {"CITYOPS_ALLOWED_LATENESS_S": str(100 * 365 * 86400), "CITYOPS_DEDUP_HORIZON_S": str(100 * 365 * 86400)}


# -- helpers -----------------------------------------------------------------------------------------------------


def send(bootstrap: str, messages: list[bytes], partition: int = 0) -> None:
    """Produce to one partition: the order of a lot's events is then the order the worker applies them in."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8 << 20)
    for raw in messages:
        p.send(FOOD, raw, partition=partition)
    p.flush()
    p.close()


def outcomes(w: Any) -> Counter[str]:
    h = w.health() or {"events": {}}
    return Counter({k.split("/", 1)[1]: n for k, n in h["events"].items() if k.startswith(FOOD + "/")})


def food_quality(influx: Any) -> dict[str, int]:
    rows = [r for r in influx_rows(influx, "stream_quality") if r["stream"] == FOOD]
    return {f: int(sum(r[f] or 0 for r in rows)) for f in ("accepted", "invalid", "duplicates", "late")}


def wait_food_written(w: Any, influx: Any, accepted: int, invalid: int = 0) -> None:
    w.wait(lambda: (q := food_quality(influx))["accepted"] >= accepted and q["invalid"] >= invalid,
           what=f"{accepted} accepted / {invalid} invalid food events in InfluxDB")
    w.wait(lambda: (w.health() or {}).get("influx_pending_points", 1) == 0, what="sink drained")


def dead_letter_end_offsets(bootstrap: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(DEAD_LETTER) or set()
        assert parts, f"{DEAD_LETTER} topic missing"
        return sum(c.end_offsets([TopicPartition(DEAD_LETTER, p) for p in parts]).values())
    finally:
        c.close()


def read_dead_letters(bootstrap: str, n: int) -> list[Any]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(DEAD_LETTER, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=20000)
    out = []
    for rec in c:
        out.append(rec)
        if len(out) == n:
            break
    c.close()
    return out


def step_tag(value: str | None) -> str:
    """The food_trace biz_step tag, written out from the stream contract (CBV term, 'none', 'extension')."""
    if value is None:
        return "none"
    for prefix in ("https://ref.gs1.org/cbv/BizStep-", "http://ref.gs1.org/cbv/BizStep-", "cbv:BizStep-",
                   "urn:epcglobal:cbv:bizstep:"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    return "extension" if ":" in value else value


def doc_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    body = doc["epcisBody"]
    if doc["type"] == "EPCISQueryDocument":
        return body["queryResults"]["resultsBody"]["eventList"]
    return body["eventList"]


def in_context(doc: dict[str, Any], ev: dict[str, Any]) -> list[Any]:
    outer, inner = doc.get("@context") or [], ev.get("@context") or []
    outer = outer if isinstance(outer, list) else [outer]
    inner = inner if isinstance(inner, list) else [inner]
    return outer + [c for c in inner if c not in outer]


def canon(ev: dict[str, Any]) -> str:
    return json.dumps(ev, sort_keys=True, ensure_ascii=False)


def trace_counts(influx: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in influx_rows(influx, "food_trace"):
        out[r["biz_step"]] += int(r["events"])
    return dict(out)


# -- the official GS1 examples ---------------------------------------------------------------------------------


def test_official_examples_counted_once_per_identity(kafka: Any, influx: Any, worker_factory: Any) -> None:
    files = sorted((p for p in EXAMPLES.rglob("*") if p.suffix in (".jsonld", ".json")),
                   key=lambda p: str(p.relative_to(EXAMPLES)))
    assert len(files) == 47, f"expected the 47 official examples, found {len(files)}"

    # Expected, file by file in the order they are produced: first content of an identity is accepted,
    # the same content again is a duplicate, other content under a known identity is tampering.
    first: dict[str, str] = {}
    per_file: list[tuple[str, int, Counter[str]]] = []
    steps: Counter[str] = Counter()
    for path in files:
        doc = json.loads(path.read_bytes())
        expect: Counter[str] = Counter()
        evs = doc_events(doc)
        for ev in evs:
            ident = ev.get("eventID") or event_identity(ev, in_context(doc, ev))
            if ident not in first:
                first[ident] = canon(ev)
                expect["accepted"] += 1
                steps[step_tag(ev.get("bizStep"))] += 1
            else:
                expect["duplicate" if first[ident] == canon(ev) else "tampered"] += 1
        per_file.append((str(path.relative_to(EXAMPLES)), len(evs), expect))
    total = sum(n for _, n, _ in per_file)
    accepted = len(first)
    assert (total, accepted) == (56, 48)  # the corpus as published; a changed copy must be looked at

    w = worker_factory(**WIDE).start()
    w.wait(lambda: w.health() is not None, what="worker up")
    observed: list[tuple[str, Counter[str]]] = []
    done = 0
    for (name, n, expect), path in zip(per_file, files):
        before = outcomes(w)
        send(kafka.url, [path.read_bytes()])
        done += n
        w.wait(lambda: w.counted(FOOD) >= done, what=f"{name}: {n} events decided", timeout_s=60)
        got = outcomes(w) - before
        observed.append((name, got))
    print("\nofficial example -> outcomes observed through the worker")
    for name, got in observed:
        print(f"  {name}: {dict(got)}")
    for (name, _n, expect), (_name, got) in zip(per_file, observed):
        assert got == expect, f"{name}: observed {dict(got)}, expected {dict(expect)}"

    health = outcomes(w)
    assert health["accepted"] == accepted
    assert health["duplicate"] + health["tampered"] == total - accepted
    assert health["invalid"] == health["late"] == 0
    wait_food_written(w, influx, accepted)
    assert food_quality(influx) == {"accepted": accepted, "invalid": 0, "duplicates": total - accepted, "late": 0}
    assert trace_counts(influx) == dict(steps)
    assert dead_letter_end_offsets(kafka.url) == 0  # not one official example event is dead-lettered
    assert w.terminate() == 0


# -- hand-built chains with known answers -----------------------------------------------------------------------

SH = "urn:epc:id:sgln:6909999.00001.0"  # slaughterhouse
SH_LINE = "urn:epc:id:sgln:6909999.00001.LINE1"
WM = "urn:epc:id:sgln:6909999.00002.0"  # wholesale market
SHOP = "urn:epc:id:sgln:6909999.00003.0"  # outlet
T0 = datetime(2026, 11, 26, 6, 0, tzinfo=CST)
SALE = T0 + timedelta(hours=2)  # every sale falls in the 08:00 window


def carcass(n: int) -> str:
    return f"urn:epc:id:sgtin:6909999.010000.{n}"


def lot(n: int) -> str:
    return f"urn:epc:class:lgtin:6909999.020001.L{n}"


def crate(n: int) -> str:
    return f"urn:epc:id:sscc:6909999.{1000000000 + n}"


class Chain:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "eventID": f"urn:uuid:00000000-0000-4000-8000-{len(self.events) + 1:012d}",
              "eventTime": at.isoformat(timespec="milliseconds"), "eventTimeZoneOffset": "+08:00", **fields}
        if kind in ("ObjectEvent", "AggregationEvent"):
            ev.setdefault("action", "OBSERVE")
        self.events.append(ev)
        return ev

    def slaughter(self, at: datetime, c: str) -> None:
        self.add("ObjectEvent", at, action="ADD", bizStep="commissioning", disposition="active", epcList=[c],
                 readPoint={"id": SH_LINE}, bizLocation={"id": SH})

    def inspect(self, at: datetime, c: str, verdict: str) -> None:
        self.add("ObjectEvent", at, bizStep="inspecting", disposition=verdict, epcList=[c],
                 readPoint={"id": SH_LINE}, bizLocation={"id": SH})

    def cut(self, at: datetime, c: str, out: str) -> None:
        # A TransformationEvent commissioning its outputs: processing, not slaughter.
        self.add("TransformationEvent", at, inputEPCList=[c],
                 outputQuantityList=[{"epcClass": out, "quantity": 20.0, "uom": "KGM"}], bizStep="commissioning",
                 readPoint={"id": SH_LINE}, bizLocation={"id": SH})

    def receive(self, at: datetime, *, epcs: list[str] | None = None, lots: list[str] | None = None) -> None:
        fields: dict[str, Any] = {"epcList": epcs} if epcs else {
            "quantityList": [{"epcClass": x, "quantity": 20.0, "uom": "KGM"} for x in lots or []]}
        self.add("ObjectEvent", at, bizStep="receiving", disposition="in_progress", readPoint={"id": WM},
                 bizLocation={"id": WM}, **fields)

    def sell(self, at: datetime, x: str) -> None:
        self.add("ObjectEvent", at, bizStep="retail_selling", disposition="retail_sold",
                 quantityList=[{"epcClass": x, "quantity": 1.5, "uom": "KGM"}], readPoint={"id": SHOP},
                 bizLocation={"id": SHOP})


def document(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"@context": CONTEXT, "type": "EPCISDocument", "schemaVersion": "2.0",
                       "creationDate": "2026-11-26T09:00:00.000+08:00",
                       "epcisBody": {"eventList": events}}, ensure_ascii=False).encode()


def test_known_chains_and_bad_documents(kafka: Any, influx: Any, worker_factory: Any) -> None:
    ch = Chain()
    m = lambda k: T0 + timedelta(minutes=k)  # noqa: E731
    # A: fully traced, receiving recorded on the crate the cut travelled in.
    ch.slaughter(m(0), carcass(1))
    ch.inspect(m(30), carcass(1), "conformant")
    ch.cut(m(60), carcass(1), lot(1))
    ch.add("AggregationEvent", m(62), action="ADD", parentID=crate(1), bizStep="packing",
           childQuantityList=[{"epcClass": lot(1), "quantity": 20.0, "uom": "KGM"}],
           readPoint={"id": SH_LINE}, bizLocation={"id": SH})
    ch.add("ObjectEvent", m(70), bizStep="shipping", epcList=[crate(1)], readPoint={"id": SH},
           bizLocation={"id": SH})
    ch.receive(m(90), epcs=[crate(1)])
    # B: no inspection at all (the cut's TransformationEvent 'commissioning' must not count as one).
    ch.slaughter(m(1), carcass(2))
    ch.cut(m(61), carcass(2), lot(2))
    ch.receive(m(91), lots=[lot(2)])
    # C: inspected non-conformant.
    ch.slaughter(m(2), carcass(3))
    ch.inspect(m(31), carcass(3), "non_conformant")
    ch.cut(m(63), carcass(3), lot(3))
    ch.receive(m(92), lots=[lot(3)])
    # D: a cut whose carcass (not the cut itself) was inspected.
    ch.slaughter(m(3), carcass(4))
    ch.inspect(m(32), carcass(4), "conformant")
    ch.cut(m(64), carcass(4), lot(4))
    ch.receive(m(93), lots=[lot(4)])
    # E: sold before it was received (the later receiving does not make the sale traced).
    ch.slaughter(m(4), carcass(5))
    ch.inspect(m(33), carcass(5), "conformant")
    ch.cut(m(65), carcass(5), lot(5))
    chain_events = sorted(ch.events, key=lambda e: e["eventTime"])
    sales = Chain()
    for i, n in enumerate((1, 2, 3, 4, 5)):
        sales.sell(SALE + timedelta(seconds=5 * i), lot(n))
    for ev in sales.events:
        ev["eventID"] = ev["eventID"].replace("-8000-", "-9000-")
    late_receive = Chain()
    late_receive.receive(SALE + timedelta(minutes=5), lots=[lot(5)])
    late_receive.events[0]["eventID"] = "urn:uuid:00000000-0000-4000-a000-000000000001"

    # A schema-invalid event inside an otherwise valid document, at index 1 of 3.
    bad_time = dict(chain_events[-1], eventTime="yesterday")
    bad_time["eventID"] = "urn:uuid:00000000-0000-4000-b000-000000000001"
    head, tail = chain_events[:-1], chain_events[-1:]
    malformed = b'{"type": "EPCISDocument", "epcisBody": {"eventList": ['
    messages = [document(head[:10]), document(head[10:]), document([tail[0], bad_time, sales.events[0]]),
                malformed, document(sales.events[1:]), document(late_receive.events)]
    valid = len(chain_events) + len(sales.events) + len(late_receive.events)
    send(kafka.url, messages)

    w = worker_factory().start()
    w.wait(lambda: w.counted(FOOD) >= valid + 2, what="all food records decided")
    got = outcomes(w)
    assert (got["accepted"], got["invalid"]) == (valid, 2), dict(got)
    wait_food_written(w, influx, valid, invalid=2)

    chain = influx_rows(influx, "food_chain")
    assert [(r["time"], r["lots_sold"], r["lots_traced"]) for r in chain] == [(int(SALE.timestamp()), 5, 2)]
    assert chain[0]["trace_rate"] == pytest.approx(0.4)
    inspections = influx_rows(influx, "food_inspection")
    assert sum(r["inspections"] for r in inspections) == 4
    assert sum(r["non_conformant"] for r in inspections) == 1
    assert {r["location"] for r in inspections} == {"https://id.gs1.org/414/6909999000012"}  # GLN 690999900001 + check digit 2

    letters = read_dead_letters(kafka.url, 2)
    assert len(letters) == 2
    by_value = {rec.value: {k: v.decode() for k, v in rec.headers} for rec in letters}
    schema_letter = by_value[messages[2]]
    assert schema_letter["cityops-batch-index"] == "1"
    reason = schema_letter["cityops-reason"]
    assert reason.startswith("schema /") and "format" in reason, reason
    assert "at /epcisBody/eventList/1/eventTime" in reason, reason
    assert "yesterday" in reason, reason
    assert "malformed JSON" in by_value[malformed]["cityops-reason"]
    assert "cityops-batch-index" not in by_value[malformed]  # the whole message, not one element
    assert w.terminate() == 0


# -- a simulated day ---------------------------------------------------------------------------------------------


def test_simulated_food_chain_fully_traced(kafka: Any, influx: Any, worker_factory: Any) -> None:
    docs = [d for _t, d in generate(seed=5, start=datetime(2026, 11, 26, 4, 0, tzinfo=CST), duration_s=9 * 3600,
                                    rate=0.2, batch=50)]
    events = [e for d in docs for e in d["epcisBody"]["eventList"]]
    steps = Counter(step_tag(e.get("bizStep")) for e in events)
    sold: set[tuple[int, str]] = set()
    for e in events:
        if e.get("bizStep") == "retail_selling":
            minute = int(datetime.fromisoformat(e["eventTime"]).timestamp() // 60 * 60)
            sold |= {(minute, q["epcClass"]) for q in e["quantityList"]}
    assert sold and steps["inspecting"], "the simulated run must reach retail sales"
    produce(kafka.url, [(FOOD, json.dumps(d, ensure_ascii=False).encode()) for d in docs])

    w = worker_factory().start()
    w.wait(lambda: w.counted(FOOD) >= len(events), what="all simulated food events decided", timeout_s=120)
    assert outcomes(w) == Counter({"accepted": len(events)})
    wait_food_written(w, influx, len(events))
    assert trace_counts(influx) == dict(steps)
    chain = influx_rows(influx, "food_chain")
    assert sum(r["lots_sold"] for r in chain) == len(sold)
    assert all(r["lots_traced"] == r["lots_sold"] and r["trace_rate"] == 1.0 for r in chain), chain
    assert {r["time"] for r in chain} == {minute for minute, _ in sold}
    assert sum(r["non_conformant"] for r in influx_rows(influx, "food_inspection")) == 0
    assert w.terminate() == 0
