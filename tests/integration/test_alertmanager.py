"""AlertmanagerSink against a real Alertmanager: post firing, resolve, survive an unreachable server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from cityops.alerts.lifecycle import AlertEngine
from cityops.alerts.manifest import load_manifests
from cityops.engine.state import StateStore
from cityops.localproc import LocalProcessError, ManagedProcess, free_port
from cityops.localstack import start_alertmanager
from cityops.sinks.alertmanager import AlertmanagerSink, rfc3339, to_postable
from cityops.types import Alert, AlertState, Transition

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def _sent(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "cityops_alert_notifications_total", {"receiver": "alertmanager", "outcome": outcome}
    )
    return value or 0.0


def _card() -> dict[str, str]:
    # A fresh pseudonym per test: tests share one Alertmanager and must not see each other's alerts.
    return {"card": "p-" + uuid.uuid4().hex[:20]}


def _engine() -> AlertEngine:
    return AlertEngine(StateStore(None).open(), load_manifests(AGENTS))


def _outbox(engine: AlertEngine) -> list[Transition]:
    items = engine.pop_outbox(1000)
    engine.ack_outbox([s for s, _ in items])
    return [i for _, i in items]


async def _wait_for(sink: AlertmanagerSink, pred: Any, timeout_s: float = 10.0, **query: Any) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    alerts: list[dict] = []
    while time.monotonic() < deadline:
        alerts = await sink.get_alerts(**query)
        if pred(alerts):
            return alerts
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s}s; last answer: {alerts}")


def test_binary_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalProcessError, match="apt-get install prometheus-alertmanager"):
        start_alertmanager(tmp_path)


async def test_firing_then_resolved(alertmanager: ManagedProcess) -> None:
    registry = CollectorRegistry()
    engine = _engine()
    card = _card()
    now = time.time()
    engine.signal("CardImpossibleTravel", card, now - 60, active=True, value=812.4,
                  summary="card travelled 27.1 km in 120 s (812 km/h)")
    async with AlertmanagerSink(alertmanager.url, registry=registry) as sink:
        items = _outbox(engine)
        assert [i.status for i in items] == ["firing"]
        assert await sink.post(items) is True
        assert _sent(registry, "sent") == 1

        matcher = [f'card="{card["card"]}"']
        alerts = await _wait_for(sink, lambda a: len(a) == 1, filter=matcher)
        (got,) = alerts
        assert got["labels"] == {
            "alertname": "CardImpossibleTravel", "severity": "critical", "domain": "security", "team": "transit",
            "card": card["card"],
        }
        assert got["annotations"]["summary"] == f"Card {card['card']} travelled 812 km/h between readers"
        assert got["annotations"]["runbook_url"].endswith("/agents/traffic-security.md#cardimpossibletravel")
        assert got["status"]["state"] in ("active", "unprocessed")
        assert got["startsAt"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(now - 60)))

        # Periodic re-send of what is firing: same alert, still one.
        assert await sink.post(engine.firing()) is True
        assert len(await sink.get_alerts(filter=matcher)) == 1

        engine.advance(now - 60 + 1800)  # 30 min without another impossible journey: resolved
        items = _outbox(engine)
        assert [(i.status, i.am_action) for i in items] == [("resolved", "resolved")]
        assert await sink.post(items) is True
        await _wait_for(sink, lambda a: a == [], filter=matcher)
        assert engine.firing() == []
        assert _sent(registry, "sent") == 3


async def test_pending_and_flapping_are_not_posted(alertmanager: ManagedProcess) -> None:
    registry = CollectorRegistry()
    engine = _engine()
    now = time.time()
    loc = {"location": "cold-store-" + uuid.uuid4().hex[:8]}
    engine.signal("FoodColdChainBreach", loc, now, active=True, value=9.5)  # for: 30m → pending
    async with AlertmanagerSink(alertmanager.url, registry=registry) as sink:
        items = _outbox(engine)
        assert [i.status for i in items] == ["pending"]
        assert await sink.post(items) is True
        assert _sent(registry, "sent") == 0
        assert await sink.get_alerts(filter=[f'location="{loc["location"]}"']) == []


async def test_unreachable_then_started_alert_arrives_after_retry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    port = free_port()
    engine = _engine()
    card = _card()
    engine.signal("CardImpossibleTravel", card, time.time(), active=True, value=500.0)
    items = _outbox(engine)

    # Nothing listens: a short attempt gives up without dropping anything (the dispatcher keeps the item).
    async with AlertmanagerSink(f"http://127.0.0.1:{port}", registry=registry, attempts=2,
                                backoff_s=0.05) as down:
        assert await down.post(items) is False
    assert _sent(registry, "unavailable") == 1 and _sent(registry, "retry") == 1

    async with AlertmanagerSink(f"http://127.0.0.1:{port}", registry=registry, attempts=40,
                                backoff_s=0.1, backoff_cap_s=0.5) as sink:
        posting = asyncio.create_task(sink.post(items))
        await asyncio.sleep(0.5)
        assert not posting.done()  # still retrying
        am = await asyncio.to_thread(start_alertmanager, tmp_path / "late-am", port)
        try:
            assert await asyncio.wait_for(posting, 60) is True
            alerts = await _wait_for(sink, lambda a: len(a) == 1, filter=[f'card="{card["card"]}"'])
            assert alerts[0]["labels"]["alertname"] == "CardImpossibleTravel"
        finally:
            am.stop()
    assert _sent(registry, "sent") == 1
    assert _sent(registry, "retry") >= 2


async def test_rejected_alert_is_counted_not_retried(alertmanager: ManagedProcess) -> None:
    registry = CollectorRegistry()
    good = Alert(labels={"alertname": "CityopsSinkTest", "case": uuid.uuid4().hex}, starts_at=1704067200.0)
    bad = Alert(labels={"alertname": "CityopsSinkTest", "bad-name": "x"}, starts_at=1704067200.0)
    async with AlertmanagerSink(alertmanager.url, registry=registry, attempts=3, backoff_s=0.01) as sink:
        assert await sink.post([good, bad]) is True
        assert _sent(registry, "rejected") == 1
        assert _sent(registry, "sent") == 1
        assert _sent(registry, "retry") == 0
        await _wait_for(sink, lambda a: len(a) == 1, filter=[f'case="{good.labels["case"]}"'])


def test_to_postable_formats() -> None:
    now = 1_700_000_000.0
    firing = Transition(id="A||0", alertname="A", status=AlertState.FIRING, previous=None,
                        am_action=AlertState.FIRING, severity="", domain="", entity={}, labels={"alertname": "A"},
                        annotations={}, starts_at=now - 30, ends_at=None, value=0.0, ts=now - 30)
    assert to_postable(firing, now, resend_s=60) == {
        "labels": {"alertname": "A"}, "annotations": {"event_starts_at": "2023-11-14T22:12:50.000Z"},
        "startsAt": "2023-11-14T22:12:50.000Z", "endsAt": "2023-11-14T22:17:20.000Z",
    }
    resolved = msgspec.structs.replace(firing, status=AlertState.RESOLVED, am_action=AlertState.RESOLVED,
                                       ends_at=now + 999)
    assert to_postable(resolved, now)["endsAt"] == "2023-11-14T22:13:20.000Z"  # never in the future
    assert to_postable(msgspec.structs.replace(firing, status=AlertState.PENDING, am_action=None), now) is None
    assert to_postable(msgspec.structs.replace(firing, status=AlertState.RESOLVED, am_action=None), now) is None
    resend = to_postable(Alert(labels={"alertname": "A"}, starts_at=now - 30), now, 60)
    assert resend is not None and resend["endsAt"] == "2023-11-14T22:17:20.000Z"
    assert resend["startsAt"] == "2023-11-14T22:12:50.000Z"


@pytest.mark.parametrize("skew_s", [3 * 3600.0, -3 * 86400.0], ids=["event-time-ahead", "event-time-behind"])
async def test_alertmanager_shows_exactly_what_cityops_has_firing(alertmanager: ManagedProcess,
                                                                   skew_s: float) -> None:
    """Issue 9 kind 6: event time ahead of (or far behind) the wall clock.

    Every post (firing, periodic re-sends, resolve, firing again) is accepted, and after each step the
    active alerts in Alertmanager are exactly ``engine.firing()``; the event time is in an annotation.
    """
    registry = CollectorRegistry()
    engine = _engine()
    cards = [_card() for _ in range(3)]
    matcher = [f'card=~"{"|".join(c["card"] for c in cards)}"']
    t0 = time.time() + skew_s  # event time

    async def active_cards() -> set[str]:
        return {a["labels"]["card"] for a in await sink.get_alerts(active=True, filter=matcher)}

    async def converged() -> list[dict[str, Any]]:
        want = {a.labels["card"] for a in engine.firing()}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await active_cards() == want:
                break
            await asyncio.sleep(0.1)
        assert await active_cards() == want
        return await sink.get_alerts(active=True, filter=matcher)

    async with AlertmanagerSink(alertmanager.url, registry=registry) as sink:
        for i, card in enumerate(cards):
            engine.signal("CardImpossibleTravel", card, t0 + i, active=True, value=500.0 + i)
        assert await sink.post(_outbox(engine)) is True
        got = await converged()
        assert len(got) == 3
        by_card = {a["labels"]["card"]: a for a in got}
        # Event time stays visible; Alertmanager's times are never in its future.
        assert by_card[cards[0]["card"]]["annotations"]["event_starts_at"] == rfc3339(t0)
        for _ in range(3):  # periodic re-sends are accepted (the demo had them refused with 400)
            assert await sink.post(engine.firing()) is True
        await converged()

        # Two of the three resolve (30 min of event time later, the third is signalled again first).
        engine.signal("CardImpossibleTravel", cards[2], t0 + 1700, active=True, value=600.0)
        engine.advance(t0 + 1801)
        items = _outbox(engine)
        assert sorted(i.status for i in items) == ["firing", "resolved", "resolved"] or \
            sorted(i.status for i in items) == ["resolved", "resolved"]
        assert await sink.post(items) is True
        assert await sink.post(engine.firing()) is True
        got = await converged()
        assert {a["labels"]["card"] for a in got} == {cards[2]["card"]}

        # The resolved card fires again: a new episode, shown as active again.
        engine.signal("CardImpossibleTravel", cards[0], t0 + 1900, active=True, value=700.0)
        assert await sink.post(_outbox(engine)) is True
        assert await sink.post(engine.firing()) is True
        got = await converged()
        assert {a["labels"]["card"] for a in got} == {cards[0]["card"], cards[2]["card"]}

        engine.advance(t0 + 1900 + 3600)
        assert await sink.post(_outbox(engine)) is True
        assert engine.firing() == []
        assert await converged() == []
    assert _sent(registry, "rejected") == 0
    assert _sent(registry, "sent") > 0


def _worker_rules(tmp_path: Path) -> Path:
    """The shipped traffic-security manifest with CardImpossibleTravel resolving after 1 min (not 30)."""
    import shutil

    rules = tmp_path / "rules"
    rules.mkdir()
    text = (AGENTS / "traffic-security.yml").read_text()
    head, rest = text.split("  - alert: CardImpossibleTravel", 1)
    rest = rest.replace("resolve_after: 30m", "resolve_after: 1m", 1)
    (rules / "traffic-security.yml").write_text(head + "  - alert: CardImpossibleTravel" + rest)
    shutil.copy(AGENTS / "traffic-security.md", rules / "traffic-security.md")
    return rules


@pytest.mark.parametrize("skew_s", [60.0, -5 * 86400.0], ids=["event-time-ahead", "event-time-behind"])
def test_worker_resolves_in_alertmanager_whatever_the_event_time(
        kafka: Any, alertmanager: ManagedProcess, worker_factory: Any, tmp_path: Path, skew_s: float) -> None:
    """Issue 9 kind 6 through the real broker, worker and Alertmanager: an impossible journey fires, then
    event time moves on and cityops resolves it; Alertmanager lists it while cityops has it firing and not
    once cityops has resolved it (before: a resolve with event time ahead kept it active)."""
    import json as _json
    import urllib.request
    from datetime import datetime, timezone

    from cityops.streams.city_streams import Pseudonymizer
    from tests.conftest import PSEUDONYM_KEY

    card = f"2130{uuid.uuid4().int % 10**12:012d}"
    pseudonym = Pseudonymizer(PSEUDONYM_KEY.encode())(card)
    base = time.time() + skew_s

    def tap(n: int, at: float, who: str, lat: float, lon: float) -> bytes:
        return _json.dumps({"event_id": f"am-{uuid.uuid4().hex}-{n}", "source": "reader-x",
                            "ts": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds"),
                            "card_id": who, "mode": "metro", "line": "L1", "direction": "in", "fare_cny": 2,
                            "lat": lat, "lon": lon}).encode()

    def send(records: list[tuple[int, bytes]]) -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=kafka.url, linger_ms=0)
        for partition, raw in records:
            p.send("traffic.card-taps", raw, partition=partition).get(10)
        p.close()

    def am_active() -> list[dict[str, Any]]:
        q = f'filter=card%3D%22{pseudonym}%22&active=true&silenced=false&inhibited=false'
        with urllib.request.urlopen(f"{alertmanager.url}/api/v2/alerts?{q}", timeout=5) as r:
            return _json.loads(r.read())

    def cityops_firing(w: Any) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in w.metrics().splitlines()
                   if line.startswith("cityops_alerts_active{") and 'alertname="CardImpossibleTravel"' in line)

    # Every partition moves (the rules' clock waits for all); the card jumps ~120 km in 60 s.
    send([(p, tap(p, base, f"other-{p}", 31.78, 119.97)) for p in range(4)]
         + [(0, tap(10, base + 1, card, 31.78, 119.97)), (0, tap(11, base + 61, card, 32.60, 120.90))]
         + [(p, tap(20 + p, base + 70, f"other-{p}", 31.78, 119.97)) for p in range(4)])
    w = worker_factory(CITYOPS_ALERTMANAGER_URL=alertmanager.url, CITYOPS_RULES_DIR=str(_worker_rules(tmp_path)),
                       CITYOPS_SOURCE_REGISTRY="none", CITYOPS_IDLE_PARTITION_S="2",
                       CITYOPS_ALERT_RESEND_S="2").start()
    w.wait(lambda: len(am_active()) == 1, what="the alert active in Alertmanager", timeout_s=120)
    (got,) = am_active()
    assert got["labels"]["alertname"] == "CardImpossibleTravel"
    assert got["annotations"]["event_starts_at"].startswith(
        datetime.fromtimestamp(base + 61, timezone.utc).strftime("%Y-%m-%dT%H:%M"))
    assert datetime.fromisoformat(got["startsAt"].replace("Z", "+00:00")).timestamp() <= time.time() + 1
    time.sleep(5)  # re-sends every 2 s: accepted, still one active alert
    assert len(am_active()) == 1 and cityops_firing(w) == 1

    # Two minutes of event time later the journey is forgiven: resolved in cityops and in Alertmanager.
    send([(p, tap(30 + p, base + 200, f"other-{p}", 31.78, 119.97)) for p in range(4)])
    w.wait(lambda: cityops_firing(w) == 0, what="cityops resolved the alert", timeout_s=60)
    deadline = time.monotonic() + 10
    while am_active() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert am_active() == [], "Alertmanager still lists an alert cityops resolved"
    assert 'outcome="rejected"' not in "".join(
        line for line in w.metrics().splitlines()
        if line.startswith("cityops_alert_notifications_total") and not line.endswith(" 0.0"))
