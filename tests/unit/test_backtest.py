"""`cityops backtest` over a small hand-made recording: KPIs, alerts and the difference to the baseline,
each computed by hand here (no server: the recording is a file)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from cityops import backtest
from cityops.cli import main
from cityops.streams.city_streams import Pseudonymizer
from cityops.types import AlertState, Transition

CST = timezone(timedelta(hours=8))
KEY = "backtest-pseudonym-key-0123456789"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=CST)
P0 = (31.78, 119.95)
P1 = (31.87, 119.95)  # 0.09 degrees of latitude north of P0: 10.0075 km (haversine, R = 6371 km)
CARD_A, CARD_B, CARD_C, CARD_D = "2130500000000000001", "2130500000000000002", "2130500000000000003", "2130500000000000004"

RUNBOOK = """# traffic-security

## CardImpossibleTravel
Two taps too far apart for the time between them.

## CardDeclinedBurst
Declined taps in a burst.
"""

IMPOSSIBLE = """  - alert: CardImpossibleTravel
    kind: impossible_travel
    severity: {severity}
    for: 0s
    resolve_after: 30m
    params: {{max_speed_kmh: {speed}, min_km: 1}}
    summary: "Card {{card}} travelled {{value:.0f}} km/h between readers"
"""
DECLINED = """  - alert: CardDeclinedBurst
    kind: declined_burst
    severity: warning
    for: 0s
    resolve_after: 30m
    params: {count: 5, window_s: 10m}
    summary: "Card {card}: {value:.0f} declined taps"
