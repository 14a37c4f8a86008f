"""A server that is not there: one line naming the setting and the address tried, never a traceback.

Each command runs as a subprocess, as a user runs it. Where the command cannot go on it exits non-zero
(1; 2 stays for bad configuration). The worker waits for InfluxDB instead, one line per retry, as it does
when InfluxDB goes down mid-run, and loses nothing; its exit code after SIGTERM tells whether everything it
committed was delivered (0) or is left in its data directory (3).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cityops.localproc import ManagedProcess, free_port
from cityops.localstack import start_influxdb
from tests.conftest import PSEUDONYM_KEY, produce
from tests.integration.test_kpi_path import assert_kpis_equal, expected, quality_total, simulate, stored

pytestmark = pytest.mark.integration


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(settings)
    return env


def _cityops(args: list[str], env: dict[str, str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cityops.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s)


def _one_line(proc: subprocess.CompletedProcess[str], *must: str) -> str:
    """The command failed with exactly one stderr line that names every string in ``must``; no traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{out}"
    assert "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    for text in must:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def _closed_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused at once


def _worker_settings(tmp_path: Path, bootstrap: str, influx_url: str) -> dict[str, str]:
    return dict(CITYOPS_KAFKA_BOOTSTRAP=bootstrap, CITYOPS_INFLUX_URL=influx_url,
                CITYOPS_INFLUX_DATABASE="cityops", CITYOPS_PSEUDONYM_KEY=PSEUDONYM_KEY,
                CITYOPS_DATA_DIR=str(tmp_path / "worker-data"), CITYOPS_WEB_PORT=str(free_port()),
                CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6", CITYOPS_TOPIC_PARTITIONS="4")


def test_worker_without_broker_says_which_setting_and_exits(tmp_path: Path) -> None:
    address = _closed_address()
    t0 = time.monotonic()
    proc = _cityops(["worker"], _env(**_worker_settings(tmp_path, address, "http://127.0.0.1:8086")))
    line = _one_line(proc, "CITYOPS_KAFKA_BOOTSTRAP", address, "Kafka")
    assert "connection refused" in line
    assert time.monotonic() - t0 < 30, "gave up only after the client library's own long retries"


def test_topics_and_simulate_without_broker(tmp_path: Path) -> None:
    address = _closed_address()
    _one_line(_cityops(["topics"], _env(CITYOPS_KAFKA_BOOTSTRAP=address)), "CITYOPS_KAFKA_BOOTSTRAP", address)
    _one_line(_cityops(["topics", "--bootstrap", address], _env()), "--bootstrap", address)
    # Nothing set at all: the default address, and both ways to set another.
    line = _one_line(_cityops(["topics"], _env()), "127.0.0.1:9092", "CITYOPS_KAFKA_BOOTSTRAP", "--bootstrap")
    assert "default" in line
    truth = tmp_path / "truth.json"
    proc = _cityops(["simulate", "--to", "kafka", "--duration", "1m", "--incidents", "--truth", str(truth)],
                    _env(CITYOPS_KAFKA_BOOTSTRAP=address))
    _one_line(proc, "CITYOPS_KAFKA_BOOTSTRAP", address)
    assert not truth.exists(), "the simulator wrote its ground truth for events it never sent"


def test_evaluate_alerts_without_broker(tmp_path: Path) -> None:
    address = _closed_address()
    truth = tmp_path / "incidents.json"
    truth.write_text("[]")
    env_file = tmp_path / "cityops.env"
    env_file.write_text(f"CITYOPS_KAFKA_BOOTSTRAP={address}\nCITYOPS_PSEUDONYM_KEY={PSEUDONYM_KEY}\n")
    proc = _cityops(["evaluate-alerts", "--env-file", str(env_file), "--truth", str(truth)], _env())
    _one_line(proc, "CITYOPS_KAFKA_BOOTSTRAP", str(env_file), address)


def test_dashboards_push_without_grafana() -> None:
    url = f"http://{_closed_address()}"
    _one_line(_cityops(["dashboards", "push"], _env(CITYOPS_GRAFANA_URL=url)), "CITYOPS_GRAFANA_URL", url, "Grafana")
    _one_line(_cityops(["dashboards", "push", "--url", url], _env()), "--url", url)


def _wait(predicate: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} while waiting for {what}:\n"
                                 f"{log.read_text(errors='replace')[-6000:]}")
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-6000:]}")


