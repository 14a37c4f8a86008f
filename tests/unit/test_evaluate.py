"""Truth ↔ alert matching of cityops.evaluate: pure functions, no servers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cityops import evaluate
from cityops.streams.city_streams import Pseudonymizer

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=CST)
PSEUDO = Pseudonymizer(b"unit-test-key-0123456789")


def row(rule: str, entity: dict[str, str], minute: float = 0.0) -> dict[str, Any]:
    return {"rule": rule, "entity": entity, "start": (T0 + timedelta(minutes=minute)).isoformat()}


def tr(rule: str, entity: dict[str, str], starts_at: float, status: str = "firing", n: int = 0,
       **labels: str) -> dict[str, Any]:
    lab = {"alertname": rule, "severity": "warning", "domain": "x", **entity, **labels}
    return {"id": f"{rule}|{entity}|{n}", "alertname": rule, "status": status, "labels": lab,
            "annotations": {"summary": "s"}, "starts_at": starts_at, "ts": starts_at}


def at(minute: float) -> float:
    return (T0 + timedelta(minutes=minute)).timestamp()


def test_card_truth_is_matched_through_the_pseudonym() -> None:
    incidents = evaluate.incidents_from_truth([row("CardImpossibleTravel", {"card": "2130519900000000001"})], PSEUDO)
    assert incidents[0].labels == (("card", PSEUDO("2130519900000000001")),)
    alerts = evaluate.firing_alerts([tr("CardImpossibleTravel", {"card": PSEUDO("2130519900000000001")}, at(0.5))])
    res = evaluate.score(incidents, alerts)
    r = res.rules["CardImpossibleTravel"]
    assert (r.tp, r.fp, r.fn, r.precision, r.recall) == (1, 0, 0, 1.0, 1.0)
    assert r.tta_s == [pytest.approx(30.0)]


def test_raw_card_label_does_not_match() -> None:
    incidents = evaluate.incidents_from_truth([row("CardDeclinedBurst", {"card": "2130519900000000004"})], PSEUDO)
    alerts = evaluate.firing_alerts([tr("CardDeclinedBurst", {"card": "2130519900000000004"}, at(0))])
    r = evaluate.score(incidents, alerts).rules["CardDeclinedBurst"]
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_event_tampering_maps_event_id_to_its_source() -> None:
    truth = [row("EventTampering", {"event_id": "cz-metro-l1-s21:6e0e3218:x13"})]
    incidents = evaluate.incidents_from_truth(truth, PSEUDO)
    ok = tr("EventTampering", {"source": "cz-metro-l1-s21", "stream": "traffic.card-taps"}, at(0))
    other = tr("EventTampering", {"source": "cz-metro-l1-s22", "stream": "traffic.card-taps"}, at(0))
    res = evaluate.score(incidents, evaluate.firing_alerts([ok, other]))
    r = res.rules["EventTampering"]
    assert (r.tp, r.fp, r.fn, r.alerts) == (1, 1, 0, 2)
    assert r.precision == 0.5


def test_extra_alert_labels_are_allowed() -> None:
    incidents = evaluate.incidents_from_truth([row("UntrustedSource", {"source": "cz-metro-l1-s31"})])
    alerts = evaluate.firing_alerts([tr("UntrustedSource", {"source": "cz-metro-l1-s31",
                                                             "stream": "traffic.card-taps"}, at(0), team="t")])
    assert evaluate.score(incidents, alerts).rules["UntrustedSource"].tp == 1


@pytest.mark.parametrize(("minute", "hit"), [(-1.01, False), (-1.0, True), (10.0, True), (10.01, False)])
def test_time_window_is_one_minute_before_to_ten_after(minute: float, hit: bool) -> None:
    incidents = evaluate.incidents_from_truth([row("SourceSilent", {"source": "s1"})])
    alerts = evaluate.firing_alerts([tr("SourceSilent", {"source": "s1", "stream": "x"}, at(minute))])
    r = evaluate.score(incidents, alerts).rules["SourceSilent"]
    assert (r.tp, r.fp) == ((1, 0) if hit else (0, 1))


def test_cold_chain_reference_adds_its_for_duration() -> None:
    loc = "https://id.gs1.org/414/6905000000019/254/TRUCK999"
    incidents = evaluate.incidents_from_truth([row("FoodColdChainBreach", {"location": loc})])
    assert incidents[0].reference == at(30)
    alerts = evaluate.firing_alerts([tr("FoodColdChainBreach", {"location": loc}, at(30) + 5)])
    r = evaluate.score(incidents, alerts).rules["FoodColdChainBreach"]
    assert r.tp == 1 and r.tta_s == [pytest.approx(5.0)]


def test_only_firing_counts_and_an_episode_counts_once() -> None:
    ent = {"stream": "traffic.road-detectors"}
    trs = [tr("DataQualityDegraded", ent, at(-5), status="pending"),
           tr("DataQualityDegraded", ent, at(0), n=1),
           tr("DataQualityDegraded", ent, at(0), n=1),  # redelivered
           tr("DataQualityDegraded", ent, at(0), status="flapping", n=2),
           tr("DataQualityDegraded", ent, at(0), n=3),  # flapping ended, same episode
           tr("DataQualityDegraded", ent, at(3), status="resolved", n=4)]
    alerts = evaluate.firing_alerts(trs)
    assert len(alerts) == 1 and alerts[0].starts_at == at(0)


def test_a_second_episode_of_the_same_pair_is_a_false_positive() -> None:
    incidents = evaluate.incidents_from_truth([row("RoadSpeedAnomaly", {"segment": "通江大道-2"})])
    trs = [tr("RoadSpeedAnomaly", {"segment": "通江大道-2"}, at(1)),
           tr("RoadSpeedAnomaly", {"segment": "通江大道-2"}, at(300), n=2)]
    r = evaluate.score(incidents, evaluate.firing_alerts(trs)).rules["RoadSpeedAnomaly"]
    assert (r.tp, r.fp, r.alerts) == (1, 1, 2)
    assert r.false_alerts[0].starts_at == at(300)


def test_tta_is_from_the_earliest_matching_alert() -> None:
    incidents = evaluate.incidents_from_truth([row("RidershipAnomaly", {"line": "地铁2号线"})])
    trs = [tr("RidershipAnomaly", {"line": "地铁2号线", "station": "a"}, at(4)),
           tr("RidershipAnomaly", {"line": "地铁2号线", "station": "b"}, at(2))]
    r = evaluate.score(incidents, evaluate.firing_alerts(trs)).rules["RidershipAnomaly"]
    assert (r.tp, r.fp, r.alerts) == (1, 0, 2)
    assert r.tta_s == [pytest.approx(120.0)]


def test_every_rule_has_a_row_and_unknown_alerts_count_as_false_positives() -> None:
    res = evaluate.score([], evaluate.firing_alerts([tr("SomethingElse", {"x": "1"}, at(0))]))
    assert set(evaluate.RULES) <= set(res.rules)
    assert res.rules["SomethingElse"].fp == 1
    assert res.rules["BadSignature"].precision is None and res.rules["BadSignature"].recall is None
    assert res.precision == 0.0


def test_goals() -> None:
    incidents = evaluate.incidents_from_truth([row("BadSignature", {"source": "g1"}),
                                               row("WaitTimeAnomaly", {"hospital": "h"})])
    alerts = evaluate.firing_alerts([tr("BadSignature", {"source": "g1", "stream": "s"}, at(3))])
    problems = evaluate.check_goals(evaluate.score(incidents, alerts))
    assert any("WaitTimeAnomaly: recall 0/1" in p for p in problems)
    assert any("BadSignature: time-to-alert 180 s" in p for p in problems)
    ok = evaluate.firing_alerts([tr("BadSignature", {"source": "g1", "stream": "s"}, at(1)),
                                 tr("WaitTimeAnomaly", {"hospital": "h"}, at(0))])
    assert evaluate.check_goals(evaluate.score(incidents, ok)) == []


def test_precision_goal_is_overall() -> None:
    incidents = evaluate.incidents_from_truth([row("BadSignature", {"source": f"g{i}"}, i * 20) for i in range(19)])
    alerts = [tr("BadSignature", {"source": f"g{i}"}, at(i * 20)) for i in range(19)]
    fp = tr("BadSignature", {"source": "zz"}, at(0))
    assert evaluate.check_goals(evaluate.score(incidents, evaluate.firing_alerts(alerts + [fp]))) == []
    fp2 = tr("BadSignature", {"source": "zy"}, at(0))
    problems = evaluate.check_goals(evaluate.score(incidents, evaluate.firing_alerts(alerts + [fp, fp2])))
    assert problems and "overall precision" in problems[0]


def test_missing_in_alertmanager_compares_label_sets() -> None:
    a = evaluate.firing_alerts([tr("UntrustedSource", {"source": "s", "stream": "t"}, at(0))])
    assert evaluate.missing_in_alertmanager(a, [{"labels": dict(a[0].labels)}]) == []
    assert evaluate.missing_in_alertmanager(a, [{"labels": {"alertname": "UntrustedSource"}}]) == a


def test_raw_cards_and_table() -> None:
    truth = [row("CardImpossibleTravel", {"card": "1"}), row("SourceSilent", {"source": "s"})]
    assert evaluate.raw_cards(truth) == {"1"}
    res = evaluate.score(evaluate.incidents_from_truth(truth, PSEUDO), [])
    text = evaluate.format_table(res)
    assert "CardImpossibleTravel" in text and "overall" in text
    assert evaluate.to_json(res)["rules"]["SourceSilent"]["fn"] == 1
