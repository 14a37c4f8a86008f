"""deploy/kafka/topics.yml (used by compose/ops) and the topics the worker creates agree."""

from pathlib import Path

import yaml

from cityops.plugins import load_plugins
from cityops.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]


def test_topics_yml_matches_worker_topic_specs() -> None:
    declared = {t["name"]: t["partitions"] for t in yaml.safe_load((ROOT / "deploy/kafka/topics.yml").read_text())["topics"]}
    created = {s.name: s.partitions for s in topic_specs(6, load_plugins("none"))}
    assert declared == created
    # Installed agent plugins (e.g. examples/cityops-parking) add their own topics to the built-in ones.
    plugins = load_plugins()
    added = {topic: n for ld in plugins.third_party for f in ld.plugin.streams
             for topic, n in [(f.topic, f.partitions_for(6))]}
    assert {s.name: s.partitions for s in topic_specs(6)} == {**declared, **added}
