"""The typed agent API: alert values round-trip their durable records; every output is a Sink."""

from __future__ import annotations

from cityops.sinks.alertmanager import AlertmanagerSink
from cityops.sinks.influx import InfluxPointSink, InfluxSink
from cityops.sinks.kafka import KafkaTopicSink
from cityops.types import AlertState, Sink, SinkResult, Transition

RECORD = {"id": "R|card=c|0", "alertname": "R", "status": "firing", "previous": None, "am_action": "firing",
          "severity": "warning", "domain": "d", "entity": {"card": "c"}, "labels": {"alertname": "R"},
          "annotations": {"summary": "s"}, "starts_at": 5.0, "ends_at": None, "value": 1.0, "ts": 5.0,
          "delivered": ["kafka"]}


def test_transition_round_trips_its_durable_record() -> None:
    tr = Transition.from_record(RECORD)
    assert tr.status is AlertState.FIRING and tr.am_action is AlertState.FIRING and tr.previous is None
    assert tr.delivered == ("kafka",)
    assert tr.to_record() == RECORD
    assert AlertState("resolved") == "resolved"  # stored as the plain word: on-disk format unchanged


def test_every_output_is_a_sink() -> None:
    influx = InfluxSink("http://127.0.0.1:1", "db")
    sinks = [KafkaTopicSink("kafka", "cityops.alerts", lambda: None, lambda t: (None, b"", [])),
             InfluxPointSink("influx", influx, lambda t: t), AlertmanagerSink("http://127.0.0.1:1")]
    assert all(isinstance(s, Sink) for s in sinks)
    assert [s.name for s in sinks] == ["kafka", "influx", "alertmanager"]


async def test_kafka_sink_without_producer_keeps_everything() -> None:
    sink = KafkaTopicSink("kafka", "cityops.alerts", lambda: None, lambda t: (None, b"", []))
    assert await sink.write([(1, "a"), (2, "b")]) == SinkResult(retry=[1, 2])
    assert SinkResult(done=[1], rejected=[(2, "too large")]).settled == [1, 2]
