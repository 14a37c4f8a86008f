"""State format: what cannot be read exactly is refused (never mis-read); codecs round-trip; migrations apply."""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityops import cli
from cityops.alerts import kinds as K
from cityops.alerts.lifecycle import ALERT_CODEC, TRANSITION_CODEC
from cityops.engine.codec import PLAIN, Codec, StateFormatError, StateStruct
from cityops.engine.context import Decoded
from cityops.engine.pipeline import DEAD_LETTER_CODEC, SEEN_CODEC, Seen, buffer_codec
from cityops.engine.state import FORMAT_VERSION, MAGIC, StateStore
from cityops.engine.windows import Kpi, WindowCodec
from cityops.food.lineage import CERT_CODEC, LOT_CODEC, Cert, Lot
from cityops.streams.city_streams import HEALTH, QUALITY, RIDERSHIP, ROAD
from cityops.streams.models import CardTap
from cityops.streams.times import rfc3339_seconds


def _header(version: int) -> bytes:
    return MAGIC + struct.pack(">H", version)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def _written(tmp_path: Path, codec: Codec = PLAIN, **values: Any) -> None:
    s = StateStore(tmp_path, fsync=False).open()
    t = s.table("t", codec)
    for k, v in values.items():
        t[k] = v
    s.commit({("x", 0): 1})
    s.close()


# -- refusals ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["snapshot", "log"])
def test_a_newer_format_is_refused_naming_the_version_and_what_to_do(tmp_path: Path, where: str) -> None:
    body = msgspec.msgpack.encode({"format": 2, "generation": 0, "commits": 0, "tables": [], "offsets": [],
                                   "meta": {}})
    if where == "snapshot":
        (tmp_path / "state.snapshot").write_bytes(_header(2) + _frame(body))
    else:
        (tmp_path / "state.0.log").write_bytes(_header(2) + _frame(body))
    with pytest.raises(StateFormatError, match=r"state format 2; this release reads format 1.*run a release"):
        StateStore(tmp_path).open()


