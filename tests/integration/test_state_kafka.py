"""Engine state on the cityops.state topic (CITYOPS_STATE_STORE=kafka) against a real Tansu broker.

The store alone: restore from Kafka with no local files, chunked snapshots, fencing by claim epochs, and
kill points inside the protocol (fault injection: a real SIGKILL of a real writer process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cityops.engine.kafka_state import Fenced, KafkaStateStore
from cityops.topics import ensure_topics, state_topic_spec

pytestmark = pytest.mark.integration


def _store(kafka: Any, **kw: Any) -> KafkaStateStore:
    ensure_topics(kafka.url, [state_topic_spec()])
    kw.setdefault("chunk_bytes", 4096)
    kw.setdefault("timeout_s", 20.0)
    return KafkaStateStore(kafka.url, **kw).open()


def _fill(store: KafkaStateStore, start: int, n: int) -> dict[tuple[str, int], int]:
    t = store.table("counts")
    offsets = {}
    for i in range(start, start + n):
        t[f"k{i % 50}"] = t.get(f"k{i % 50}", 0) + i
        if i % 7 == 0:
            t.pop(f"k{(i * 3) % 50}", None)
        store.meta["n"] = i
        offsets = {("traffic.card-taps", 0): i}
        store.commit(offsets)
    return offsets


def _expected(start: int, n: int) -> dict[str, int]:
    d: dict[str, int] = {}
    for i in range(start, start + n):
        d[f"k{i % 50}"] = d.get(f"k{i % 50}", 0) + i
        if i % 7 == 0:
            d.pop(f"k{(i * 3) % 50}", None)
    return d


def test_restore_from_kafka_alone_with_snapshots_in_chunks(kafka: Any) -> None:
    # A snapshot every few commits (once the commits since the last one outweigh it), in 1 KiB chunks.
    a = _store(kafka, snapshot_bytes=2000, chunk_bytes=1024)
    t = a.table("big")
    for i in range(300):
        t[i] = "x" * 10  # ~4 KB of state: several chunks per snapshot
    a.commit({})
    _fill(a, 0, 120)
    assert a.base > 0  # a snapshot was written and is the restore's start
    b = _store(kafka)
    assert dict(b.table("counts").items()) == _expected(0, 120)
    assert len(b.table("big")) == 300
    assert b.offsets[("traffic.card-taps", 0)] == 119
    assert b.meta["n"] == 119
    assert b.commits == a.commits
    assert b.epoch == a.epoch + 1
    # The restore read from the snapshot, not from the log start.
    assert b.restored_records < 120


def test_newer_claim_fences_the_old_writer(kafka: Any) -> None:
    a = _store(kafka)
    _fill(a, 0, 10)
    b = _store(kafka)  # claims the task with a higher epoch
    with pytest.raises(Fenced):
        _fill(a, 10, 1)
    # The fenced commit never happened for any reader; the new owner continues from the valid state.
    _fill(b, 10, 5)
    c = _store(kafka)
    assert dict(c.table("counts").items()) == _expected(0, 15)
    assert c.meta["n"] == 14


def test_fenced_writers_records_are_ignored_even_when_last(kafka: Any) -> None:
    """A paused writer that resumes and writes after a newer claim (before it reads the claim back):
    its records are the partition's last, and point at a snapshot that no reader may apply."""
    a = _store(kafka, snapshot_bytes=10**9)
    _fill(a, 0, 10)
    b = _store(kafka, snapshot_bytes=10**9)
    _fill(b, 10, 5)
    # a writes a commit, a snapshot and another commit without reading back (as a paused process does
    # before its check): its records end the partition and name its own snapshot as their base.
    a._check_landed = lambda offsets: setattr(a, "last_offset", max(offsets))  # type: ignore[method-assign]
    a.table("counts")["poison"] = 1
    a.commit({("traffic.card-taps", 0): 999})
    a.snapshot()
    a.table("counts")["poison"] = 2
    a.commit({("traffic.card-taps", 0): 1000})
    c = _store(kafka)
    assert "poison" not in c.table("counts")
    assert dict(c.table("counts").items()) == _expected(0, 15)
    assert c.offsets[("traffic.card-taps", 0)] == 14


WRITER = textwrap.dedent("""
    import sys
    from cityops.engine.kafka_state import KafkaStateStore
    store = KafkaStateStore(sys.argv[1], chunk_bytes=4096, snapshot_bytes=int(sys.argv[2]), timeout_s=20).open()
    t = store.table("counts")
    big = store.table("big")
    start = store.meta.get("n", -1) + 1
    for i in range(start, start + int(sys.argv[3])):
        t[f"k{i % 50}"] = t.get(f"k{i % 50}", 0) + i
        if i % 7 == 0:
            t.pop(f"k{(i * 3) % 50}", None)
        big[i % 300] = "y" * 100
        store.meta["n"] = i
        store.commit({("traffic.card-taps", 0): i})
    store.close()
""")


def _run_writer(kafka: Any, tmp_path: Path, n: int, kill_at: str | None, snapshot_bytes: int = 3000) -> int:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ)
    env.pop("CITYOPS_FAULT_KILL_AT", None)
    if kill_at:
        env["CITYOPS_FAULT_KILL_AT"] = kill_at
    proc = subprocess.run([sys.executable, str(script), kafka.url, str(snapshot_bytes), str(n)], env=env,
                          timeout=120, capture_output=True)
    return proc.returncode


