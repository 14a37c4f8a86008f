"""deploy/kafka/topics.yml (used by compose/ops) and the topics the worker creates agree."""

from pathlib import Path

import yaml

from cityops.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]


def test_topics_yml_matches_worker_topic_specs() -> None:
    declared = {t["name"]: t["partitions"] for t in yaml.safe_load((ROOT / "deploy/kafka/topics.yml").read_text())["topics"]}
    created = {s.name: s.partitions for s in topic_specs(6)}
    assert declared == created