def test_a_newer_format_stops_the_worker_with_exit_2_before_any_server(tmp_path: Path, monkeypatch: Any,
                                                                         capsys: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.snapshot").write_bytes(_header(7) + _frame(b"\x80"))
    for k, v in {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CITYOPS_INFLUX_URL": "http://127.0.0.1:9",
                 "CITYOPS_PSEUDONYM_KEY": "unit-test-key-0123456789", "CITYOPS_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "state format 7" in err and "this release reads format 1" in err and "CITYOPS_DATA_DIR" in err


def test_a_record_from_another_format_inside_a_log_is_refused(tmp_path: Path) -> None:
    _written(tmp_path, a=1)
    log = tmp_path / "state.0.log"
    bad = msgspec.msgpack.encode({"format": 3, "tables": [], "offsets": [], "meta": {}})
    log.write_bytes(log.read_bytes() + _frame(bad))
    with pytest.raises(StateFormatError, match="state format 3"):
        StateStore(tmp_path).open()


def test_a_corrupt_snapshot_is_refused_not_read(tmp_path: Path) -> None:
    s = StateStore(tmp_path, fsync=False).open()
    s.table("t")["a"] = 1
    s.commit({})
    s.snapshot()
    s.close()
    snap = tmp_path / "state.snapshot"
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(StateFormatError, match="checksum"):
        StateStore(tmp_path).open()


def test_a_checksummed_record_that_is_not_a_record_is_refused(tmp_path: Path) -> None:
    _written(tmp_path, a=1)
    log = tmp_path / "state.0.log"
    log.write_bytes(log.read_bytes() + _frame(msgspec.msgpack.encode({"tables": "nonsense"})))
    with pytest.raises(StateFormatError, match="not a format-1 record"):
        StateStore(tmp_path).open()


class Entry(StateStruct, kw_only=True):
    count: int
    last: float


def test_a_value_of_another_shape_is_refused(tmp_path: Path) -> None:
    _written(tmp_path, Codec("entry", Entry), a=Entry(count=1, last=2.0))
    with pytest.raises(StateFormatError, match=r"holds shape 'entry', this release declares 'other'"):
        StateStore(tmp_path).open().table("t", Codec("other", Entry))


@pytest.mark.parametrize("stored", [{"count": "1", "last": 2.0}, {"count": 1}, {"count": 1, "last": 2.0, "x": 0},
                                    [1, 2.0]])
def test_a_value_not_matching_its_declared_shape_is_refused(tmp_path: Path, stored: Any) -> None:
    # Written under the same shape name with other content: corrupt, or another program's. Never guessed.
    _written(tmp_path, Codec("entry", Any), a=stored)
    with pytest.raises(StateFormatError, match=r"table 't' key 'a': value is not shape 'entry' version 1"):
        StateStore(tmp_path).open().table("t", Codec("entry", Entry))


def test_a_newer_shape_version_is_refused_and_an_older_one_migrated(tmp_path: Path) -> None:
    _written(tmp_path, Codec("entry", Any, version=3), a={"n": 1})
    with pytest.raises(StateFormatError, match="version 3, newer than this release reads"):
        StateStore(tmp_path).open().table("t", Codec("entry", Entry, version=2))
    tmp2 = tmp_path / "old"
    _written(tmp2, Codec("entry", Any), a={"n": 5, "t": 1.5})  # version 1: other field names
    with pytest.raises(StateFormatError, match="no migration from it to version 2"):
        StateStore(tmp2).open().table("t", Codec("entry", Entry, version=2))
    v2 = Codec("entry", Entry, version=2, migrations={1: lambda k, v: {"count": v["n"], "last": v["t"]}})
    assert StateStore(tmp2).open().table("t", v2).data == {"a": Entry(count=5, last=1.5)}


def test_a_field_added_with_a_default_reads_old_values_without_migration(tmp_path: Path) -> None:
    class Entry2(StateStruct, kw_only=True):
        count: int
        last: float
        note: str = "none"

    _written(tmp_path, Codec("entry", Entry), a=Entry(count=1, last=2.0))
    assert StateStore(tmp_path).open().table("t", Codec("entry", Entry2)).data == {
        "a": Entry2(count=1, last=2.0, note="none")}


def test_windows_take_a_new_slot_from_the_kpi_and_refuse_unknown_slots_or_measurements(tmp_path: Path) -> None:
    old = Kpi("m", ("tag",), lambda: [0, 0.0], lambda a: {"n": a[0]}, slots=("n", "sum"))
    new = Kpi("m", ("tag",), lambda: [0, 0.0, 7], lambda a: {"n": a[0]}, slots=("n", "sum", "max"))
    key = ("m", ("x",), 60)
    s = StateStore(tmp_path, fsync=False).open()
    s.table("w", WindowCodec({"m": old}).windows)[key] = [3, 1.5]
    s.commit({})
    s.close()
    assert StateStore(tmp_path).open().table("w", WindowCodec({"m": new}).windows).data == {key: [3, 1.5, 7]}
    renamed = Kpi("m", ("tag",), lambda: [0, 0.0], lambda a: {"n": a[0]}, slots=("n", "total"))
    with pytest.raises(StateFormatError, match=r"slots \['sum'\] that Kpi 'm' does not declare"):
        StateStore(tmp_path).open().table("w", WindowCodec({"m": renamed}).windows)
    with pytest.raises(StateFormatError, match="measurement 'm', which this release does not compute"):
        StateStore(tmp_path).open().table("w", WindowCodec({}).windows)


def test_a_kpi_must_name_every_accumulator_position() -> None:
    with pytest.raises(ValueError, match="slots"):
        Kpi("m", (), lambda: [0, 0], lambda a: None, slots=("n",))


# -- format 0 ------------------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("value", [_Evil(), __import__("collections").OrderedDict(a=1)])
def test_format0_with_classes_it_never_wrote_is_refused_without_running_them(tmp_path: Path, value: Any) -> None:
    snap = {"generation": 0, "tables": {"t": {"a": value}}, "offsets": {}, "meta": {}, "commits": 0}
    (tmp_path / "state.snapshot").write_bytes(pickle.dumps(snap, protocol=5))
    with pytest.raises(StateFormatError, match=r"format-0 state holds (posix|os)\.system|OrderedDict"):
        StateStore(tmp_path).open()
    assert (tmp_path / "state.snapshot").read_bytes()[:1] == b"\x80"  # left as it was
    assert not (tmp_path / "format-0-backup").exists()


def test_format0_is_converted_with_a_backup_and_its_values_migrated(tmp_path: Path) -> None:
    ev = CardTap(event_id="e1", ts=datetime(2026, 11, 25, 8, tzinfo=timezone(timedelta(hours=8))), source="g",
                 card_id="p-1", mode="metro", line="L1", direction="in")
    snap = {"generation": 4, "offsets": {("taps", 0): 9}, "commits": 2,
            "meta": {"partition_watermark": {("taps", 0): 5.0}, "alert_continuous_rules": ("A", "B")},
            "tables": {"food_lots": {"lot-1": [3, 10.0, ["lot-0"]]}, "dedup": {("taps", "e1"): (b"d", 5.0)},
                       "rule_buffer": {(5.0, 1): ("taps", Decoded("e1", 5.0, "g", b"d", ev, 0))}}}
    (tmp_path / "state.snapshot").write_bytes(pickle.dumps(snap, protocol=5))
    (tmp_path / "state.4.log").write_bytes(b"")
    s = StateStore(tmp_path).open()
    assert (tmp_path / "format-0-backup" / "state.snapshot").read_bytes()[:1] == b"\x80"
    assert (tmp_path / "state.snapshot").read_bytes().startswith(MAGIC)
    assert s.offsets == {("taps", 0): 9} and s.commits == 2
    assert s.meta == {"partition_watermark": {("taps", 0): 5.0}, "alert_continuous_rules": ["A", "B"]}
    assert s.table("food_lots", LOT_CODEC).data == {"lot-1": Lot(facts=3, seen=10.0, upstream=["lot-0"])}
    assert s.table("dedup", SEEN_CODEC).data == {("taps", "e1"): Seen(digest=b"d", ts=5.0)}
    topic, got = s.table("rule_buffer", buffer_codec({"taps": CardTap})).data[(5.0, 1)]
    assert topic == "taps" and got.event_id == "e1" and got.digest == b"d"
    # Since issue 9 (leap seconds) a city event's ts is its RFC 3339 text: the same instant, as text.
    assert rfc3339_seconds(got.event.ts) == ev.ts.timestamp() and got.event.ts == "2026-11-25T00:00:00Z"
    assert got.event.card_id == "p-1" and type(got.event) is CardTap
    s.close()
    again = StateStore(tmp_path).open()  # now format 1 throughout
    assert again.table("food_lots", LOT_CODEC).data == {"lot-1": Lot(facts=3, seen=10.0, upstream=["lot-0"])}


# -- round trips ---------------------------------------------------------------------------------------------
finite = st.floats(allow_nan=False)
text = st.text(max_size=8)
scalar = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | finite | text | st.binary(max_size=8)
keys = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | finite | text,
                    lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6)
plain = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                     max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.dictionaries(keys, plain, max_size=6), second=st.dictionaries(keys, plain, max_size=6),
       gone=st.lists(keys, max_size=3), meta=st.dictionaries(text, plain, max_size=3))
