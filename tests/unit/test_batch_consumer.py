"""The worker's consumer: Faust's, with records of cityops' input topics handed to the runtime per batch.

Faust's offset commit may never run ahead of cityops' committed state: the batch path acknowledges
offsets only through ``BatchConsumer.ack_range`` (called by the release the runtime runs after the commit
that covers a batch). These tests build the app only: nothing is started or connected."""

from __future__ import annotations

from pathlib import Path

from faust.types import TP

from cityops.agents.consumer import BatchConsumer
from cityops.settings import load_settings


TAPS = "traffic.card-taps"
PSEUDONYM_KEY = "test-pseudonym-key-0123456789"


def _app(tmp_path: Path):  # type: ignore[no-untyped-def]
    from cityops.agents.app import create_app

    # addresses nobody listens at: nothing connects
    s = load_settings({"CITYOPS_DATA_DIR": str(tmp_path), "CITYOPS_RULES_DIR": "none",
                       "CITYOPS_SOURCE_REGISTRY": "none", "CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9",
                       "CITYOPS_INFLUX_URL": "http://127.0.0.1:9", "CITYOPS_PSEUDONYM_KEY": PSEUDONYM_KEY})
    return create_app(s)


async def test_the_app_consumes_with_the_batch_consumer_and_its_sink_claims_the_input_topics(tmp_path: Path) -> None:
    app, runtime = _app(tmp_path)
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    sink = consumer.record_sink
    assert sink is not None
    for stream in runtime.engine.streams.values():
        assert sink.claims(stream.topic)
    assert not sink.claims("cityops-__assignor-__leader")  # anything else takes Faust's own path


async def test_ack_range_acknowledges_each_offset_once_and_none_below_the_committed_offset(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    consumer = app.consumer
    app.topics._acking_topics.add(TAPS)  # what the agent's topic does once it subscribes
    tp = TP(TAPS, 0)
    consumer._committed_offset[tp] = 5
    assert consumer.ack_range(tp, 3, 9) == 5  # 3 and 4 are below the committed offset: never acknowledged
    assert consumer.ack_range(tp, 8, 12) == 3  # 8 and 9 already were
    assert consumer._acked[tp] == list(range(5, 13))
    assert consumer._n_acked == 8
    assert consumer._new_offset(tp) == 13  # the next commit covers offsets 5..12, not more
    other = TP(TAPS, 1)
    assert consumer.ack_range(other, 0, 0) == 1
    assert consumer._acked[other] == [0]


async def test_no_acknowledgement_for_a_topic_without_acks(tmp_path: Path) -> None:
    app, _ = _app(tmp_path)
    consumer = app.consumer
    tp = TP("not-subscribed", 0)
    assert consumer.ack_range(tp, 0, 9) == 0
    assert not consumer._acked.get(tp)