"""
HEAD = """agent: traffic-security
description: card fraud
consumes: [traffic.card-taps]
labels: {domain: security, team: transit}
rules:
"""


def manifests(folder: Path, rules: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traffic-security.yml").write_text(HEAD + rules)
    (folder / "traffic-security.md").write_text(RUNBOOK)
    return folder


def tap(n: int, card: str, at_s: float, where: tuple[float, float], result: str = "ok") -> dict[str, Any]:
    return {"event_id": f"gate-1:{n}", "ts": (T0 + timedelta(seconds=at_s)).isoformat(), "source": "gate-1",
            "card_id": card, "mode": "metro", "line": "1", "direction": "in", "fare_cny": 2.0, "result": result,
            "lat": where[0], "lon": where[1]}


def taps() -> list[dict[str, Any]]:
    """Card A: 10.0 km in 10 min (60 km/h); card B: 10.0 km in 150 s (240 km/h); card C: 5 declined taps
    one minute apart; card D: a tap every 5 min from 08:15 to 09:00 that move event time past every
    resolve_after (a lone tap an hour ahead would be held by the partition clock until corroborated)."""
    return [
        tap(1, CARD_A, 0, P0),
        tap(2, CARD_B, 60, P0),
        tap(3, CARD_C, 120, P0, "declined"),
        tap(4, CARD_C, 180, P0, "declined"),
        tap(5, CARD_B, 210, P1),
        tap(6, CARD_C, 240, P0, "declined"),
        tap(7, CARD_C, 300, P0, "declined"),
        tap(8, CARD_C, 360, P0, "declined"),
        tap(9, CARD_A, 600, P1),
    ] + [tap(10 + i, CARD_D, 900 + 300 * i, P0) for i in range(10)]


def ms(event: dict[str, Any]) -> int:
    return round(datetime.fromisoformat(event["ts"]).timestamp() * 1000)


def recording(path: Path, *, bad: bool = False) -> Path:
    """The taps as a recording, one record per line, record timestamp = event time (a live feed)."""
    lines = [orjson.dumps({"topic": "traffic.card-taps", "partition": 0, "offset": i, "timestamp": ms(e),
                           "value": e}).decode() for i, e in enumerate(taps())]
    if bad:
        lines[2:2] = ["this is not json"]  # line 3
        lines[5:5] = ['{"partition": 0, "value": {}}']  # line 6: no topic
        lines[7:7] = ['{"topic": "traffic.card-taps", "offset": 1, "value": {}}']  # line 8: offset went back
        lines[9:9] = ['{"topic": "cityops.alerts", "timestamp": 1764460800000, "value": {"id": "x"}}']  # line 10:
        # not a consumed stream
        lines[11:11] = ['{"topic": "traffic.card-taps", "offset": 99, "timestamp": 1764460800000, '
                        '"value_b64": "%%%"}']  # line 12: bad base64
        lines[12:12] = [""]  # line 13: blank, skipped
        lines += ['{"topic": "traffic.card-taps", "value": {}}',  # line 26: no timestamp (not time 0: 1970)
                  '{"topic": "traffic.card-taps", "timestamp": 0, "value": {}}']  # line 27: Kafka's "none"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("CITYOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CITYOPS_PSEUDONYM_KEY", KEY)


def run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any] | None]:
    out = tmp_path / "report.json"
    out.unlink(missing_ok=True)
    code = main(["backtest", "--quiet", "--json", str(out), *args])
    return code, json.loads(out.read_text()) if out.exists() else None


def epoch(at_s: float) -> float:
    return (T0 + timedelta(seconds=at_s)).timestamp()


def test_lowered_threshold_adds_changed_severity_changes_removed_rule_removes(tmp_path: Path, env: None,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    baseline = manifests(tmp_path / "deployed", IMPOSSIBLE.format(severity="critical", speed=150) + DECLINED)
    proposed = manifests(tmp_path / "proposed", IMPOSSIBLE.format(severity="warning", speed=50))
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(proposed),
                    "--baseline", str(baseline))
    assert code == 0 and rep is not None
    pseudo = Pseudonymizer(KEY.encode())
    a, b, c = ((("card", pseudo(x)),) for x in (CARD_A, CARD_B, CARD_C))

    # The proposal: A at 60 km/h (> 50) and B at 240 km/h, both one-shot, resolved 30 min after.
    got = {(e["alertname"], tuple(e["entity"].items())): e for eps in rep["alerts"].values() for e in eps}
    assert set(got) == {("CardImpossibleTravel", a), ("CardImpossibleTravel", b)}
    ea, eb = got[("CardImpossibleTravel", a)], got[("CardImpossibleTravel", b)]
    assert (ea["start"], ea["fired_at"], ea["resolved_at"]) == (epoch(600), epoch(600), epoch(600 + 1800))
    assert (eb["start"], eb["fired_at"], eb["resolved_at"]) == (epoch(210), epoch(210), epoch(210 + 1800))
    assert ea["value"] == pytest.approx(60.0, abs=0.1) and eb["value"] == pytest.approx(240.2, abs=0.1)
    assert [t["status"] for t in ea["transitions"]] == ["firing", "resolved"]
    assert ea["severity"] == "warning" and ea["labels"] == {"domain": "security", "team": "transit"}

    # The baseline: B (critical) and C's declined burst (the 5th declined tap, at 08:06).
    base = {(e["alertname"], tuple(e["entity"].items())): e for eps in rep["baseline_alerts"].values() for e in eps}
    assert set(base) == {("CardImpossibleTravel", b), ("CardDeclinedBurst", c)}
    assert base[("CardDeclinedBurst", c)]["fired_at"] == epoch(360)
    assert base[("CardDeclinedBurst", c)]["value"] == 5

    diff = rep["diff"]
    assert set(diff) == {"CardImpossibleTravel", "CardDeclinedBurst"}
    travel = diff["CardImpossibleTravel"]
    assert [tuple(e["entity"].items()) for e in travel["added"]] == [a]
    assert travel["removed"] == [] and travel["unchanged"] == 0
    [changed] = travel["changed"]
    assert tuple(changed["proposed"]["entity"].items()) == b and changed["fields"] == ["severity"]
    assert (changed["baseline"]["severity"], changed["proposed"]["severity"]) == ("critical", "warning")
    declined = diff["CardDeclinedBurst"]
    assert declined["added"] == [] and declined["changed"] == []
    assert [(tuple(e["entity"].items()), e["start"]) for e in declined["removed"]] == [(c, epoch(360))]

    text = capsys.readouterr().out
    assert "difference to the baseline (2 alerts): 1 added, 1 removed, 1 changed" in text
    assert f"changed card={pseudo(CARD_B)} from 2026-11-25T08:03:30+08:00: severity: 'critical' → 'warning'" in text
    assert CARD_A not in text and CARD_B not in text  # raw card numbers never leave ingest


def test_kpis_by_hand_every_window_closed(tmp_path: Path, env: None) -> None:
    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    lp = tmp_path / "kpis.lp"
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(rules),
                    "--baseline", str(rules), "--kpis-out", str(lp))
    assert code == 0 and rep is not None
    assert "diff" not in rep  # the same manifests: nothing to compare
    assert rep["open_windows_at_end"] == 0
    assert rep["events"] == {"traffic.card-taps": {"accepted": 19}}
    ridership = rep["kpis"]["traffic_ridership"]
    # Minutes with taps: 08:00 A, 08:01 B, 08:02-08:06 C (declined; B's second tap at 08:03:30), 08:10 A,
    # 08:15, 08:20, ... 09:00 D. The watermark ends at 09:00: the worker closes windows up to 08:49
    # (watermark - window - lateness); 08:50, 08:55 and 09:00 close because the backtest's input has ended.
    assert (ridership["windows"], ridership["points"], ridership["series"]) == (18, 18, 1)
    assert (ridership["first"], ridership["last"]) == (epoch(0), epoch(3600))
    assert ridership["fields"]["taps_in"] == {"total": 14, "mean": 14 / 18, "max": 1}
    assert ridership["fields"]["declined"]["total"] == 5 and ridership["fields"]["declined"]["max"] == 1
    assert ridership["fields"]["revenue_cny"]["total"] == 28.0
    assert ridership["fields"]["taps_out"]["total"] == 0
    # Processing-time windows on the records' clock (their timestamps): the same 18 minutes, every event once.
    quality = rep["kpis"]["stream_quality"]
    assert (quality["windows"], quality["fields"]["accepted"]["total"]) == (18, 19)
    lines = lp.read_text().splitlines()
    assert len(lines) == 18 + quality["points"]
    t3 = int(epoch(180))
    assert (f"traffic_ridership,line=1,mode=metro declined=1i,errors=0i,revenue_cny=2,taps_in=1i,taps_out=0i "
            f"{t3}") in lines
    jl = tmp_path / "kpis.jsonl"
    code, _ = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(rules),
                  "--baseline", str(rules), "--kpis-out", str(jl))
    points = [orjson.loads(x) for x in jl.read_text().splitlines()]
    assert code == 0 and len(points) == len(lines)
    assert {"measurement": "traffic_ridership", "tags": {"mode": "metro", "line": "1"}, "time": t3,
            "fields": {"taps_in": 1, "taps_out": 0, "declined": 1, "revenue_cny": 2.0, "errors": 0}} in points


def test_bad_lines_are_counted_with_their_line_numbers(tmp_path: Path, env: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl", bad=True)), "--agents", str(rules),
                    "--baseline", str(rules))
    assert code == 0 and rep is not None
    listed = {b["line"]: b["reason"] for b in rep["input"]["bad_lines_listed"]}
    assert rep["input"]["bad_lines"] == 6 and sorted(listed) == [3, 6, 8, 12, 26, 27]
    assert listed[3].startswith("not JSON")
    assert listed[6] == "topic: required, a non-empty string"
    assert "offset 1 of traffic.card-taps[0] is not after the previous record's (4)" in listed[8]
    assert listed[12].startswith("value_b64: not base64")
    assert listed[26].startswith("timestamp: required") and listed[27].startswith("timestamp: 0 is Kafka's")
    assert rep["input"]["first_timestamp"] == T0.timestamp()  # never 1970: the taps' own first time
    assert rep["input"]["ignored"] == {"cityops.alerts": 1}
    assert rep["input"]["records"] == 19  # every good record still counted
    assert rep["events"] == {"traffic.card-taps": {"accepted": 19}}
    assert "line 8: offset 1 of traffic.card-taps[0]" in capsys.readouterr().out


def test_without_agents_the_deployed_rules_run_and_nothing_is_compared(tmp_path: Path, env: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    deployed = manifests(tmp_path / "deployed", IMPOSSIBLE.format(severity="critical", speed=150))
    monkeypatch.setenv("CITYOPS_RULES_DIR", str(deployed))
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")))
    assert code == 0 and rep is not None
    assert rep["manifests"] == str(deployed) and rep["baseline_manifests"] is None and "diff" not in rep
    assert list(rep["alerts"]) == ["CardImpossibleTravel"] and len(rep["alerts"]["CardImpossibleTravel"]) == 1


def test_bad_manifest_exits_2_naming_file_and_key(tmp_path: Path, env: None, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = manifests(tmp_path / "proposed", IMPOSSIBLE.format(severity="urgent", speed=50))
    good = manifests(tmp_path / "deployed", IMPOSSIBLE.format(severity="critical", speed=150))
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(bad),
                    "--baseline", str(good))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and rep is None and len(err) == 1
    assert "--agents" in err[0] and "traffic-security.yml" in err[0]
    assert "rules[0] (CardImpossibleTravel).severity: 'urgent' is not one of" in err[0]
    # One line naming what the user set, once: --agents DIR: DIR/file.yml: key: problem (not the worker's
    # CITYOPS_RULES_DIR, which the user did not set).
    assert err[0] == (f"cityops: --agents {bad}: {bad.name}/traffic-security.yml: rules[0] (CardImpossibleTravel)"
                      f".severity: " + err[0].split(".severity: ", 1)[1])
    assert "CITYOPS_RULES_DIR" not in err[0] and err[0].count(str(bad)) == 1
    code, _ = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(good),
                  "--baseline", str(bad))
    said = capsys.readouterr().err.strip()
    assert code == 2 and said.startswith(f"cityops: --baseline {bad}: {bad.name}/traffic-security.yml: ")
    # Without --agents the worker's setting is what the user set: named once.
    monkeypatch.setenv("CITYOPS_RULES_DIR", str(bad))
    code, _ = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")))
    said = capsys.readouterr().err.strip()
    assert code == 2 and said.startswith(f"cityops: CITYOPS_RULES_DIR ({bad}): {bad.name}/traffic-security.yml: ")
    assert said.count("CITYOPS_RULES_DIR") == 1 and "manifests (" not in said
    monkeypatch.delenv("CITYOPS_RULES_DIR")
    code, _ = run(tmp_path, "--from", str(tmp_path / "missing.jsonl"), "--agents", str(good))
    assert code == 2 and "--from" in capsys.readouterr().err
    code, _ = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(tmp_path / "nope"))
    assert code == 2 and "--agents" in capsys.readouterr().err


def test_pseudonym_key_from_the_option_or_refused_naming_the_setting(tmp_path: Path, env: None,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    rec = recording(tmp_path / "rec.jsonl")
    monkeypatch.delenv("CITYOPS_PSEUDONYM_KEY")
    code, _ = run(tmp_path, "--from", str(rec), "--agents", str(rules))
    assert code == 2 and "CITYOPS_PSEUDONYM_KEY" in capsys.readouterr().err
    code, rep = run(tmp_path, "--from", str(rec), "--agents", str(rules), "--pseudonym-key", KEY)
    assert code == 0 and rep is not None
    [alert] = rep["alerts"]["CardImpossibleTravel"]
    assert alert["entity"] == {"card": Pseudonymizer(KEY.encode())(CARD_B)}


def test_recording_lines_round_trip_exactly() -> None:
    nxt: dict[tuple[str, int], int] = {}
    for raw in (b'{"a":1}', b'{"a": 1}', b"\xff not json", b'[{"big":123456789012345678901234567890}]', None):
        rec = backtest.Record("t", 2, 7, 1764460800.123, raw)
        again = backtest.parse_record(backtest.record_line(rec), {})
        assert again == rec
    # Defaults: partition 0, offsets counted per partition, RFC 3339 timestamps, value re-serialized compactly.
    a = backtest.parse_record(b'{"topic": "t", "timestamp": "2026-11-25T08:00:00+08:00", "value": {"x": [1, 2]}}', nxt)
    b = backtest.parse_record(b'{"topic": "t", "timestamp": 1764460800123, "value_b64": "'
                              + base64.b64encode(b"\x00") + b'"}', nxt)
    assert (a.partition, a.offset, a.timestamp, a.value) == (0, 0, T0.timestamp(), b'{"x":[1,2]}')
    assert (b.offset, b.timestamp, b.value) == (1, 1764460800.123, b"\x00")
    with pytest.raises(ValueError, match="unknown key"):
        backtest.parse_record(b'{"topic": "t", "vaule": 1}', nxt)
    with pytest.raises(ValueError, match="exactly one of value"):
        backtest.parse_record(b'{"topic": "t", "timestamp": 1}', nxt)
    with pytest.raises(ValueError, match="timestamp: required"):
        backtest.parse_record(b'{"topic": "t", "value": 1}', nxt)


def _tr(status: str, ts: float, starts: float, *, prev: str | None = None, severity: str = "warning",
        card: str = "p1") -> Transition:
    return Transition(id=f"R|card={card}|0", alertname="R", status=AlertState(status),
                      previous=None if prev is None else AlertState(prev), am_action=None, severity=severity,
                      domain="d", entity={"card": card}, labels={"alertname": "R", "severity": severity, "domain": "d",
                                                                "card": card},
                      annotations={"summary": "s"}, starts_at=starts, ends_at=ts if status == "resolved" else None,
                      value=1.0, ts=ts)


def test_episodes_start_at_the_condition_and_cancelled_pending_is_no_alert() -> None:
    trs = [
        _tr("pending", 100, 100), _tr("firing", 400, 400, prev="pending"), _tr("resolved", 900, 400, prev="firing"),
        _tr("pending", 1000, 1000), _tr("resolved", 1100, 1000, prev="pending"),  # dropped before `for`
        _tr("firing", 2000, 2000, card="p2"),  # still firing at the end
    ]
    eps, cancelled = backtest.episodes(trs)
    assert cancelled == 1
    assert [(e.entity, e.start, e.fired_at, e.resolved_at) for e in eps] == [
        ((("card", "p1"),), 100, 400, 900), ((("card", "p2"),), 2000, 2000, None)]
    # A longer `for` fires the same episode later: matched by its condition start, so it is "changed".
    later, _ = backtest.episodes([_tr("pending", 100, 100), _tr("firing", 700, 700, prev="pending")])
    d = backtest.diff_episodes(eps, later)["R"]
    assert [f for _, _, f in d.changed] == [["fired_at", "resolved_at"]]
    assert [e.entity for e in d.removed] == [(("card", "p2"),)] and d.added == []


def test_simulator_recording_backtests(tmp_path: Path, env: None) -> None:
    """`cityops simulate --to file` writes a recording with record timestamps; the backtest reads it whole."""
    rec = tmp_path / "sim.jsonl"
    assert main(["simulate", "--to", "file", "--out", str(rec), "--duration", "20m", "--seed", "5", "--batch", "10",
                 "--rate", "20", "--start", "2026-11-25T08:00:00+08:00", "--quiet"]) == 0
    lines = [orjson.loads(x) for x in rec.read_text().splitlines()]
    stamps = [x["timestamp"] for x in lines]
    assert stamps == sorted(stamps)  # a broker's clock does not go back
    sent = 0
    for x in lines:
        value = x["value"]
        evs = value["epcisBody"]["eventList"] if x["topic"] == "food.trace-events" else value
        times = [datetime.fromisoformat(e.get("ts") or e.get("eventTime")).timestamp() * 1000 for e in evs]
        assert max(times) <= x["timestamp"]  # sent after its events (an EPCIS upload after its last one)
        sent += len(evs)
    assert {x["topic"] for x in lines} >= {"traffic.card-taps", "health.card-events", "food.trace-events"}
    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    code, rep = run(tmp_path, "--from", str(rec), "--agents", str(rules))
    assert code == 0 and rep is not None and rep["input"]["bad_lines"] == 0
    assert rep["dead_letters"] == {}  # nothing dated ahead of its record ("future")
    assert sum(n for counts in rep["events"].values() for n in counts.values()) == sent
    accepted = sum(counts.get("accepted", 0) for counts in rep["events"].values())
    assert rep["kpis"]["stream_quality"]["fields"]["accepted"]["total"] == accepted
    taps = rep["kpis"]["traffic_ridership"]["fields"]
    per_tap = taps["taps_in"]["total"] + taps["taps_out"]["total"] + taps["declined"]["total"] + taps["errors"]["total"]
    assert per_tap == rep["events"]["traffic.card-taps"]["accepted"]


def test_simulate_help_says_where_to_file_writes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--to {kafka,file} destination (default kafka; file: a recording for cityops backtest, to --out, " \
           "default events.jsonl)" in text


def test_input_problems_are_named_and_records_read_are_counted_apart_from_those_processed(
        tmp_path: Path, env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    # A directory is not "no such file".
    code, _ = run(tmp_path, "--from", str(tmp_path), "--agents", str(rules))
    said = capsys.readouterr().err
    assert code == 2 and f"--from {tmp_path}: is a directory" in said and "no such file" not in said
    # An empty recording: still a report (exit 0), with a warning.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, rep = run(tmp_path, "--from", str(empty), "--agents", str(rules))
    out, said = capsys.readouterr()
    assert code == 0 and rep is not None and rep["input"]["records_read"] == 0
    assert f"warning: no records in {empty}" in said
    # Records of a topic no loaded stream reads (an installed plugin's, plugins off): read, not processed, and
    # said so in the header.
    monkeypatch.setenv("CITYOPS_PLUGINS", "none")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(orjson.dumps({"topic": "parking.lot-occupancy", "timestamp": 1764460800000 + i,
                                           "value": {"n": i}}).decode() + "\n" for i in range(120)))
    monkeypatch.setenv("CITYOPS_RULES_DIR", str(rules))
    code, rep = run(tmp_path, "--from", str(other))  # the deployed manifests alone: nothing compared
    out, said = capsys.readouterr()
    assert code == 0 and rep is not None
    assert (rep["input"]["records_read"], rep["input"]["records"]) == (120, 0)
    assert rep["input"]["ignored"] == {"parking.lot-occupancy": 120}
    assert f"backtest of {other}: 120 records read, 0 of the streams loaded (120 of topics no stream reads)" in out
    assert "no records in" not in said
    # No baseline ran: the alerts are not called "proposed".
    assert "\nalerts: 0 in 0 rules" in out and "alerts (proposed)" not in out


def test_manifests_line_lists_the_plugins_manifest_folders_too(tmp_path: Path, env: None,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cityops.plugins import plugin_set
    from cityops.settings import load_settings

    rules = manifests(tmp_path / "rules", IMPOSSIBLE.format(severity="critical", speed=150))
    code, rep = run(tmp_path, "--from", str(recording(tmp_path / "rec.jsonl")), "--agents", str(rules))
    out = capsys.readouterr().out
    assert code == 0 and rep is not None
    settings = load_settings({"CITYOPS_PSEUDONYM_KEY": KEY, "CITYOPS_KAFKA_BOOTSTRAP": "k:9092",
                              "CITYOPS_INFLUX_URL": "http://i:8086", "CITYOPS_DATA_DIR": str(tmp_path)})
    folders = [(ld.label(), str(f)) for ld, f, _ in plugin_set(settings).manifest_folders()]
    assert [(x["plugin"], x["folder"]) for x in rep["plugin_manifests"]] == folders
    [line] = [x for x in out.splitlines() if x.startswith("  manifests: ")]
    assert line.startswith(f"  manifests: {rules}" + "".join(f", {f} ({label})" for label, f in folders))