def test_plain_tables_keys_and_meta_round_trip_through_log_and_snapshot(
        tmp_path_factory: Any, first: dict[Any, Any], second: dict[Any, Any], gone: list[Any],
        meta: dict[str, Any]) -> None:
    d = tmp_path_factory.mktemp("s")
    s = StateStore(d, fsync=False).open()
    t = s.table("t")
    t.data.update(first)
    t.dirty.update(first)
    s.commit({("a", 0): 1})
    s.snapshot()
    for k, v in second.items():
        t[k] = v
    for k in gone:
        t.pop(k)
    s.meta.update(meta)
    s.commit({("a", 0): 2})
    want = dict(t.data)
    s.close()
    r = StateStore(d).open()
    assert r.table("t").data == want
    # exactly: tuples stay tuples, ints ints, floats floats (repr tells them apart)
    assert sorted(map(repr, r.table("t").data.items())) == sorted(map(repr, want.items()))
    assert r.meta == meta and r.offsets == {("a", 0): 2}


def _round_trip(codec: Codec, key: Any, value: Any) -> Any:
    raw = msgspec.msgpack.encode(codec.encode_values([key], [value])[0])
    return codec.decode("t", key, raw, codec.version)


@settings(max_examples=40, deadline=None)
@given(st.builds(Seen, digest=st.binary(max_size=16), ts=finite),
       st.builds(Lot, facts=st.integers(0, 63), seen=finite, upstream=st.lists(text, max_size=4)),
       st.builds(Cert, locations=st.lists(text, max_size=4), seen=finite))
