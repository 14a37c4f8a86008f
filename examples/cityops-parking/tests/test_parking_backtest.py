"""`cityops backtest` runs this plugin with no line of cityops changed: its stream, KPI and rule kind come from
the entry point, as in the worker. A recording of lot P1 full for 30 minutes gives the KPI and the alert the
manifest implies (for: 15m, resolve_after: 10m), computed here by hand."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cityops.cli import main

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=CST)


def test_backtest_runs_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CITYOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CITYOPS_PSEUDONYM_KEY", "parking-backtest-key-0123456789")
    lines = []
    for minute in range(50):  # a report a minute; 390 of 400 spaces (97.5 %) for 30 minutes, then 200
        at = T0 + timedelta(minutes=minute)
        value = {"event_id": f"P1:{minute}", "ts": at.isoformat(), "source": "P1-gate", "lot": "P1",
                 "capacity": 400, "occupied": 390 if minute < 30 else 200, "entries": 1, "exits": 1}
        lines.append(json.dumps({"topic": "parking.lot-occupancy", "timestamp": int(at.timestamp() * 1000),
                                 "value": value}))
    rec = tmp_path / "parking.jsonl"
    rec.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    assert main(["backtest", "--from", str(rec), "--quiet", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["events"] == {"parking.lot-occupancy": {"accepted": 50}}
    kpi = rep["kpis"]["parking_occupancy"]
    assert (kpi["windows"], kpi["points"], kpi["series"]) == (50, 50, 1)
    assert kpi["fields"]["reports"]["total"] == 50 and kpi["fields"]["occupancy_max"]["max"] == 0.975
    assert rep["open_windows_at_end"] == 0
    [alert] = rep["alerts"]["ParkingLotFull"]
    assert alert["entity"] == {"lot": "P1"}
    # Full from 08:00; firing once that held 15 min; recovered at 08:30, resolved 10 min later.
    assert (alert["start"], alert["fired_at"], alert["resolved_at"]) == (
        T0.timestamp(), (T0 + timedelta(minutes=15)).timestamp(), (T0 + timedelta(minutes=40)).timestamp())
    assert [t["status"] for t in alert["transitions"]] == ["pending", "firing", "resolved"]