@pytest.mark.parametrize("kill_at", ["snapshot-chunk@2", "commit-produced@17", "claim-produced"])
def test_kill_points_inside_the_protocol(kafka: Any, tmp_path: Path, kill_at: str) -> None:
    """SIGKILL during a snapshot (after its first chunk), between a commit's produce and its read-back, and
    right after a claim: a restarted writer continues exactly (every commit in Kafka counted once)."""
    ensure_topics(kafka.url, [state_topic_spec()])
    assert _run_writer(kafka, tmp_path, 40, None) == 0
    rc = _run_writer(kafka, tmp_path, 40, kill_at)
    assert rc == -9, rc  # killed at the point
    r = _store(kafka)
    done = r.meta["n"] + 1  # commits that landed (a commit produced before the kill did land)
    assert 40 <= done <= 80
    assert dict(r.table("counts").items()) == _expected(0, done)
    r.close()
    assert _run_writer(kafka, tmp_path, 80 - done, None) == 0
    final = _store(kafka)
    assert final.meta["n"] == 79
    assert dict(final.table("counts").items()) == _expected(0, 80)


def test_broker_gone_commit_fails_and_the_store_writes_nothing_more(kafka: Any) -> None:
    """A commit that cannot be written within its timeout raises StateUnavailable (its changes are out of the
    tables: the worker must stop and restore), and every later commit refuses at once."""
    from cityops.engine.kafka_state import StateUnavailable

    a = _store(kafka, timeout_s=3.0)
    _fill(a, 0, 3)
    kafka.stop()
    with pytest.raises(StateUnavailable):
        _fill(a, 3, 1)
    with pytest.raises(StateUnavailable, match="not written"):
        a.commit({})
    a.close()


def test_a_dropped_table_restores_from_kafka_as_gone_and_redeclared_with_another_shape(kafka: Any) -> None:
    """A rule redefined with another kind at a manifest reload (cityops.alerts.reload): the drop of its old
    table and the new table of the same name land in one commit; a restore from Kafka reads only the new."""
    from cityops.engine.codec import Codec

    old, new = Codec("rule:a", int), Codec("rule:b", str)
    a = _store(kafka)
    t = a.table("rule:X", old)
    for i in range(20):
        t[f"k{i}"] = i
    a.table("other")["kept"] = 1
    a.commit({("traffic.card-taps", 0): 1})
    assert a.drop_table("rule:X") == 20
    a.table("rule:X", new)["k0"] = "new"
    a.commit({("traffic.card-taps", 0): 2})
    b = _store(kafka)
    assert b.table("rule:X", new).data == {"k0": "new"}
    assert b.table("other").data == {"kept": 1} and b.undeclared() == []


def test_a_warm_standby_tails_the_writer_and_takes_over_after_its_hand_over(kafka: Any) -> None:
    a = _store(kafka)
    _fill(a, 0, 30)
    s = KafkaStateStore(kafka.url, chunk_bytes=4096, timeout_s=20.0).restore()  # a standby: no claim
    assert dict(s.table("counts").items()) == _expected(0, 30) and s.epoch == -1
    _fill(a, 30, 40)  # the writer goes on; the standby follows by tailing
    deadline = time.monotonic() + 20
    while (s.lag() or s.commits < a.commits) and time.monotonic() < deadline:
        s.tail(0.2)
    assert s.lag() == 0 and s.commits == a.commits
    assert s.standby_status()["handed_over"] is False and s.standby_status()["epoch"] == a.epoch
    a.handover()  # a clean stop: final commit done, then the hand-over record
    assert s.await_handover(alive_s=30, wait_s=10) == "handed over"
    s.claim()
    assert s.epoch == a.epoch + 1 and s._reader.last_claim_handed_over
    # The standby's state is the writer's, then it writes on; the old writer is fenced.
    s.table("counts")  # (declared as restored)
    s.meta["n"] = 70
    s.commit({("traffic.card-taps", 0): 70})
    with pytest.raises(Fenced):
        _fill(a, 70, 1)
    c = _store(kafka)
    assert dict(c.table("counts").items()) == _expected(0, 70) and c.meta["n"] == 70


def test_a_standby_waits_for_a_recently_alive_owner_but_not_for_a_silent_one(kafka: Any) -> None:
    a = _store(kafka)
    _fill(a, 0, 5)
    s = KafkaStateStore(kafka.url, chunk_bytes=4096, timeout_s=20.0).restore()
    t0 = time.monotonic()
    assert s.await_handover(alive_s=30, wait_s=1.5) == "waited"  # alive, no hand-over: waits, then claims
    assert time.monotonic() - t0 >= 1.5
    t0 = time.monotonic()
    assert s.await_handover(alive_s=0.0, wait_s=10) == "owner silent"  # killed or paused: no wait
    assert time.monotonic() - t0 < 1.0


def test_history_before_the_previous_snapshot_is_trimmed_where_the_broker_can(kafka: Any) -> None:
    """DeleteRecords: Tansu has none, so the store keeps everything (logged once) and goes on; a broker that
    has it drops what lies before the snapshot preceding the latest. A restore is exact either way."""
    a = _store(kafka, snapshot_bytes=2000, chunk_bytes=1024)
    t = a.table("big")
    for i in range(300):
        t[i] = "x" * 10
    a.commit({})
    _fill(a, 0, 200)  # several snapshots
    assert a.base > 0
    assert a._trim_refused or a.trimmed_before > 0
    b = _store(kafka)
    assert dict(b.table("counts").items()) == _expected(0, 200) and len(b.table("big")) == 300