def test_engine_and_food_shapes_round_trip(seen: Seen, lot: Lot, cert: Cert) -> None:
    assert _round_trip(SEEN_CODEC, ("t", "e"), seen) == seen
    assert _round_trip(LOT_CODEC, "lot", lot) == lot
    assert _round_trip(CERT_CODEC, "c", cert) == cert


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=7, max_size=7), st.lists(finite, min_size=7, max_size=7))
def test_kpi_accumulators_round_trip_by_slot_name(ints: list[int], floats: list[float]) -> None:
    wc = WindowCodec({k.measurement: k for k in (RIDERSHIP, ROAD, HEALTH, QUALITY)})
    for kpi in (RIDERSHIP, ROAD, HEALTH, QUALITY):
        acc = [f if isinstance(x, float) else i for x, i, f in zip(kpi.new(), ints, floats)]
        key = (kpi.measurement, ("a",) * len(kpi.tags), 60)
        assert _round_trip(wc.windows, key, acc) == acc
        point = (kpi.measurement, {"t": "a"}, {"f": 1.5, "n": 2}, 60)
        assert _round_trip(wc.closed, key, (point, acc)) == (point, acc)
        named = msgspec.msgpack.decode(msgspec.msgpack.encode(wc.windows.encode_values([key], [acc])[0]))
        assert list(named) == list(kpi.slots)  # by name, not by position


@settings(max_examples=30, deadline=None)
@given(active=st.booleans(), ts=finite, times=st.lists(finite, max_size=5), gaps=st.lists(st.tuples(finite, finite),
       max_size=3), counts=st.dictionaries(finite, st.tuples(st.integers(0, 99), st.integers(0, 99)), max_size=3))
def test_rule_state_shapes_round_trip(active: bool, ts: float, times: list[float], gaps: list[tuple[float, float]],
                                      counts: dict[float, tuple[int, int]]) -> None:
    open_key = (K._OPEN, ("card", "c"))
    cases = [
        (K.KINDS["impossible_travel"], "c", K.LastTap(ts=ts, lat=1.0, lon=2.0, source="g")),
        (K.KINDS["declined_burst"], "c", times),
        (K.KINDS["concurrent_use"], "c", {"H1": ts}),
        (K.KINDS["registration_hoarding"], ("c", "2026-11-25"), K.DayCount(count=2, day_end=ts, times=times)),
        (K.KINDS["source_silent"], ("gaps", "s"), [K.Silence(begin=b, end=e) for b, e in gaps]),
        (K.KINDS["source_silent"], ("seen", "s"), ts),
        (K.KINDS["invalid_share"], "stream", K.ShareState(
            buckets={b: K.BucketCounts(accepted=a, bad=x) for b, (a, x) in counts.items()}, done=None, first=ts)),
        (K.KINDS["kpi_anomaly"], ("det", (("line", "L1"),)), {"version": "kpi-1", "state": {"err": {"err_n": 1}}}),
        (K.KINDS["invalid_share"], open_key, K.Condition(active=active, ts=ts)),
    ]
    for kind, key, value in cases:
        assert _round_trip(kind.state_codec(), key, value) == value, kind.kind


def test_rule_state_of_a_key_the_kind_does_not_keep_is_refused() -> None:
    raw = msgspec.msgpack.encode(1.0)
    with pytest.raises(StateFormatError, match="keeps no state under key"):
        K.KINDS["tampering"].state_codec().decode("rule:X", "c", raw, 1)


def test_outbox_and_alert_records_round_trip_and_refuse_unknown_fields() -> None:
    rec = {"status": "firing", "n": 1, "t": 5.0, "notified": "firing", "active": True, "last_active": -float("inf"),
           "recover_since": None, "since": 5.0, "starts_at": 5.0, "value": 2.0, "summary": "s", "description": "",
           "changes": [5.0], "flapping": False, "am_firing": True}
    assert _round_trip(ALERT_CODEC, ("R", (("card", "c"),)), rec) == rec
    shrunk = {"status": "inactive", "n": 2, "t": 9.0, "notified": "resolved"}
    assert _round_trip(ALERT_CODEC, ("R", ()), shrunk) == shrunk
    tr = {"id": "R|card=c|0", "alertname": "R", "status": "firing", "previous": None, "am_action": "firing",
          "severity": "warning", "domain": "d", "entity": {"card": "c"}, "labels": {"alertname": "R"},
          "annotations": {"summary": "s"}, "starts_at": 5.0, "ends_at": None, "value": 1.0, "ts": 5.0,
          "delivered": ["kafka"]}
    assert _round_trip(TRANSITION_CODEC, 0, tr) == tr
    with pytest.raises(StateFormatError, match=r"fields \['renamed'\]"):
        _round_trip(ALERT_CODEC, ("R", ()), {**shrunk, "renamed": 1})
    dl = {"stream": "s", "topic": "s", "partition": 0, "offset": 3, "index": None, "reason": "r", "outcome": "invalid",
          "raw": b"\xff", "element": None}
    assert _round_trip(DEAD_LETTER_CODEC, 1, dl) == dl
    refused = {**dl, "measurement": "m", "id": "influx:m:ab"}
    assert _round_trip(DEAD_LETTER_CODEC, 2, refused) == refused


