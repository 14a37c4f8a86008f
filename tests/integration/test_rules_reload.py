"""Manifests reload in a running worker on SIGHUP: real worker process, Tansu, InfluxDB and Alertmanager.

A refused manifest leaves the running rules in force; a rule added by the reload raises its alert at
Alertmanager, while an alert already firing (its rule unchanged) is not notified again: no new firing
transition on ``cityops.alerts`` and the same alert (labels, ``startsAt``) at Alertmanager. A rule then
removed by a reload has its firing alert resolved at Alertmanager.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cityops.streams.city_streams import Pseudonymizer
from tests.conftest import PSEUDONYM_KEY
from tests.installed_plugins import plugin_rules
from tests.integration.test_alert_durability import alert_records

pytestmark = pytest.mark.integration
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=CST)
TRAVELLER = "2130519977770000001"
DECLINED = "2130519977770000002"

FAST = """
  - alert: FastCard
    kind: impossible_travel
    severity: critical
    resolve_after: 2h
    params: {max_speed_kmh: 150, min_km: 1}
    summary: "Card {card} travelled {value:.0f} km/h"
"""
DECLINED_RULE = """
  - alert: DeclinedCards
    kind: declined_burst
    severity: %s
    resolve_after: 2h
    params: {count: 3, window_s: 10m}
    summary: "Card {card}: {value:.0f} declined taps"
"""
RUNBOOK = "# reload-e2e\n\n## FastCard\n\nrunbook\n\n## DeclinedCards\n\nrunbook\n"


def write_rules(rules: Path, *extra: str, fast: bool = True) -> None:
    rules.mkdir(exist_ok=True)
    (rules / "reload-e2e.md").write_text(RUNBOOK)
    text = "agent: reload-e2e\nlabels: {domain: security}\nrules:\n" + (FAST if fast else "") + "".join(extra)
    tmp = rules / "reload-e2e.yml.tmp"  # replaced at once, as an operator's tool (or a ConfigMap) does
    tmp.write_text(text)
    tmp.replace(rules / "reload-e2e.yml")


def tap(i: int, minutes: float, card: str, lat: float = 31.80, lon: float = 119.97,
        result: str | None = None) -> dict[str, Any]:
    ev = {"event_id": f"reload-{i}", "ts": (T0 + timedelta(minutes=minutes)).isoformat(),
          "source": "cz-metro-l1-s01", "card_id": card, "mode": "metro", "line": "地铁1号线", "direction": "in",
          "fare_cny": 2, "lat": lat, "lon": lon}
    if result is not None:
        ev["result"] = result
    return ev


def clock_taps(start_i: int, from_min: int, to_min: int) -> list[dict[str, Any]]:
    """Ordinary taps of other cards, one a minute: they move event time forward."""
    return [tap(start_i + m, m, f"21305199888{start_i + m:08d}") for m in range(from_min, to_min + 1)]


def produce_taps(bootstrap: str, taps: list[dict[str, Any]]) -> None:
    """One batch message on partition 0: event time moves on one partition only, so the stream's watermark
    follows it at once (another partition would hold it back until it counts as idle)."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap)
    p.send("traffic.card-taps", json.dumps(taps).encode(), partition=0)
    p.flush()
    p.close()


