"""Real servers for cityops-parking's end-to-end test: Tansu (Kafka API) and InfluxDB on free ports.

Started with cityops' own helpers (``cityops.localstack``), as cityops' tests do; a missing server makes the
test fail, never skip. The topics are created from the plugin loader (``cityops.topics.topic_specs``), so
``parking.lot-occupancy`` exists only because the installed plugin declares it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cityops.localproc import ManagedProcess
from cityops.localstack import start_influxdb, start_kafka
from cityops.topics import ensure_topics, topic_specs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_kafka(tmp_path / "kafka")
    ensure_topics(proc.url, topic_specs(1))  # one partition each: the test reads one clock per stream
    yield proc
    proc.stop()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_influxdb(tmp_path / "influxdb")
    yield proc
    proc.stop()