def test_buffered_events_come_back_as_their_stream_type() -> None:
    ev = CardTap(event_id="e", ts="2026-11-25T00:00:00Z", source="g", card_id="p", mode="bus",
                 line="1", direction="out", fare_cny=2.5, lat=31.0, lon=120.0)
    codec = buffer_codec({"taps": CardTap, "food": dict[str, Any]})
    topic, got = _round_trip(codec, (1.0, 1), ("taps", Decoded("e", 1.0, "g", b"\x00d", ev, 3)))
    assert topic == "taps" and got == Decoded("e", 1.0, "g", b"\x00d", ev, 3)
    food = {"type": "ObjectEvent", "own": ["x"], "temps": [1.5]}
    assert _round_trip(codec, (1.0, 2), ("food", Decoded("f", 1.0, "s", b"", food, 0)))[1].event == food


def test_format_version_is_in_every_file_and_record(tmp_path: Path) -> None:
    _written(tmp_path, a=1)
    raw = (tmp_path / "state.0.log").read_bytes()
    assert raw.startswith(_header(FORMAT_VERSION))
    (length,) = struct.unpack_from(">I", raw, len(_header(1)))
    rec = msgspec.msgpack.decode(raw[len(_header(1)) + 8: len(_header(1)) + 8 + length])
    assert rec["format"] == FORMAT_VERSION
    assert rec["tables"] == [{"table": "t", "shape": "plain", "version": 1, "set": {"a": 1}, "deleted": []}]
    assert rec["offsets"] == [{"topic": "x", "partition": 0, "offset": 1}]


def test_format0_log_without_snapshot_with_deletions_and_a_torn_tail(tmp_path: Path, monkeypatch: Any) -> None:
    """A format-0 directory that never compacted: log records only; deletions were pickled tombstones."""
    import cityops.engine.state as state_mod

    class _DeletedMark:  # how format 0 pickled its tombstone: a reference to cityops.engine.state._DELETED_MARK
        def __reduce__(self) -> str:
            return "_DELETED_MARK"

    _DeletedMark.__module__ = "cityops.engine.state"
    mark = _DeletedMark()
    monkeypatch.setattr(state_mod, "_DELETED_MARK", mark)
    records = [
        {"tables": {"food_cold": {"loc-1": True, "loc-2": True}}, "offsets": {("food", 0): 1}, "meta": {"x": 1}},
        {"tables": {"food_cold": {"loc-1": mark}}, "offsets": {("food", 0): 2}, "meta": {"x": 2}},
    ]
    frames = b"".join(_frame(pickle.dumps(r, protocol=5)) for r in records)
    torn = _frame(pickle.dumps({"tables": {"food_cold": {"loc-3": True}}, "offsets": {}, "meta": {}}))[:-4]
    (tmp_path / "state.0.log").write_bytes(frames + torn)
    monkeypatch.undo()
    from cityops.food.stream import COLD_CODEC

    s = StateStore(tmp_path).open()
    assert s.table("food_cold", COLD_CODEC).data == {"loc-2": True}
    assert s.offsets == {("food", 0): 2} and s.meta == {"x": 2} and s.commits == 2
    assert (tmp_path / "format-0-backup" / "state.0.log").read_bytes() == frames + torn


def test_the_engine_refuses_bad_rule_state_when_it_starts_not_at_the_rules_first_event(tmp_path: Path) -> None:
    from cityops.alerts.spec import RuleSpec
    from cityops.engine.pipeline import Engine

    rule = K.build(RuleSpec(name="Travel", kind="impossible_travel", agent="t", params={}))
    s = StateStore(tmp_path, fsync=False).open()
    # A card's last tap under the kind's shape name, but positional: what a mis-read would look like.
    s.table("rule:Travel", Codec("rule:impossible_travel", Any))["p-1"] = [5.0, 31.0, 120.0, "g"]
    s.commit({})
    s.close()
    with pytest.raises(StateFormatError, match=r"table 'rule:Travel' key 'p-1': value is not shape"):
        Engine(StateStore(tmp_path).open(), [], rules=[rule])
