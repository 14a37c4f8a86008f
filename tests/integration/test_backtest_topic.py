"""`cityops backtest --from TOPIC` against a real broker (Tansu): the topic's retained history gives the same
report as its recording, no consumer group commits anything, and nothing is written to any topic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from cityops.cli import main
from cityops.localproc import ManagedProcess
from tests.unit.test_backtest import CARD_D, IMPOSSIBLE, KEY, manifests, ms, taps

pytestmark = pytest.mark.integration


def broker_state(bootstrap: str) -> tuple[dict[tuple[str, int], int], list[Any]]:
    """Every topic partition's records (counted by reading them all: Tansu's ListOffsets answers the last
    batch's base offset + 1 for the end), and the consumer groups the broker knows."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(t, p) for t in sorted(consumer.topics())
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = {(tp.topic, tp.partition): 0 for tp in tps}
        while batch := consumer.poll(timeout_ms=1500):
            for tp, recs in batch.items():
                ends[(tp.topic, tp.partition)] += len(recs)
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        groups = admin.list_groups()
    finally:
        admin.close()
    return ends, groups


def test_topic_history_backtests_like_its_recording(kafka: ManagedProcess, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kafka import KafkaProducer

    for name in list(os.environ):
        if name.startswith("CITYOPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CITYOPS_PSEUDONYM_KEY", KEY)
    # Card D's taps on partition 1, the others on partition 0: the reader merges them by record timestamp.
    rows = []
    offsets = {0: 0, 1: 0}
    producer = KafkaProducer(bootstrap_servers=kafka.url)
    for event in taps():
        partition = 1 if event["card_id"] == CARD_D else 0
        raw = orjson.dumps(event)
        producer.send("traffic.card-taps", raw, partition=partition, timestamp_ms=ms(event))
        rows.append({"topic": "traffic.card-taps", "partition": partition, "offset": offsets[partition],
                     "timestamp": ms(event), "value": event})
        offsets[partition] += 1
    producer.flush()
    producer.close()
    recording = tmp_path / "taps.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    before = broker_state(kafka.url)
    assert before[0][("traffic.card-taps", 0)] == 9 and before[0][("traffic.card-taps", 1)] == 10

    baseline = manifests(tmp_path / "deployed", IMPOSSIBLE.format(severity="critical", speed=150))
    proposed = manifests(tmp_path / "proposed", IMPOSSIBLE.format(severity="warning", speed=50))
    reports = {}
    for source in ("traffic.card-taps", "all", str(recording)):
        out = tmp_path / f"report-{len(reports)}.json"
        assert main(["backtest", "--from", source, "--bootstrap", kafka.url, "--agents", str(proposed),
                     "--baseline", str(baseline), "--quiet", "--json", str(out)]) == 0
        rep = json.loads(out.read_text())
        assert rep["input"].pop("source") == source
        assert rep["input"].pop("elapsed_s") > 0
        reports[source] = rep
    topic, every, recorded = reports.values()
    assert topic == recorded and every == recorded
    assert topic["input"]["records"] == 19 and topic["events"] == {"traffic.card-taps": {"accepted": 19}}
    diff = topic["diff"]["CardImpossibleTravel"]
    assert (len(diff["added"]), len(diff["removed"]), len(diff["changed"])) == (1, 0, 1)

    # `cityops record` writes the topic's history as the same records, in the order the backtest reads it.
    again = tmp_path / "recorded.jsonl"
    assert main(["record", "--topic", "traffic.card-taps", "--bootstrap", kafka.url, "--out", str(again),
                 "--quiet"]) == 0
    assert [orjson.loads(x) for x in again.read_bytes().splitlines()] == rows

    # A topic the broker does not have is a bad --from (exit 2, naming it; not created by asking); a broker
    # that does not answer is exit 1, naming the address and the option it came from.
    assert main(["backtest", "--from", "no.such.topic", "--bootstrap", kafka.url, "--agents", str(proposed),
                 "--quiet"]) == 2
    assert "--from no.such.topic: no such topic" in capsys.readouterr().err
    # `record` names its own option and no backtest hint (it has no --from and writes, not reads, a file).
    assert main(["record", "--topic", "no.such.topic", "--bootstrap", kafka.url, "--out",
                 str(tmp_path / "r.jsonl"), "--quiet"]) == 2
    said = capsys.readouterr().err
    assert f"--topic no.such.topic: no such topic on --bootstrap ({kafka.url})" in said
    assert "--from" not in said and "recording file" not in said
    from cityops.localproc import free_port

    dead = f"127.0.0.1:{free_port()}"
    assert main(["backtest", "--from", "traffic.card-taps", "--bootstrap", dead, "--agents", str(proposed),
                 "--quiet"]) == 1
    assert f"cannot reach the Kafka broker at {dead} (set by --bootstrap)" in capsys.readouterr().err

    # Nothing committed (no consumer group), nothing written, no topic created.
    after = broker_state(kafka.url)
    assert after == before
    assert before[1] == []
    # The check can see a commit: a consumer of group "control" committing an offset is listed.
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    control = KafkaConsumer(bootstrap_servers=kafka.url, group_id="control", enable_auto_commit=False)
    tp = TopicPartition("traffic.card-taps", 0)
    control.assign([tp])
    control.commit({tp: OffsetAndMetadata(1, "", -1)})
    control.close()
    assert [g["group_id"] for g in broker_state(kafka.url)[1]] == ["control"]
