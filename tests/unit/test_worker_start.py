"""`cityops worker` checks its files before it needs a server: a bad manifest or registry stops the start with
one line naming the file and key, exit 2, even with the broker down (a new user saw the broker error first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cityops.alerts.wiring import default_rules_dir

GOOD = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CITYOPS_INFLUX_URL": "http://127.0.0.1:9",
        "CITYOPS_PSEUDONYM_KEY": "0123456789abcdef"}


def _worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    full.update(GOOD, CITYOPS_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=full, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)


def test_a_bad_manifest_stops_the_worker_before_it_looks_for_the_broker(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_dir(), rules)
    path = rules / "traffic-security.yml"
    path.write_text(path.read_text().replace("resolve_after: 30m", "resolve_after: -30m", 1))
    r = _worker(tmp_path, CITYOPS_RULES_DIR=str(rules))
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cityops: CITYOPS_RULES_DIR ({rules}): ") and "traffic-security.yml" in last \
        and "resolve_after" in last, r.stderr
    assert "Kafka" not in r.stderr and "broker" not in r.stderr


def test_a_bad_source_registry_stops_the_worker_before_it_looks_for_the_broker(tmp_path: Path) -> None:
    registry = tmp_path / "sources.json"
    registry.write_text('{"sources": {"gate-1": {"stream": "traffic.card-taps", "must_sign": "yes"}}}')
    r = _worker(tmp_path, CITYOPS_SOURCE_REGISTRY=str(registry))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("cityops: CITYOPS_SOURCE_REGISTRY: "), r.stderr
    assert "broker" not in r.stderr
