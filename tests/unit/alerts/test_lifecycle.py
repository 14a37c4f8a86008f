"""Alert lifecycle: pending/firing/resolved by event time, hysteresis, flapping, durability, outbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cityops.alerts.lifecycle import AlertEngine, UnknownRuleError
from cityops.alerts.spec import RuleSpec
from cityops.engine.state import StateStore
from cityops.sinks.alertmanager import rfc3339
from cityops.types import Alert, Transition

T0 = 1_700_000_000.0
CARD = {"card": "p-0123456789abcdef0123"}
LOC = {"location": "market-7"}


def _rules(**overrides: dict[str, Any]) -> dict[str, RuleSpec]:
    base = {
        "Cold": RuleSpec(
            name="Cold", kind="cold_chain", agent="food-safety", severity="warning", domain="food",
            for_s=600.0, resolve_after_s=300.0, params={"min_c": 0, "max_c": 4},
            labels={"domain": "food", "team": "food-safety"},
            summary="Cold chain breach at {location}: {value:.1f} °C", description="limit {max_c} °C. {summary}",
            runbook_url="https://rb.example/agents/food-safety.md#cold", flap_window_s=3600.0, flap_max_changes=6,
        ),
        "Travel": RuleSpec(
            name="Travel", kind="impossible_travel", agent="traffic-security", severity="critical",
            domain="security", for_s=0.0, resolve_after_s=1800.0, labels={"team": "transit"},
            summary="Card {card} travelled {value:.0f} km/h", runbook_url="https://rb.example/t.md#travel",
        ),
    }
    for name, changes in overrides.items():
        spec = base[name]
        base[name] = RuleSpec(**{**spec.__dict__, **changes})
    return base


def _engine(rules: dict[str, RuleSpec] | None = None, tmp: Path | None = None) -> tuple[StateStore, AlertEngine]:
    store = StateStore(tmp, fsync=False).open()
    return store, AlertEngine(store, rules or _rules())


def _drain(engine: AlertEngine) -> list[Transition]:
    items = engine.pop_outbox(10_000)
    engine.ack_outbox([s for s, _ in items])
    return [item for _, item in items]


def _statuses(items: list[Transition]) -> list[str]:
    return [i.status for i in items]


# -- pending → firing ----------------------------------------------------------------------------------
def test_pending_then_firing_after_for() -> None:
    store, eng = _engine()
    eng.signal("Cold", LOC, T0, active=True, value=7.5)
    assert eng.status("Cold", LOC) == "pending"
    eng.signal("Cold", LOC, T0 + 300, active=True, value=8.0)
    eng.advance(T0 + 599)
    assert eng.status("Cold", LOC) == "pending"
    eng.advance(T0 + 650)
    assert eng.status("Cold", LOC) == "firing"
    items = _drain(eng)
    assert _statuses(items) == ["pending", "firing"]
    pending, firing = items
    assert pending.starts_at == T0 and pending.am_action is None
    # Firing time is when the condition had held `for`, not when advance() happened to be called.
    assert firing.starts_at == T0 + 600 and firing.ts == T0 + 600 and firing.ends_at is None
    assert firing.am_action == "firing"
    assert firing.labels == {
        "alertname": "Cold", "severity": "warning", "domain": "food", "team": "food-safety", "location": "market-7",
    }
    assert firing.annotations == {
        "summary": "Cold chain breach at market-7: 8.0 °C",
        "description": "limit 4 °C.",
        "runbook_url": "https://rb.example/agents/food-safety.md#cold",
    }
    assert firing.value == 8.0
    assert store.meta["alert_seq"] == 2


def test_firing_decided_by_signal_time_without_advance() -> None:
    _, eng = _engine()
    eng.signal("Cold", LOC, T0, active=True, value=7.0)
    eng.signal("Cold", LOC, T0 + 700, active=True, value=7.0)
    items = _drain(eng)
    assert _statuses(items) == ["pending", "firing"]
    assert items[1].starts_at == T0 + 600


def test_no_firing_when_condition_drops_before_for() -> None:
    _, eng = _engine()
    eng.signal("Cold", LOC, T0, active=True, value=7.0)
    eng.signal("Cold", LOC, T0 + 500, active=False, value=3.0)
    eng.advance(T0 + 5000)
    assert eng.status("Cold", LOC) == "inactive"
    items = _drain(eng)
    assert _statuses(items) == ["pending", "resolved"]
    cancelled = items[1]
    assert cancelled.previous == "pending" and cancelled.am_action is None
    assert cancelled.ends_at == T0 + 500
    assert eng.firing() == []


def test_for_zero_fires_at_once() -> None:
    _, eng = _engine(_rules(Cold={"for_s": 0.0}))
    eng.signal("Cold", LOC, T0, active=True, value=9.0)
    assert eng.status("Cold", LOC) == "firing"
    assert _statuses(_drain(eng)) == ["firing"]


def test_inactive_signal_without_alert_keeps_no_state() -> None:
    store, eng = _engine()
    eng.signal("Cold", LOC, T0, active=False, value=2.0)
    assert len(store.table("alerts")) == 0
    assert _drain(eng) == []


# -- hysteresis ----------------------------------------------------------------------------------------
def test_hysteresis_recovery_must_hold_resolve_after() -> None:
    _, eng = _engine(_rules(Cold={"for_s": 0.0, "resolve_after_s": 300.0}))
    eng.signal("Cold", LOC, T0, active=True, value=9.0)
    eng.signal("Cold", LOC, T0 + 100, active=False, value=3.0)
    eng.advance(T0 + 350)  # recovered for 250 s only
    assert eng.status("Cold", LOC) == "firing"
    eng.signal("Cold", LOC, T0 + 360, active=True, value=6.0)  # relapse: recovery clock restarts
    eng.signal("Cold", LOC, T0 + 400, active=False, value=3.0)
    eng.advance(T0 + 650)
    assert eng.status("Cold", LOC) == "firing"
    eng.signal("Cold", LOC, T0 + 690, active=False, value=2.0)  # repeated recovery reports: same clock
    eng.advance(T0 + 700)
    assert eng.status("Cold", LOC) == "inactive"
    items = _drain(eng)
    assert _statuses(items) == ["firing", "resolved"]
    resolved = items[1]
    assert resolved.starts_at == T0 and resolved.ends_at == T0 + 700 and resolved.ts == T0 + 700
    assert resolved.am_action == "resolved" and resolved.previous == "firing"


def test_continuous_firing_stays_while_no_recovery_is_reported() -> None:
    _, eng = _engine(_rules(Cold={"for_s": 0.0}))
    eng.signal("Cold", LOC, T0 - 10, active=False)  # the rule reports both ways: continuous
    eng.signal("Cold", LOC, T0, active=True, value=9.0)
    eng.advance(T0 + 86_400)
    assert eng.status("Cold", LOC) == "firing"


def test_one_shot_resolves_after_quiet_time() -> None:
    _, eng = _engine()
    eng.signal("Travel", CARD, T0, active=True, value=900.0)
    eng.signal("Travel", CARD, T0 + 1000, active=True, value=700.0)  # another occurrence: same alert
    eng.advance(T0 + 2700)
    assert eng.status("Travel", CARD) == "firing"
    eng.advance(T0 + 2800)
    assert eng.status("Travel", CARD) == "inactive"
    items = _drain(eng)
    assert _statuses(items) == ["firing", "resolved"]
    assert items[0].annotations["summary"] == "Card p-0123456789abcdef0123 travelled 900 km/h"
    assert items[1].ends_at == T0 + 1000 + 1800


def test_explicit_one_shot_list() -> None:
    store = StateStore(None).open()
    eng = AlertEngine(store, _rules(Cold={"for_s": 0.0}), one_shot={"Travel"})
    eng.signal("Cold", LOC, T0, active=True, value=9.0)
    eng.advance(T0 + 10 * 86_400)
    assert eng.status("Cold", LOC) == "firing"  # continuous: needs a reported recovery


def test_new_episode_after_resolve() -> None:
    _, eng = _engine()
    eng.signal("Travel", CARD, T0, active=True, value=900.0)
    eng.advance(T0 + 2000)
    eng.signal("Travel", CARD, T0 + 9000, active=True, value=500.0)
    items = _drain(eng)
    assert _statuses(items) == ["firing", "resolved", "firing"]
    assert items[2].starts_at == T0 + 9000
    assert len({i.id for i in items}) == 3


# -- flapping ------------------------------------------------------------------------------------------
def test_flapping_holds_notifications_then_one_of_the_current_state() -> None:
    rules = _rules(Cold={"for_s": 0.0, "resolve_after_s": 0.0, "flap_window_s": 1000.0, "flap_max_changes": 4})
    _, eng = _engine(rules)
    t = T0
    for i in range(10):  # 20 changes in 1900 s
        eng.signal("Cold", LOC, t, active=True, value=9.0)
        eng.signal("Cold", LOC, t + 50, active=False, value=2.0)
        t += 100
    items = _drain(eng)
    assert _statuses(items) == ["firing", "resolved", "firing", "flapping"]
    # Alertmanager was last told "firing" (the 3rd change): it keeps being re-sent while flapping.
    assert [a.labels["location"] for a in eng.firing()] == ["market-7"]
    eng.signal("Cold", LOC, t, active=True, value=9.0)  # ends up firing
    eng.advance(t + 999)
    assert _drain(eng) == []  # still within a flap window of the last change
    eng.advance(t + 1000)
    items = _drain(eng)
    assert _statuses(items) == ["firing"]
    assert items[0].previous == "flapping" and items[0].am_action == "firing"
    assert [a.labels["location"] for a in eng.firing()] == ["market-7"]


def test_flapping_while_told_firing_keeps_resending_then_resolves() -> None:
    rules = _rules(Cold={"for_s": 0.0, "resolve_after_s": 0.0, "flap_window_s": 1000.0, "flap_max_changes": 3})
    _, eng = _engine(rules)
    eng.signal("Cold", LOC, T0, active=True, value=9.0)  # firing (told)
    eng.signal("Cold", LOC, T0 + 10, active=False)  # resolved (told)
    eng.signal("Cold", LOC, T0 + 20, active=True, value=9.0)  # third change: flapping, held
    assert _statuses(_drain(eng)) == ["firing", "resolved", "flapping"]
    assert eng.firing() == []  # Alertmanager last heard "resolved"
    eng.signal("Cold", LOC, T0 + 30, active=False)
    eng.advance(T0 + 2000)
    items = _drain(eng)
    assert _statuses(items) == ["resolved"]
    assert items[0].am_action is None  # Alertmanager already has it resolved


def test_flap_detection_can_be_off() -> None:
    rules = _rules(Cold={"for_s": 0.0, "resolve_after_s": 0.0, "flap_max_changes": 0})
    _, eng = _engine(rules)
    for i in range(10):
        eng.signal("Cold", LOC, T0 + 10 * i, active=i % 2 == 0, value=9.0)
    assert _statuses(_drain(eng)) == ["firing", "resolved"] * 5


# -- durability ----------------------------------------------------------------------------------------
def test_durable_across_restart_no_duplicate_firing_and_resolve_kept(tmp_path: Path) -> None:
    store, eng = _engine(tmp=tmp_path)
    eng.signal("Cold", LOC, T0, active=True, value=7.0)
    eng.advance(T0 + 700)
    eng.signal("Travel", CARD, T0 + 700, active=True, value=800.0)
    store.commit({("food.trace-events", 0): 41})
    delivered = _drain(eng)  # the dispatcher delivered and acked them ...
    assert _statuses(delivered) == ["pending", "firing", "firing"]
    store.commit({})  # ... and the acks were committed
    eng.signal("Cold", LOC, T0 + 800, active=False, value=2.0)  # uncommitted when the worker dies
    store.close()

    store2, eng2 = _engine(tmp=tmp_path)
    assert store2.offsets[("food.trace-events", 0)] == 41
    assert eng2.status("Cold", LOC) == "firing"
    assert eng2.pop_outbox(100) == []  # nothing re-announced
    assert {a.labels["alertname"] for a in eng2.firing()} == {"Cold", "Travel"}
    # The replay regenerates the lost signal, time goes on: the resolves still come, once each.
    eng2.signal("Cold", LOC, T0 + 800, active=False, value=2.0)
    eng2.advance(T0 + 5000)
    items = _drain(eng2)
    assert sorted((i.alertname, i.status) for i in items) == [("Cold", "resolved"), ("Travel", "resolved")]
    assert {i.id for i in items}.isdisjoint({i.id for i in delivered})
    cold = next(i for i in items if i.alertname == "Cold")
    assert cold.ends_at == T0 + 1100 and cold.am_action == "resolved"
    store2.commit({})
    store2.close()

    store3, eng3 = _engine(tmp=tmp_path)
    assert eng3.pop_outbox(100) == [] and eng3.firing() == []
    eng3.advance(T0 + 100_000)
    assert eng3.pop_outbox(100) == []
    store3.close()


def test_uncommitted_outbox_is_regenerated_identically(tmp_path: Path) -> None:
    store, eng = _engine(tmp=tmp_path)
    eng.signal("Travel", CARD, T0, active=True, value=800.0)
    store.commit({})
    eng.advance(T0 + 4000)  # resolve, then crash before commit
    lost = eng.pop_outbox(10)
    store.close()
    store2, eng2 = _engine(tmp=tmp_path)
    assert [i.status for _, i in eng2.pop_outbox(10)] == ["firing"]
    eng2.advance(T0 + 4000)
    assert eng2.pop_outbox(10) == lost  # same seqs, same ids, same content
    store2.close()


# -- outbox --------------------------------------------------------------------------------------------
def test_outbox_ids_are_deterministic() -> None:
    def run() -> list[tuple[int, dict[str, Any]]]:
        _, eng = _engine()
        eng.signal("Cold", LOC, T0, active=True, value=7.0)
        eng.signal("Travel", CARD, T0 + 5, active=True, value=900.0)
        eng.advance(T0 + 1000)
        eng.signal("Cold", LOC, T0 + 1001, active=False, value=1.0)
        eng.advance(T0 + 9000)
        return eng.pop_outbox(100)

    first, second = run(), run()
    assert first == second
    ids = [i.id for _, i in first]
    assert ids == [
        "Cold|location=market-7|0",
        "Travel|card=p-0123456789abcdef0123|0",
        "Cold|location=market-7|1",
        "Cold|location=market-7|2",
        "Travel|card=p-0123456789abcdef0123|1",
    ]
    assert [s for s, _ in first] == [0, 1, 2, 3, 4]


def test_entity_key_ignores_dict_order() -> None:
    _, eng = _engine(_rules(Cold={"for_s": 0.0}))
    eng.signal("Cold", {"b": "2", "a": "1"}, T0, active=True)
    eng.signal("Cold", {"a": "1", "b": "2"}, T0 + 1, active=True)
    assert [i.id for i in _drain(eng)] == ["Cold|a=1,b=2|0"]


def test_outbox_per_sink_acks() -> None:
    store = StateStore(None).open()
    eng = AlertEngine(store, _rules(), sinks=("kafka", "alertmanager"))
    eng.signal("Travel", CARD, T0, active=True, value=800.0)
    eng.signal("Travel", {"card": "p-2"}, T0, active=True, value=800.0)
    seqs = [s for s, _ in eng.pop_outbox(10)]
    eng.ack_outbox(seqs, sink="kafka")
    assert eng.pop_outbox(10, sink="kafka") == []
    assert [s for s, _ in eng.pop_outbox(10, sink="alertmanager")] == seqs
    eng.ack_outbox(seqs[:1], sink="alertmanager")
    assert [s for s, _ in eng.pop_outbox(10)] == seqs[1:]
    assert eng.pop_outbox(1) == eng.pop_outbox(5)[:1]


def test_outbox_partial_delivery_is_durable(tmp_path: Path) -> None:
    store, eng = _engine(tmp=tmp_path)
    eng.signal("Travel", CARD, T0, active=True, value=800.0)
    ((seq, item),) = eng.pop_outbox(10)
    eng.update_outbox(seq, {"kafka", "influx"})  # Alertmanager was down
    store.commit({})
    store.close()
    store2, eng2 = _engine(tmp=tmp_path)
    ((seq2, item2),) = eng2.pop_outbox(10)
    assert seq2 == seq and item2.delivered == ("influx", "kafka")
    assert eng2.pop_outbox(10, sink="kafka") == []
    eng2.ack_outbox([seq2])
    assert eng2.outbox_size() == 0
    store2.close()


def test_firing_is_alertmanager_postable() -> None:
    _, eng = _engine()
    eng.signal("Travel", CARD, T0, active=True, value=800.0)
    (alert,) = eng.firing()
    assert alert == Alert(
        labels={"alertname": "Travel", "severity": "critical", "domain": "security", "team": "transit",
                "card": "p-0123456789abcdef0123"},
        annotations={"summary": "Card p-0123456789abcdef0123 travelled 800 km/h", "description": "",
                     "runbook_url": "https://rb.example/t.md#travel"},
        starts_at=T0,
    )
    assert rfc3339(alert.starts_at) == "2023-11-14T22:13:20.000Z"


def test_missing_template_field_and_bad_label_names_do_not_break() -> None:
    _, eng = _engine(_rules(Travel={"summary": "Card {card} at {station}"}))
    eng.signal("Travel", {"card": "p-1", "reader-id": "r 7"}, T0, active=True, value=1.0)
    (item,) = _drain(eng)
    assert item.annotations["summary"] == "Card p-1 at {station}"
    assert item.labels["reader_id"] == "r 7"


def test_unknown_rule_fails_loudly() -> None:
    _, eng = _engine()
    with pytest.raises(UnknownRuleError, match="NoSuchRule"):
        eng.signal("NoSuchRule", CARD, T0, active=True)


def test_resolved_alert_state_is_compacted_but_ids_stay_unique() -> None:
    store, eng = _engine(_rules(Travel={"flap_window_s": 100.0}))
    eng.signal("Travel", CARD, T0, active=True, value=800.0)
    eng.advance(T0 + 1800)
    eng.advance(T0 + 5000)
    (rec,) = store.table("alerts").values()
    assert set(rec) == {"status", "n", "t", "notified"}
    eng.signal("Travel", CARD, T0 + 6000, active=True, value=800.0)
    assert [i.id.rsplit("|", 1)[1] for i in _drain(eng)] == ["0", "1", "2"]


def test_outbox_independent_of_advance_cadence() -> None:
    def run(step: float) -> list[tuple[int, Transition]]:
        _, eng = _engine()
        for i in range(5):
            eng.signal("Travel", {"card": f"p-{i}"}, T0 + 7 * i, active=True, value=800.0)
        eng.signal("Cold", LOC, T0, active=True, value=7.0)
        eng.signal("Cold", LOC, T0 + 900, active=False, value=1.0)
        t = T0 + 900
        while t < T0 + 5000:
            t += step
            eng.advance(t)
        return eng.pop_outbox(100)

    coarse, fine = run(4100.0), run(7.0)
    assert coarse == fine
    # Signals are handled as they arrive; what timers emit comes in event-time order.
    by_timer = [item.ts for _, item in coarse[7:]]
    assert len(by_timer) == 6 and by_timer == sorted(by_timer)
