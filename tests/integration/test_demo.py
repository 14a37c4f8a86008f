"""`cityops demo` end to end: real Tansu, influxd, Alertmanager, worker and simulator.

Also: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops the simulator, then the
worker — whose final flush needs the servers — and only then the servers; "flushed cleanly" is printed
only when the worker reports it, otherwise what was left and where; the folder holds what
`cityops evaluate-alerts` needs, and the printed command scores the demo's alerts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

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


def _assert_nothing_left(workdir: Path) -> dict[str, object]:
    pids = json.loads((workdir / "pids.json").read_text())
    left = {name: pid for name, pid in pids["children"].items() if _running(pid)}
    assert not left, f"still running after the demo exited: {left}"
    return pids  # type: ignore[no-any-return]


def _assert_stop_order(pids: dict[str, object]) -> None:
    """Simulator, then the worker, then the servers: each stopped only after the one before it had exited."""
    order = [s["name"] for s in pids["stopped"]]  # type: ignore[index, union-attr]
    assert order[:2] == ["simulator", "worker"], order
    assert set(order[2:]) == {"alertmanager", "influxdb", "kafka"}, order


class Demo:
    """`cityops demo` in its own process group, its stdout read line by line while it runs."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "cityops.cli", "demo", "--dir", str(workdir), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines + self.err)

    def wait_for(self, pattern: str, timeout_s: float, after_line: int = 0) -> re.Match[str]:
        """The first line matching ``pattern``, looking only at lines from index ``after_line`` on."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines)[after_line:]:
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no line matching {pattern!r} after {timeout_s:.0f}s:\n{self.output[-8000:]}")

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to every process of the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout_s: float = 180.0) -> int:
        rc = self.proc.wait(timeout_s)
        for t in self._readers:
            t.join(10)
        return rc

    def kill(self) -> None:
        """After a failed test only: end the demo and the children it left (each in its own session)."""
        if self.proc.poll() is not None:
            return  # it stopped its children itself (the tests check that none is left)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        pids_file = self.workdir / "pids.json"
        if pids_file.exists():
            for pid in json.loads(pids_file.read_text())["children"].values():
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


def _assert_shown_minutes_are_final(workdir: Path, stdout: str) -> None:
    """The last metro and road minutes the demo showed hold, in InfluxDB after the run, the values shown: a
    shown minute was complete (every stream it comes from past it by the allowed lateness), not in progress."""
    from datetime import datetime

    from cityops.localstack import start_influxdb

    day = re.search(r"from (\d{4}-\d\d-\d\d) \d\d:\d\d([+-]\d{4})", stdout)
    assert day, stdout
    metro = re.findall(r"kpi metro taps_in +(\d\d:\d\d) +(.*)$", stdout, re.M)
    road = re.findall(r"kpi road speed +(\d\d:\d\d) +([\d.]+) km/h mean of (\d+) segments", stdout)
    assert metro or road, stdout

    def epoch(hm: str) -> int:
        return int(datetime.strptime(f"{day.group(1)} {hm}{day.group(2)}", "%Y-%m-%d %H:%M%z").timestamp())

    influx = start_influxdb(workdir / "influxdb")  # the demo's data, its own server stopped
    try:
        def query(q: str) -> list[dict[str, object]]:
            params = urllib.parse.urlencode({"db": "cityops", "q": q, "epoch": "s"})
            with urllib.request.urlopen(f"{influx.url}/query?{params}", timeout=30) as r:
                return json.loads(r.read())["results"][0].get("series", [])

        if metro:
            hm, values = metro[-1]
            shown = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\S+)=([\d,]+)", values)}
            series = query('SELECT sum("taps_in") FROM "traffic_ridership" WHERE "mode" = \'metro\' AND '
                           f'time = {epoch(hm)}s GROUP BY "line"')
            final = {s["tags"]["line"]: int(s["values"][0][1]) for s in series}  # type: ignore[index]
            assert shown == final, (hm, shown, final)
        if road:
            hm, speed, n = road[-1]
            [series] = query(f'SELECT mean("speed_kmh"), count("speed_kmh") FROM "traffic_road" WHERE time = '
                             f'{epoch(hm)}s')
            _t, mean, count = series["values"][0]  # type: ignore[index]
            assert (speed, int(n)) == (f"{mean:.1f}", count), (hm, speed, n, mean, count)
    finally:
        influx.stop()


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
    assert "flushed cleanly" in (workdir / "worker.log").read_text(errors="replace")
    _assert_shown_minutes_are_final(workdir, proc.stdout)

    # Working ways to see alerts, not Debian's placeholder UI page; the view lists the active ones.
    am = re.search(r"Alertmanager API (http://127\.0\.0\.1:\d+)/api/v2/alerts", proc.stdout)
    assert am, output
    assert f"amtool --alertmanager.url={am.group(1)} alert query" in proc.stdout, output
    assert "/#/alerts" not in proc.stdout
    assert re.search(r"active alerts: (none|\d+) \(from Alertmanager\)", proc.stdout), output

    # Incidents are on by default; the folder keeps what `cityops evaluate-alerts` needs.
    truth = json.loads((workdir / "incidents.json").read_text())
    assert truth and all({"rule", "entity", "start"} <= set(row) for row in truth)
    env_file = workdir / "cityops.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                    if line and not line.startswith("#"))
    assert len(settings["CITYOPS_PSEUDONYM_KEY"]) >= 16
    # The simulator's registry is configured explicitly (there is no default registry).
    assert Path(settings["CITYOPS_SOURCE_REGISTRY"]).is_file()
    assert (workdir / "alerts.jsonl").exists()

    pids = _assert_nothing_left(workdir)
    assert {"kafka", "influxdb", "worker", "simulator"} <= set(pids["children"]), pids  # type: ignore[arg-type]
    _assert_stop_order(pids)
    for log in ("worker.log", "simulator.log", "kafka/tansu.log", "influxdb/influxd.log"):
        assert (workdir / log).exists(), log


def test_ctrl_c_stops_in_order_after_the_final_flush_and_alerts_can_be_scored(tmp_path: Path) -> None:
    """Ctrl-C to the process group while alerts are active; then the printed evaluate-alerts command."""
    workdir = tmp_path / "demo"
    # No warm-up: the simulator's first card incident (CardImpossibleTravel, from 07:00) comes early. The
    # default speed (60x): the alert stays active for 30 min of event time, 30 s here, to be looked at.
    demo = Demo(workdir, "--warmup", "0s")
    try:
        am = demo.wait_for(r"Alertmanager API (http://127\.0\.0\.1:\d+)/api/v2/alerts", 120).group(1)
        demo.wait_for(r"CardImpossibleTravel \[critical\] card=p-", 420)
        # The ways to see alerts that the demo shows work while it runs.
        with urllib.request.urlopen(f"{am}/api/v2/alerts", timeout=10) as r:
            active = json.loads(r.read())
        assert any(a["labels"]["alertname"] == "CardImpossibleTravel" for a in active), active
        amtool = demo.wait_for(r"(amtool --alertmanager\.url=\S+ alert query)", 5).group(1)
        shown = subprocess.run(shlex.split(amtool), capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "CardImpossibleTravel" in shown.stdout, shown.stdout + shown.stderr
        demo.ctrl_c()
        rc = demo.finish()
    finally:
        demo.kill()
    out = demo.output
    assert rc == 0, out
    assert "Traceback" not in out, out
    assert "worker flushed cleanly" in out, out
    pids = _assert_nothing_left(workdir)
    _assert_stop_order(pids)
    worker_log = (workdir / "worker.log").read_text(errors="replace")
    assert re.search(r"stop: flushed cleanly: .*influx_pending_points=0 alert_outbox=0 dead_letter_outbox=0",
                     worker_log), worker_log[-4000:]
    # The servers were not hit by the terminal's SIGINT: each was still up until the demo stopped it.
    stopped_at = {s["name"]: s["at"] for s in pids["stopped"]}  # type: ignore[index, union-attr]
    assert all(stopped_at[name] >= stopped_at["worker"] for name in ("alertmanager", "influxdb", "kafka"))
    assert "exited unexpectedly" not in out, out

    # The command the demo prints scores this run's alerts from its folder, the broker long gone; pasted as
    # printed: `cityops` when PATH finds it, else this interpreter's script (the venv is not activated).
    m = re.search(r"^\s*(\S*cityops evaluate-alerts .*)$", out, re.M)
    assert m, out
    cmd = shlex.split(m.group(1))
    assert cmd[0] in ("cityops", str(Path(sys.executable).parent / "cityops")), cmd[0]
    assert cmd[cmd.index("--alerts") + 1] == str(workdir / "alerts.jsonl")
    scored = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    row = re.search(r"^CardImpossibleTravel +(\d+) +(\d+) +(\d+) +(\d+) +(\d+)", scored.stdout, re.M)
    assert row, scored.stdout
    incidents, alerts, tp, fp, fn = map(int, row.groups())
    # The card label is a pseudonym: a TP proves the demo's key (from cityops.env) mapped the truth's card.
    assert incidents >= 1 and tp >= 1 and fp == 0, scored.stdout


def test_flushed_cleanly_only_when_true(tmp_path: Path) -> None:
    """InfluxDB dies mid-run: the demo stops everything and says what the worker could not deliver, and where."""
    workdir = tmp_path / "demo"
    demo = Demo(workdir, "--speedup", "120", "--no-incidents")
    try:
        demo.wait_for(r"status t=\d+s event time \d{4}-", 120)
        demo.wait_for(r"accepted=[1-9]", 120)
        influxd = json.loads((workdir / "pids.json").read_text())["children"]["influxdb"]
        # Frozen first, so the worker's writes hang and points are certainly waiting when it dies (killed at
        # once, the worker may have written everything it had: then "flushed cleanly" is the truth).
        os.kill(influxd, signal.SIGSTOP)
        demo.wait_for(r"pending_points=[1-9]", 120, after_line=len(demo.lines))
        os.kill(influxd, signal.SIGKILL)
        rc = demo.finish()
    finally:
        demo.kill()
    out = demo.output
    assert rc == 1, out
    assert "influxdb exited unexpectedly" in out, out
    assert "flushed cleanly" not in out, out
    m = re.search(r"could NOT deliver everything before it stopped: ([\d,]+) KPI points not written to InfluxDB",
                  out)
    assert m and int(m.group(1).replace(",", "")) > 0, out
    assert f"committed in {workdir / 'worker-data'}" in out, out
    assert "Traceback" not in out, out
    _assert_nothing_left(workdir)
