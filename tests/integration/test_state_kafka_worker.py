"""The whole worker with CITYOPS_STATE_STORE=kafka against real Tansu + InfluxDB: the data directory is only a
cache; a worker started on an empty one continues from cityops.state exactly (KPIs equal an independent
computation, every event counted once)."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest

from tests.conftest import produce
from tests.integration.test_kpi_path import assert_kpis_equal, expected, quality_total, simulate, stored, wait_written

pytestmark = pytest.mark.integration

KAFKA_STATE = {"CITYOPS_STATE_STORE": "kafka", "CITYOPS_STATE_SNAPSHOT_BYTES": "300000",
               "CITYOPS_STATE_CHUNK_BYTES": "262144"}


def state_topic_bytes(bootstrap: str) -> dict[str, tuple[int, int]]:
    """Per record kind (claim, commit, snapshot, handover): (messages, bytes) on every task's state topic."""
    from kafka import KafkaConsumer, TopicPartition

    from cityops.engine.kafka_state import _chunk_decoder

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(t, 0) for t in c.topics() if t.startswith("cityops.state.")]
    c.assign(tps)
    ends = c.end_offsets(tps)
    c.seek_to_beginning(*tps)
    out: dict[str, tuple[int, int]] = {}
    n = 0
    while n < sum(ends.values()):
        for recs in c.poll(timeout_ms=1000).values():
            for r in recs:
                n += 1
                kind = _chunk_decoder.decode(r.value).kind
                m, size = out.get(kind, (0, 0))
                out[kind] = (m + 1, size + len(r.value))
    c.close()
    return out


def claim_lines(w: Any, task: str = "traffic") -> list[str]:
    """The worker's claims of ``task`` (one per start of its active child), in order."""
    return re.findall(rf"state claimed cityops\.state\.{task}\[0\][^\n]*", w.log_tail(10**8))


def traffic_only(evs: list[tuple[str, Any]]) -> tuple[dict[str, Any], int]:
    """The KPIs of the traffic task's streams computed independently, and how many events it accepts."""
    exp = expected(evs)
    exp.pop("health_service")
    return exp, sum(1 for topic, _ in evs if topic.startswith("traffic."))


def test_cold_start_from_kafka_with_an_empty_data_dir(kafka: Any, influx: Any, worker_factory: Any) -> None:
    first, evs1 = simulate(seed=21, minutes=10, rate=80, batch=10)
    second, evs2 = simulate(seed=22, minutes=6, rate=80, batch=10)
    produce(kafka.url, first)
    w = worker_factory(**KAFKA_STATE).start()
    wait_written(w, influx, len(evs1))
    assert w.terminate() == 0
    shutil.rmtree(w.data_dir)  # the machine's disk is gone: Kafka holds everything
    produce(kafka.url, second)
    w.start()
    n = len(evs1) + len(evs2)
    wait_written(w, influx, n, timeout_s=180)
    assert quality_total(influx) == n
    assert_kpis_equal(expected(evs1 + evs2), stored(influx))
    lines = claim_lines(w)
    assert len(lines) == 2 and "epoch=1" in lines[1] and "after=hand-over" in lines[1], lines
    kinds = state_topic_bytes(kafka.url)
    total = sum(size for _m, size in kinds.values())
    print(f"\nstate topic over {n} events: {total} bytes, {total / n:.1f} bytes/event; "
          + "; ".join(f"{k}: {m} messages {size} bytes ({size / n:.1f}/event)" for k, (m, size) in kinds.items())
          + f"; claims: {lines}")


def test_kill9_and_disk_loss_then_restart_is_exact(kafka: Any, influx: Any, worker_factory: Any) -> None:
    msgs, evs = simulate(seed=23, minutes=20, rate=120, batch=10)
    produce(kafka.url, msgs)
    n = len(evs)
    w = worker_factory(**KAFKA_STATE)
    w.start()
    w.wait(lambda: w.counted() >= n // 3, what="a third of the events")
    w.kill9()
    shutil.rmtree(w.data_dir, ignore_errors=True)
    w.start()
    wait_written(w, influx, n, timeout_s=180)
    assert quality_total(influx) == n
    assert_kpis_equal(expected(evs), stored(influx))
    lines = claim_lines(w)
    assert len(lines) == 2 and "epoch=1" in lines[1] and "after=owner lost" in lines[1], lines


def test_second_worker_fences_the_first_and_continues_exactly(kafka: Any, influx: Any, worker_factory: Any,
                                                               tmp_path: Any) -> None:
    """A second worker claims the task: the first finds the newer claim at its next commit and exits 4
    without releasing that commit; the second continues from the valid commits alone, exactly. (Workers
    run one task each with CITYOPS_TASK, outside the lease group: two claimants, as a paused machine makes.)"""
    first, evs1 = simulate(seed=31, minutes=10, rate=80, batch=10)
    second, evs2 = simulate(seed=32, minutes=6, rate=80, batch=10)
    produce(kafka.url, first)
    a = worker_factory(**KAFKA_STATE, CITYOPS_TASK="traffic").start()
    a.wait(lambda: a.counted() >= len(evs1) // 3, what="a third of the first events")
    b = worker_factory(**KAFKA_STATE, CITYOPS_TASK="traffic", CITYOPS_DATA_DIR=str(tmp_path / "worker-b"))
    b.log_path = tmp_path / "worker-b.log"
    b.start()
    assert a.proc is not None
    assert a.proc.wait(120) == 4, a.log_tail()
    assert "fenced: task cityops.state.traffic[0] was claimed by worker" in a.log_tail(10**7)
    produce(kafka.url, second)
    exp, n = traffic_only(evs1 + evs2)
    wait_written(b, influx, n, timeout_s=240)
    assert quality_total(influx) == n
    assert_kpis_equal(exp, stored(influx))


def test_paused_worker_finds_itself_fenced_and_writes_nothing_more(kafka: Any, influx: Any, worker_factory: Any,
                                                                  tmp_path: Any) -> None:
    """SIGSTOP past the session timeout while another worker claims the task, then SIGCONT: the paused
    worker's next commit meets the newer claim, and it exits 4 having written nothing more; KPIs exact."""
    import signal

    first, evs1 = simulate(seed=41, minutes=10, rate=80, batch=10)
    second, evs2 = simulate(seed=42, minutes=6, rate=80, batch=10)
    produce(kafka.url, first)
    a = worker_factory(**KAFKA_STATE, CITYOPS_TASK="traffic").start()
    a.wait(lambda: a.counted() >= len(evs1) // 3, what="a third of the first events")
    assert (a.health() or {})["state"]["epoch"] == 0
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    b = worker_factory(**KAFKA_STATE, CITYOPS_TASK="traffic", CITYOPS_DATA_DIR=str(tmp_path / "worker-b"))
    b.log_path = tmp_path / "worker-b.log"
    b.start()
    b.wait(lambda: ((b.health() or {}).get("state") or {}).get("epoch") == 1, what="the second worker's claim")
    produce(kafka.url, second)
    a.proc.send_signal(signal.SIGCONT)
    assert a.proc.wait(120) == 4, a.log_tail()
    exp, n = traffic_only(evs1 + evs2)
    wait_written(b, influx, n, timeout_s=240)
    assert quality_total(influx) == n
    assert_kpis_equal(exp, stored(influx))
    h = b.health() or {}
    assert h["state"]["store"] == "kafka" and h["state"]["role"] == "active" and h["state"]["task"] == "traffic"
    assert 'cityops_state_epoch{role="active",task="traffic"} 1.0' in b.metrics()