def test_worker_waits_for_influxdb_at_start_one_line_per_retry_and_loses_nothing(
        kafka: ManagedProcess, tmp_path: Path) -> None:
    port = free_port()
    influx_url = f"http://127.0.0.1:{port}"
    msgs, evs = simulate(seed=41, minutes=3, rate=30, batch=5)
    produce(kafka.url, msgs)
    settings = _worker_settings(tmp_path, kafka.url, influx_url)
    stderr = tmp_path / "worker.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=_env(**settings),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    influx: ManagedProcess | None = None
    try:
        retry = re.compile(rf"cannot reach InfluxDB at {re.escape(influx_url)}/? \(set by CITYOPS_INFLUX_URL\)"
                           r".*retrying in")
        _wait(lambda: len(retry.findall(stderr.read_text(errors="replace"))) >= 2, 120, "two retry lines",
              proc, stderr)
        for line in stderr.read_text(errors="replace").splitlines():
            if "InfluxDB" in line and "cannot reach" in line:
                assert line.count("\n") == 0 and "retrying in" in line, line
        # Now InfluxDB comes up at the address the setting names: everything produced is written, exactly.
        influx = start_influxdb(tmp_path / "influxdb", port)
        deadline = time.monotonic() + 120
        while quality_total(influx) < len(evs):
            assert proc.poll() is None, stderr.read_text(errors="replace")[-6000:]
            assert time.monotonic() < deadline, "events not written after InfluxDB came up"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, stderr.read_text(errors="replace")[-6000:]
        assert_kpis_equal(expected(evs), stored(influx))
        log = stderr.read_text(errors="replace")
        assert "Traceback" not in log, log[-6000:]
        assert "stop: flushed cleanly" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if influx is not None:
            influx.stop()


def test_worker_sigterm_with_influxdb_down_says_what_is_left_and_where(
        kafka: ManagedProcess, tmp_path: Path) -> None:
    """Exit 3 and the counts when the final flush cannot deliver; the next start on the data dir delivers them."""
    influx = start_influxdb(tmp_path / "influxdb")
    port = int(influx.url.rsplit(":", 1)[1])
    settings = _worker_settings(tmp_path, kafka.url, influx.url)
    log_path = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=_env(**settings),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    first, evs1 = simulate(seed=51, minutes=3, rate=30, batch=5)
    second, evs2 = simulate(seed=52, minutes=3, rate=30, batch=5)
    proc = start()
    restarted: ManagedProcess | None = None
    try:
        produce(kafka.url, first)
        _wait(lambda: quality_total(influx) >= len(evs1), 120, "first part written", proc, log_path)
        influx.stop()
        produce(kafka.url, second)
        _wait(lambda: "influxdb write failed" in log_path.read_text(errors="replace"), 60,
              "a failed write", proc, log_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 3, log_path.read_text(errors="replace")[-6000:]
        last = [ln for ln in log_path.read_text(errors="replace").splitlines() if "stop: flush" in ln]
        assert last and "stop: flush incomplete" in last[-1], last
        pending = int(re.search(r"influx_pending_points=(\d+)", last[-1]).group(1))  # type: ignore[union-attr]
        assert pending > 0 and f"kept_in={settings['CITYOPS_DATA_DIR']}" in last[-1], last[-1]
        assert "flushed cleanly" not in log_path.read_text(errors="replace")
        # The next start on that data dir delivers what was left: InfluxDB ends up exact.
        restarted = start_influxdb(influx.workdir, port)
        proc = start()
        _wait(lambda: quality_total(restarted) >= len(evs1) + len(evs2), 120, "all written after restart",
              proc, log_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text(errors="replace")[-6000:]
        assert_kpis_equal(expected(evs1 + evs2), stored(restarted))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if restarted is not None:
            restarted.stop()
        influx.stop()
