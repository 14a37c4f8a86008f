"""`cityops demo` end to end: real Tansu, influxd (and Alertmanager if installed), worker and simulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cityops.demo import missing_prerequisites

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a dead, unreaped zombie is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_demo_runs_shows_kpis_and_leaves_nothing_running(tmp_path: Path) -> None:
    # A missing server is a failure here, not a skip: CI must install them (see README set-up).
    assert not missing_prerequisites(), missing_prerequisites()
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "cityops.cli", "demo", "--dir", str(workdir), "--for", "45s", "--speedup", "120"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    accepted = [int(m.replace(",", "")) for m in re.findall(r"accepted=([\d,]+)", proc.stdout)]
    assert accepted and max(accepted) > 0, output
    # A KPI line with numbers: metro taps per line, bus lines or road speed of a complete minute.
    kpi = re.compile(r"kpi (metro taps_in|bus top lines|road speed) +\d\d:\d\d +\S+.*\d")
    assert any(kpi.search(line) for line in proc.stdout.splitlines()), output
    assert "worker flushed cleanly" in proc.stdout, output

    pids = json.loads((workdir / "pids.json").read_text())["children"]
    assert {"kafka", "influxdb", "worker", "simulator"} <= set(pids), pids
    left = {name: pid for name, pid in pids.items() if _running(pid)}
    assert not left, f"still running after the demo exited: {left}"
    for log in ("worker.log", "simulator.log", "kafka/tansu.log", "influxdb/influxd.log"):
        assert (workdir / log).exists(), log