def am_active(am: Any, alertname: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{am.url}/api/v2/alerts?active=true", timeout=5) as r:
        return [a for a in json.loads(r.read()) if a["labels"].get("alertname") == alertname]


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _handles_sighup(pid: int) -> bool:
    """Whether the process ignores or catches SIGHUP (signal 1: bit 0 of SigIgn/SigCgt in /proc/PID/status)."""
    masks = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("SigIgn", "SigCgt"):
                masks[key] = int(value.strip(), 16)
    return bool((masks.get("SigIgn", 0) | masks.get("SigCgt", 0)) & 1)


def test_sighup_adds_a_rule_that_alerts_while_a_firing_alert_is_not_notified_again_and_removal_resolves(
        kafka: Any, alertmanager: Any, worker_factory: Any, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write_rules(rules)
    w = worker_factory(CITYOPS_RULES_DIR=str(rules), CITYOPS_ALERTMANAGER_URL=alertmanager.url,
                       CITYOPS_ALERT_RESEND_S="1")
    pseudo = Pseudonymizer(PSEUDONYM_KEY.encode())
    # 15 km in 2 minutes: FastCard fires for the traveller.
    journey = [tap(1, 0, TRAVELLER, 31.80, 119.97), tap(2, 2, TRAVELLER, 31.66, 119.95)]
    produce_taps(kafka.url, journey + clock_taps(100, 0, 5))
    w.start()
    # While it starts, once the process handles SIGHUP at all (the interpreter's own start-up, before cityops
    # runs a line, keeps the default action): no reason to end the process. (A fixed 1 s sleep raced with a
    # slow interpreter start under load.)
    deadline = time.monotonic() + 60
    while not _handles_sighup(w.proc.pid):
        assert w.proc.poll() is None and time.monotonic() < deadline, "the worker never handled SIGHUP"
        time.sleep(0.02)
    w.proc.send_signal(signal.SIGHUP)
    w.wait(lambda: any(a["labels"].get("card") == pseudo(TRAVELLER) for a in am_active(alertmanager, "FastCard")),
           what="FastCard firing at Alertmanager")
    before = [a for a in am_active(alertmanager, "FastCard") if a["labels"]["card"] == pseudo(TRAVELLER)][0]
    health = w.health()
    # (the rules of the installed agent plugins, e.g. examples/cityops-parking, are loaded beside them)
    assert health is not None and health["rules"]["generation"] == 1 and health["rules"]["rules"] == 1 + plugin_rules()

    # A mistake in the manifest: refused with the file and key, the worker runs on with its rules.
    write_rules(rules, DECLINED_RULE % "urgent")
    w.proc.send_signal(signal.SIGHUP)
    w.wait(lambda: (((w.health() or {}).get("rules") or {}).get("last_reload") or {}).get("result") == "refused",
           what="reload refused")
    last = w.health()["rules"]["last_reload"]
    assert last["result"] == "refused" and "reload-e2e.yml: rules[1] (DeclinedCards).severity" in last["error"]
    assert "rules reload refused (SIGHUP)" in w.log_tail(20000)
    assert w.health()["rules"]["generation"] == 1

    # Fixed: the reload adds DeclinedCards; FastCard is unchanged.
    ok_before = sample(w.metrics(), 'cityops_manifest_reloads_total{result="ok"}')  # (the SIGHUP at start)
    write_rules(rules, DECLINED_RULE % "warning")
    w.proc.send_signal(signal.SIGHUP)
    w.wait(lambda: w.health()["rules"]["generation"] == 2, what="reload applied")
    rules_status = w.health()["rules"]
    assert rules_status["generation"] == 2 and rules_status["rules"] == 2 + plugin_rules()
    assert rules_status["last_reload"]["changes"]["added"] == ["DeclinedCards"]
    assert rules_status["last_reload"]["changes"]["unchanged"] == 1 + plugin_rules()
    metrics = w.metrics()
    assert sample(metrics, 'cityops_manifest_reloads_total{result="ok"}') == ok_before + 1
    assert sample(metrics, 'cityops_manifest_reloads_total{result="refused"}') == 1

    declined = [tap(10 + i, 6 + i, DECLINED, result="declined") for i in range(3)]
    produce_taps(kafka.url, declined + clock_taps(200, 6, 12))
    w.wait(lambda: any(a["labels"].get("card") == pseudo(DECLINED) for a in am_active(alertmanager, "DeclinedCards")),
           what="the new rule's alert at Alertmanager")

    records = alert_records(kafka.url)
    fast = [r for r in records if r["alertname"] == "FastCard"]
    # The firing alert of the unchanged rule was not notified again: one firing transition, no resolve.
    assert [r["status"] for r in fast] == ["firing"], fast
    after = [a for a in am_active(alertmanager, "FastCard") if a["labels"]["card"] == pseudo(TRAVELLER)]
    assert len(after) == 1
    assert after[0]["fingerprint"] == before["fingerprint"] and after[0]["startsAt"] == before["startsAt"]
    assert [r["status"] for r in records if r["alertname"] == "DeclinedCards"] == ["firing"]

    # FastCard taken out of the manifests: its firing alert is resolved at Alertmanager (no zombie), the
    # alert of the rule that stays is untouched.
    write_rules(rules, DECLINED_RULE % "warning", fast=False)
    w.proc.send_signal(signal.SIGHUP)
    w.wait(lambda: w.health()["rules"]["generation"] == 3, what="the second reload")
    assert w.health()["rules"]["last_reload"]["changes"]["removed"] == ["FastCard"]
    w.wait(lambda: not am_active(alertmanager, "FastCard"), what="FastCard resolved at Alertmanager")
    w.wait(lambda: [r["status"] for r in alert_records(kafka.url) if r["alertname"] == "FastCard"]
           == ["firing", "resolved"], what="FastCard's resolved transition")
    assert len(am_active(alertmanager, "DeclinedCards")) == 1
    assert [r["status"] for r in alert_records(kafka.url) if r["alertname"] == "DeclinedCards"] == ["firing"]
    assert w.terminate() == 0
