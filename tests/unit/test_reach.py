"""One line for an unreachable server: address parsing, short causes, the message, the worker's stop report."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from cityops.cli import _address
from cityops.errors import Unreachable
from cityops.evaluate import load_alerts, write_alerts
from cityops.reach import describe, host_ports
from cityops.runtime import ShutdownReport


def test_host_ports() -> None:
    assert host_ports("a:1, b:2") == [("a", 1), ("b", 2)]
    assert host_ports("[::1]:9092") == [("::1", 9092)]
    with pytest.raises(ValueError, match="host:port"):
        host_ports("localhost")


def test_describe_gives_a_short_cause() -> None:
    assert describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == "connection refused"
    assert describe(socket.timeout("timed out")) == "timed out"
    wrapped = RuntimeError("HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/folders "
                           "(Caused by NewConnectionError('<x>: Failed to establish a new connection: "
                           "[Errno 111] Connection refused'))")
    assert describe(wrapped) == "connection refused"
    assert describe(None) == "no answer"


def test_unreachable_is_one_line_naming_setting_and_address() -> None:
    exc = Unreachable("the Kafka broker", "10.0.0.1:9092", "CITYOPS_KAFKA_BOOTSTRAP", "connection\nrefused")
    assert str(exc) == ("cannot reach the Kafka broker at 10.0.0.1:9092 (set by CITYOPS_KAFKA_BOOTSTRAP): "
                        "connection refused")
    assert exc.setting == "CITYOPS_KAFKA_BOOTSTRAP"


def test_address_says_where_it_came_from() -> None:
    env = {"CITYOPS_KAFKA_BOOTSTRAP": "k:1"}
    assert _address("o:2", "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", "d:3", env) == ("o:2", "--bootstrap")
    assert _address(None, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", "d:3", env) == ("k:1", "CITYOPS_KAFKA_BOOTSTRAP")
    value, source = _address(None, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", "d:3", {})
    assert value == "d:3" and "CITYOPS_KAFKA_BOOTSTRAP" in source and "--bootstrap" in source
    assert str(Unreachable("x", value, source, "c")).startswith(f"cannot reach x at d:3 ({source})")


def test_shutdown_report_lines() -> None:
    clean = ShutdownReport(0, 0, 0, "/d")
    assert clean.clean and clean.line().startswith("stop: flushed cleanly")
    left = ShutdownReport(12, 1, 0, "/data", "InfluxDB down")
    assert not left.clean
    assert left.line() == ("stop: flush incomplete: influx_pending_points=12 alert_outbox=1 dead_letter_outbox=0 "
                           "kept_in=/data (committed; delivered by the next start on this data dir) "
                           "cause=InfluxDB down")


def test_alert_transitions_round_trip_through_jsonl(tmp_path: Path) -> None:
    rows = [{"id": "a", "status": "firing", "labels": {"alertname": "X", "card": "p-1"}, "starts_at": 1.5},
            {"id": "a", "status": "resolved", "labels": {"alertname": "X", "card": "p-1"}, "starts_at": 1.5}]
    path = tmp_path / "alerts.jsonl"
    assert write_alerts(path, rows) == 2
    assert load_alerts(path) == rows
    path.write_text('{"id": "a"}\n\n[1]\n')
    with pytest.raises(ValueError, match=r"alerts.jsonl:3"):
        load_alerts(path)
