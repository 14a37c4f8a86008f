"""StateStore: commits are atomic with offsets, survive reopen, a torn tail is ignored, snapshots compact."""

from __future__ import annotations

from pathlib import Path

from cityops.engine.state import StateStore


def test_commit_and_reopen_restores_tables_offsets_and_meta(tmp_path: Path) -> None:
    s = StateStore(tmp_path).open()
    t = s.table("t")
    t["a"] = [1, 2]
    t[("k", 3)] = {"x": 1.5}
    s.meta["wm"] = 42.0
    s.commit({("topic", 0): 10})
    t["a"].append(3)
    t.mark("a")
    del t[("k", 3)]
    s.commit({("topic", 0): 11, ("topic", 1): 5})
    s.close()
    r = StateStore(tmp_path).open()
    assert r.table("t").data == {"a": [1, 2, 3]}
    assert r.offsets == {("topic", 0): 11, ("topic", 1): 5}
    assert r.meta == {"wm": 42.0}


def test_uncommitted_changes_are_lost_and_torn_tail_ignored(tmp_path: Path) -> None:
    s = StateStore(tmp_path).open()
    s.table("t")["a"] = 1
    s.commit({("x", 0): 1})
    s.table("t")["a"] = 2
    s.commit({("x", 0): 2})
    s.table("t")["a"] = 3  # never committed: a crash here loses it, and the offsets say so
    s.close()
    log = next(tmp_path.glob("state.*.log"))
    data = log.read_bytes()
    log.write_bytes(data[:-7])  # a crash in the middle of writing the second commit
    r = StateStore(tmp_path).open()
    assert r.table("t")["a"] == 1
    assert r.offsets == {("x", 0): 1}
    # and the store goes on committing after the truncated record
    r.table("t")["b"] = 5
    r.commit({("x", 0): 3})
    r.close()
    again = StateStore(tmp_path).open()
    assert again.table("t").data == {"a": 1, "b": 5}
    assert again.offsets == {("x", 0): 3}


def test_snapshot_compacts_log_and_keeps_state(tmp_path: Path) -> None:
    s = StateStore(tmp_path, snapshot_bytes=2000).open()
    t = s.table("t")
    for i in range(200):
        t[i] = "v" * 20
        s.commit({("x", 0): i})
    assert (tmp_path / "state.snapshot").exists()
    assert len(list(tmp_path.glob("state.*.log"))) == 1
    s.close()
    r = StateStore(tmp_path).open()
    assert len(r.table("t")) == 200
    assert r.offsets[("x", 0)] == 199


def test_tables_created_after_open_get_recovered_data(tmp_path: Path) -> None:
    s = StateStore(tmp_path).open()
    s.table("late")["k"] = "v"
    s.commit({})
    s.close()
    r = StateStore(tmp_path).open()
    assert "k" in r.table("late")


def test_keys_created_and_deleted_between_commits_write_nothing(tmp_path: Path) -> None:
    """A short-lived key costs no log bytes; a persisted key deleted and set again is still written."""
    store = StateStore(tmp_path, fsync=False).open()
    t = store.table("buf")
    t["old"] = 1
    store.commit({})
    t["tmp"] = "x" * 10_000
    t["gone"] = 3
    del t["tmp"]
    assert t.pop("never", None) is None
    t["tmp2"] = "y" * 10_000
    assert t.pop("tmp2") == "y" * 10_000
    del t["old"]
    t["old"] = 2  # a persisted key deleted and set again: the new value must be written
    assert t.dirty == {"gone", "old"}
    assert store.commit({("a", 0): 1}) < 1000  # neither 10 kB value reached the log
    t["old2"] = 4
    del t["old"]  # persisted: its deletion must be written
    store.commit({("a", 0): 2})
    store.close()
    again = StateStore(tmp_path, fsync=False).open()
    assert dict(again.table("buf").items()) == {"gone": 3, "old2": 4}


def test_a_dropped_table_is_gone_after_its_commit_and_can_be_declared_again_with_another_shape(
        tmp_path: Path) -> None:
    """A rule redefined with another kind (cityops.alerts.reload): its old table goes, a new one of the same
    name and another shape starts empty in the same commit; a snapshot and a restart agree."""
    from cityops.engine.codec import Codec

    old, new = Codec("rule:a", int), Codec("rule:b", str)
    s = StateStore(tmp_path).open()
    t = s.table("rule:X", old)
    t["gone"], t["also"] = 1, 2
    s.commit({("x", 0): 1})
    del t["also"]  # deleted since the last commit: its tombstone goes with the drop
    t["fresh"] = 3  # never committed
    assert s.drop_table("rule:X") == 2
    s.table("rule:X", new)["k"] = "v"
    s.commit({("x", 0): 2})
    s.close()
    r = StateStore(tmp_path).open()
    assert r.table("rule:X", new).data == {"k": "v"} and r.undeclared() == []
    r.snapshot()
    r.close()
    r = StateStore(tmp_path).open()
    assert r.table("rule:X", new).data == {"k": "v"}
    r.close()


def test_a_drop_of_a_restored_table_is_committed_and_one_not_committed_never_happened(tmp_path: Path) -> None:
    s = StateStore(tmp_path).open()
    s.table("rule:Y")["a"] = 1
    s.table("keep")["b"] = 2
    s.commit({("x", 0): 1})
    s.close()
    r = StateStore(tmp_path).open()  # rule:Y restored, not declared by this run
    assert r.undeclared() == ["keep", "rule:Y"] and r.restored_shape("rule:Y") == "plain"
    assert r.drop_table("rule:Y") == 1 and r.undeclared() == ["keep"]
    r.close()  # a crash before the commit: the drop never happened
    r = StateStore(tmp_path).open()
    assert r.undeclared() == ["keep", "rule:Y"]
    r.drop_table("rule:Y")
    r.commit({("x", 0): 2})
    r.close()
    r = StateStore(tmp_path).open()
    assert r.undeclared() == ["keep"] and r.table("rule:Y").data == {}
    assert r.drop_table("no-such-table") == 0
    r.close()
