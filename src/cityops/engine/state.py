"""Durable engine state: dict-like tables whose changes are committed atomically with input offsets.

Why not Faust tables: a Faust table's changelog and the consumer's offset commit are two separate writes,
so a `kill -9` between them replays events into state that already holds them (seen here: 30,000 events
counted as 33,337). Kafka transactions would tie the two together, but the brokers we must run on do not
support them. So the engine keeps its state in memory and commits, in ONE append to a local log, every
table change since the last commit *together with* the input offsets those changes cover. After a crash
the state is rebuilt from the last snapshot plus the complete log records, and the engine skips input
records at or below the restored offsets: nothing is lost, nothing is counted twice.

The log record is framed (length + CRC32); a torn tail from a crash mid-write fails its CRC and is
ignored, which is what makes each commit atomic. When the log grows past a size the whole state is written
as a new snapshot (write, fsync, rename) and the log starts over.

Format (``FORMAT_VERSION`` = 1). Both files start with ``MAGIC`` and the format version (big-endian u16);
then frames of (u32 length, u32 CRC32 of the payload, payload). A payload is MessagePack of named maps:

- snapshot ``state.snapshot``: one frame ``{format, generation, commits, tables, offsets, meta}``;
- log ``state.<generation>.log``: one frame per commit ``{format, tables, offsets, meta}``;
- ``tables``: a list of ``{table, shape, version, set: {key: value}, deleted: [key]}``; each value is
  written by the table's ``Codec`` (``cityops.engine.codec``: a declared shape name and version, fields
  by name); keys are plain hashable data (strings, numbers, tuples of them);
- ``offsets``: ``[{topic, partition, offset}]``; ``meta``: the store's small named values (plain data).

Versions and upgrades. Format 0 is the pickled format of the releases before versioned state (pickled
``{generation, tables, offsets, meta}``, no header). A release reads every older format it has a
migration for and refuses anything else with ``StateFormatError`` (exit 2, naming the version found and
what to do) — it never starts on state it mis-reads. Opening a format-0 directory converts it at once:
the old files are kept in ``format-0-backup/`` beside it, and a format-1 snapshot replaces them; the
values of each table are then migrated from their version 0 by the table's codec when the table is
first used. Only classes the format-0 writer stored (builtins, datetime, the stream models, ``Decoded``)
are read from the pickle, as field maps, never as live objects. A table's shape changes independently of
the file format: a new field with a default needs nothing, anything else a codec version and migration.
Downgrading is not supported: keep the backup (or a copy of the data directory) until the upgrade is
known good.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from cityops.engine.codec import PLAIN, Codec, StateFormatError, freeze

__all__ = ["FORMAT_VERSION", "MAGIC", "StateFormatError", "StateStore", "Table", "check_format"]

log = logging.getLogger("cityops.state")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FORMAT_VERSION = 1
MAGIC = b"cityops-state\n"
_FILE_HEADER = struct.Struct(">H")  # format version, after MAGIC
_HEADER = struct.Struct(">II")  # payload length, crc32
_DELETED = object()
class Table(Generic[K, V]):
    """A dict whose writes are tracked so the next commit persists exactly what changed.

    Values are owned by the table: after mutating a stored value in place, call ``mark(key)``.
    ``codec`` declares how its values are written (``cityops.engine.codec``).
    """

    __slots__ = ("name", "codec", "data", "dirty", "fresh")

    def __init__(self, name: str, codec: Codec = PLAIN) -> None:
        self.name = name
        self.codec = codec
        self.data: dict[K, V] = {}
        self.dirty: set[K] = set()
        # Keys created since the last commit (never persisted; a subset of dirty): deleting one again
        # before the commit leaves nothing to write. Short-lived entries (the rule buffer's events,
        # released within the same second) then cost no serialization at all.
        self.fresh: set[K] = set()

    def __getitem__(self, key: K) -> V:
        return self.data[key]

    def get(self, key: K, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        data = self.data
        if key not in data and key not in self.dirty:  # (absent but dirty: a persisted key deleted since)
            self.fresh.add(key)
        data[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: K) -> None:
        del self.data[key]
        self._forget(key)

    def pop(self, key: K, default: Any = None) -> Any:
        if key in self.data:
            value = self.data.pop(key)
            self._forget(key)
            return value
        return default

    def _forget(self, key: K) -> None:
        if key in self.fresh:
            self.fresh.discard(key)
            self.dirty.discard(key)  # never persisted: no tombstone needed
        else:
            self.dirty.add(key)

    def mark(self, key: K) -> None:
        self.dirty.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[K]:
        return iter(self.data)

    def items(self) -> Any:
        return self.data.items()

    def keys(self) -> Any:
        return self.data.keys()

    def values(self) -> Any:
        return self.data.values()

    def take_changes(self) -> tuple[list[K], list[Any], list[K]]:
        """(changed keys, their values, deleted keys) since the last call; clears the change marks."""
        data = self.data
        keys: list[K] = []
        values: list[Any] = []
        deleted: list[K] = []
        for k in self.dirty:
            v = data.get(k, _DELETED)
            if v is _DELETED:
                deleted.append(k)
            else:
                keys.append(k)
                values.append(v)
        self.dirty = set()
        self.fresh = set()
        return keys, values, deleted




# -- the encoded form (format 1) ------------------------------------------------------------------------
class _Offset(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    partition: int
    offset: int


class _TableIn(msgspec.Struct, forbid_unknown_fields=True):
    """One table's changes (log) or contents (snapshot), values still encoded."""

    table: str
    shape: str
    version: int
    set: dict[Any, msgspec.Raw] = {}
    deleted: list[Any] = []


class _RecordIn(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    tables: list[_TableIn]
    offsets: list[_Offset]
    meta: dict[str, Any]


class _SnapshotIn(_RecordIn, forbid_unknown_fields=True, kw_only=True):
    generation: int = 0
    commits: int = 0


_record_decoder = msgspec.msgpack.Decoder(_RecordIn)
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotIn)


def _offsets_out(offsets: dict[tuple[str, int], int]) -> list[dict[str, Any]]:
    return [{"topic": t, "partition": p, "offset": o} for (t, p), o in offsets.items()]


def _file_header() -> bytes:
    return MAGIC + _FILE_HEADER.pack(FORMAT_VERSION)


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _file_format(head: bytes) -> int | None:
    """Format version of a state file from its first bytes: None = empty, 0 = pickled (no header)."""
    if not head:
        return None
    if head.startswith(MAGIC):
        if len(head) < len(MAGIC) + _FILE_HEADER.size:
            return None  # torn header of a log created just before a crash: nothing was committed to it
        return int(_FILE_HEADER.unpack_from(head, len(MAGIC))[0])
    return 0


def check_format(directory: Path) -> int | None:
    """The state format of ``directory`` from its file headers (None: no state yet), without reading it.

    StateFormatError if it is one this release cannot read: a cheap check to run before anything else at
    start-up; ``StateStore.open`` still checks every record and value.
    """
    store = StateStore(directory)
    if not directory.is_dir():
        return None
    fmt = store._detect_format()
    if fmt is not None and fmt != 0:
        store._check_format(fmt, directory)
    return fmt


# Pending values of a table not yet claimed: key -> (shape, version, encoded value).
_Pending = dict[Any, tuple[str, int, Any]]


class StateStore:
    """Named tables plus input offsets, persisted as snapshot + append-only commit log in ``directory``.

    ``snapshot_bytes``: once the log exceeds this size (default 64 MiB) the next commit compacts it.
    ``fsync``: flush commits to stable storage (default True; tests of pure logic may turn it off).
    ``open()`` raises ``StateFormatError`` for state it cannot read exactly (see the module docstring).
    """

    def __init__(self, directory: Path | None, *, snapshot_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.directory = directory
        self.snapshot_bytes = snapshot_bytes
        self.fsync = fsync
        self.tables: dict[str, Table[Any, Any]] = {}
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset applied
        self.meta: dict[str, Any] = {}  # small named plain values (watermarks, sequence numbers), committed whole
        self.commits = 0
        self._log: Any = None
        self._log_size = 0
        self._generation = 0
        self._pending: dict[str, _Pending] = {}
        # Tables dropped since the last commit: their deletions, written first in the next commit.
        self._dropped: list[dict[str, Any]] = []
        self._encoder = msgspec.msgpack.Encoder()

    # -- tables -------------------------------------------------------------------------------------
    def table(self, name: str, codec: Codec | None = None) -> Table[Any, Any]:
        """The table called ``name`` whose values have the shape ``codec`` declares, created (and filled
        from disk, if recovered) on first use. Without ``codec``: the table as already declared, else one
        of untyped plain data (``PLAIN``: for tests and scratch tables only).

        Raises StateFormatError if the recovered values are not of that shape, ValueError if the table was
        already declared with another shape.
        """
        table = self.tables.get(name)
        if table is not None:
            if codec is not None and table.codec is not codec and table.codec.shape != codec.shape:
                raise ValueError(f"state table {name!r} declared as {table.codec!r} and as {codec!r}")
            return table
        if codec is None:
            codec = PLAIN
        pending = self._pending.pop(name, None)
        table = Table(name, codec)
        if pending:
            data = table.data
            decode = codec.decode
            for key, (shape, version, raw) in pending.items():
                if shape != codec.shape and version != 0:
                    raise StateFormatError(
                        f"state table {name!r} holds shape {shape!r}, this release declares {codec.shape!r}: "
                        f"CITYOPS_DATA_DIR was written by a release with another meaning for this table; "
                        f"run that release, or move the data directory aside to start empty")
                data[key] = decode(name, key, raw, version)
        self.tables[name] = table
        return table

    def drop_table(self, name: str) -> int:
        """Forget table ``name`` (declared or only restored) and everything it holds; returns its entries.

        The next commit deletes every persisted key of it, before any other table change of that commit, so
        a table declared again under the same name (with another shape, e.g. a rule whose kind changed)
        starts empty, and a restore after a crash either still has the whole old table or none of it.
        """
        table = self.tables.pop(name, None)
        pending = self._pending.pop(name, None)
        entries = 0
        if table is not None:
            entries = len(table.data)
            # Persisted keys: those held (less the ones created since the last commit) and those deleted
            # since the last commit (their tombstones must still be written).
            keys = [k for k in table.data if k not in table.fresh]
            keys += [k for k in table.dirty if k not in table.data]
            shape, version = table.codec.shape, table.codec.version
        elif pending is not None:
            entries = len(pending)
            keys = list(pending)
            first = next(iter(pending.values()), None)
            shape, version = (first[0], first[1]) if first is not None else ("plain", 1)
        else:
            return 0
        if keys:
            self._dropped.append({"table": name, "shape": shape, "version": version, "set": {}, "deleted": keys})
        return entries

    def _take_drops(self) -> list[dict[str, Any]]:
        dropped, self._dropped = self._dropped, []
        return dropped

    def restored_shape(self, name: str) -> str | None:
        """The shape a restored table nobody has declared yet was written with (None: no such table, or one of
        the pickled format, version 0, which every codec reads through its migration)."""
        pending = self._pending.get(name)
        for shape, version, _raw in (pending or {}).values():
            if version != 0:
                return shape
        return None

    def undeclared(self) -> list[str]:
        """Restored tables nobody has declared yet (kept as written; e.g. the state of a removed rule)."""
        return sorted(self._pending)

    # -- persistence ---------------------------------------------------------------------------------
    @property
    def _snapshot_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "state.snapshot"

    def _log_path(self, generation: int) -> Path:
        assert self.directory is not None
        return self.directory / f"state.{generation}.log"

    def open(self) -> "StateStore":
        """Load the snapshot and replay the complete records of its log; ready for commits.

        A format-0 (pickled) directory is converted first (see the module docstring).
        """
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._detect_format() == 0:
            self._upgrade_format0()
        if self._snapshot_path.exists():
            self._read_snapshot(self._snapshot_path.read_bytes())
        log_path = self._log_path(self._generation)
        good = 0
        if log_path.exists():
            raw = log_path.read_bytes()
            fmt = _file_format(raw[: len(MAGIC) + _FILE_HEADER.size])
            if fmt is None:
                raw = b""
            else:
                self._check_format(fmt, log_path)
            pos = len(MAGIC) + _FILE_HEADER.size if raw else 0
            while pos + _HEADER.size <= len(raw):
                length, crc = _HEADER.unpack_from(raw, pos)
                payload = raw[pos + _HEADER.size : pos + _HEADER.size + length]
                if len(payload) != length or zlib.crc32(payload) != crc:
                    break  # torn tail of a commit that never completed: it never happened
                try:
                    record = _record_decoder.decode(payload)
                except msgspec.DecodeError as exc:
                    raise StateFormatError(f"state log {log_path} record at byte {pos} has a valid checksum but "
                                           f"is not a format-{FORMAT_VERSION} record ({exc}): restore a backup "
                                           "of CITYOPS_DATA_DIR or move it aside to start empty") from None
                self._check_format(record.format, log_path)
                self._apply(record.tables)
                self.offsets.update({(o.topic, o.partition): o.offset for o in record.offsets})
                self.meta = record.meta
                self.commits += 1
                pos += _HEADER.size + length
            good = pos
            if good != len(raw):
                with open(log_path, "r+b") as fh:
                    fh.truncate(good)
        if good == 0:
            self._log = open(log_path, "wb")
            self._log.write(_file_header())
            self._log.flush()
            good = self._log.tell()
        else:
            self._log = open(log_path, "ab")
        self._log_size = good
        # Drop logs of older generations left by a crash between snapshot rename and log cleanup.
        for old in self.directory.glob("state.*.log"):
            if old != log_path:
                old.unlink(missing_ok=True)
        return self

    def _check_format(self, fmt: int, where: Path) -> None:
        if fmt != FORMAT_VERSION:
            raise StateFormatError(
                f"{where} has state format {fmt}; this release reads format {FORMAT_VERSION} (and converts "
                f"format 0): run a release that reads format {fmt} (state is never downgraded), or restore "
                f"a backup of CITYOPS_DATA_DIR")

    def _read_snapshot(self, raw: bytes) -> None:
        path = self._snapshot_path
        fmt = _file_format(raw[: len(MAGIC) + _FILE_HEADER.size])
        if fmt is None:
            raise StateFormatError(f"{path} is empty or truncated: restore a backup of CITYOPS_DATA_DIR")
        self._check_format(fmt, path)
        pos = len(MAGIC) + _FILE_HEADER.size
        if len(raw) < pos + _HEADER.size:
            raise StateFormatError(f"{path} is truncated: restore a backup of CITYOPS_DATA_DIR")
        length, crc = _HEADER.unpack_from(raw, pos)
        payload = raw[pos + _HEADER.size :]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise StateFormatError(f"{path} fails its checksum (corrupt): restore a backup of CITYOPS_DATA_DIR")
        try:
            snap = _snapshot_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise StateFormatError(f"{path} is not a format-{FORMAT_VERSION} snapshot ({exc}): restore a backup "
                                   "of CITYOPS_DATA_DIR") from None
        self._check_format(snap.format, path)
        self._generation = snap.generation
        self.commits = snap.commits
        self.offsets = {(o.topic, o.partition): o.offset for o in snap.offsets}
        self.meta = snap.meta
        self._apply(snap.tables)

    def _apply(self, tables: list[_TableIn]) -> None:
        pending = self._pending
        for ch in tables:
            data = pending.get(ch.table)
            if data is None:
                data = pending[ch.table] = {}
            for key in ch.deleted:
                data.pop(freeze(key), None)
            shape, version = ch.shape, ch.version
            for key, raw in ch.set.items():
                data[key] = (shape, version, raw)
            if not data:  # emptied (a dropped table): nothing is left to carry
                del pending[ch.table]

    def _detect_format(self) -> int | None:
        """Format of the directory's state: None when there is none yet."""
        assert self.directory is not None
        paths = [self._snapshot_path] if self._snapshot_path.exists() else []
        paths += sorted(self.directory.glob("state.*.log"))
        for path in paths:
            with open(path, "rb") as fh:
                fmt = _file_format(fh.read(len(MAGIC) + _FILE_HEADER.size))
            if fmt is not None:
                return fmt
        return None

    # -- format 0 --------------------------------------------------------------------------------------
    def _upgrade_format0(self) -> None:
        """Convert a pickled (format 0) directory: back it up, write its state as a format-1 snapshot."""
        assert self.directory is not None
        gen, tables, offsets, meta, commits = _read_format0(self.directory)
        backup = self.directory / "format-0-backup"
        backup.mkdir(exist_ok=True)
        for path in [self._snapshot_path, *self.directory.glob("state.*.log")]:
            if path.exists():
                shutil.copy2(path, backup / path.name)
        images = []
        for name, data in tables.items():
            images.append({"table": name, "shape": "", "version": 0,
                           "set": {k: _plain0(v) for k, v in data.items()}, "deleted": []})
        body = {"format": FORMAT_VERSION, "generation": gen + 1, "commits": commits, "tables": images,
                "offsets": _offsets_out(offsets), "meta": {k: _plain0(v) for k, v in meta.items()}}
        self._write_snapshot_file(self._encoder.encode(body))
        for old in self.directory.glob("state.*.log"):
            old.unlink(missing_ok=True)
        log.warning("state format 0 (pickled) converted to format %d dir=%s backup=%s tables=%d",
                    FORMAT_VERSION, self.directory, backup, len(tables))

    # -- writing -------------------------------------------------------------------------------------
    def _table_out(self, table: Table[Any, Any], keys: list[Any], values: list[Any],
                   deleted: list[Any]) -> dict[str, Any]:
        codec = table.codec
        return {"table": table.name, "shape": codec.shape, "version": codec.version,
                "set": dict(zip(keys, codec.encode_values(keys, values))), "deleted": deleted}

    def commit(self, offsets: dict[tuple[str, int], int]) -> int:
        """Persist every table change since the last commit together with ``offsets``; returns bytes written."""
        self.offsets.update(offsets)
        changes: list[dict[str, Any]] = self._take_drops()  # first: a table declared again starts empty
        for table in self.tables.values():
            if table.dirty:
                keys, values, deleted = table.take_changes()
                if self.directory is not None:
                    changes.append(self._table_out(table, keys, values, deleted))
        self.commits += 1
        if self.directory is None:
            return 0
        payload = self._encoder.encode(
            {"format": FORMAT_VERSION, "tables": changes, "offsets": _offsets_out(offsets), "meta": self.meta})
        frame = _frame(payload)
        self._log.write(frame)
        self._log.flush()
        if self.fsync:
            os.fsync(self._log.fileno())
        self._log_size += len(frame)
        if self._log_size > self.snapshot_bytes:
            self.snapshot()
        return len(frame)

    def _snapshot_images(self) -> list[dict[str, Any]]:
        """Every table's whole content as snapshot table records (call right after a commit)."""
        for table in self.tables.values():
            if table.dirty:
                raise RuntimeError(f"snapshot with uncommitted changes in table {table.name!r}")
        if self._dropped:
            raise RuntimeError(f"snapshot with uncommitted drop of table {self._dropped[0]['table']!r}")
        images: list[dict[str, Any]] = []
        for table in self.tables.values():
            images.append(self._table_out(table, list(table.data), list(table.data.values()), []))
        for name, pending in self._pending.items():  # tables not used by this run: kept as written
            groups: dict[tuple[str, int], dict[Any, Any]] = {}
            for key, (shape, version, raw) in pending.items():
                groups.setdefault((shape, version), {})[key] = raw
            for (shape, version), values in groups.items():
                images.append({"table": name, "shape": shape, "version": version, "set": values, "deleted": []})
        return images

    def snapshot(self) -> None:
        """Write the whole state as a new snapshot and start an empty log (call right after a commit)."""
        if self.directory is None:
            return
        images = self._snapshot_images()
        generation = self._generation + 1
        body = self._encoder.encode(
            {"format": FORMAT_VERSION, "generation": generation, "commits": self.commits, "tables": images,
             "offsets": _offsets_out(self.offsets), "meta": self.meta})
        new_log = open(self._log_path(generation), "wb")
        new_log.write(_file_header())
        new_log.flush()
        self._write_snapshot_file(body)  # the atomic switch: from here on the new generation is live
        old = self._log
        old_path = self._log_path(self._generation)
        self._log, self._log_size, self._generation = new_log, new_log.tell(), generation
        if old is not None:
            old.close()
        old_path.unlink(missing_ok=True)

    def _write_snapshot_file(self, body: bytes) -> None:
        tmp = self._snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(_file_header())
            fh.write(_frame(body))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._snapshot_path)
        if self.fsync:
            assert self.directory is not None
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# -- format 0 (pickled) reader ------------------------------------------------------------------------------
_DELETED_MARK = object()  # format 0's tombstone, read as this sentinel


class _LegacyObject:
    """A format-0 pickled instance, read as the plain map of its fields (never as the live class)."""

    cls_name = "?"
    fields: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        fields: dict[str, Any] = {}
        parts = state if isinstance(state, tuple) else (state,)  # (__dict__ or None, __slots__ values or None)
        for part in parts:
            if isinstance(part, dict):
                fields.update(part)
            elif part is not None:
                raise StateFormatError(f"format-0 state holds a {self.cls_name} without named fields")
        self.fields = fields


_LEGACY_CLASSES: dict[str, type[_LegacyObject]] = {}


def _legacy_class(name: str) -> type[_LegacyObject]:
    cls = _LEGACY_CLASSES.get(name)
    if cls is None:
        cls = _LEGACY_CLASSES[name] = type(name, (_LegacyObject,), {"cls_name": name})
    return cls


def _legacy_struct(cls: type[_LegacyObject], kwargs: dict[str, Any]) -> _LegacyObject:
    """Stands in for ``msgspec._utils.rebuild``: a Struct with keyword-only fields, as its field map."""
    obj = cls.__new__(cls)
    obj.fields = dict(kwargs)
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    """Reads what format 0 wrote, no more: plain builtins, datetime, and our plain-data classes as maps."""

    _CLASSES = {
        ("cityops.engine.context", "Decoded"), ("cityops.streams.models", "CardTap"),
        ("cityops.streams.models", "RoadReading"), ("cityops.streams.models", "HealthCardEvent"),
    }
    _SAFE = {
        ("datetime", "datetime"): _dt.datetime, ("datetime", "timezone"): _dt.timezone,
        ("datetime", "timedelta"): _dt.timedelta, ("datetime", "date"): _dt.date,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "bytearray"): bytearray,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("cityops.engine.state", "_DELETED_MARK"):
            return _DELETED_MARK
        if (module, name) == ("msgspec._utils", "rebuild"):
            return _legacy_struct
        if (module, name) in self._CLASSES:
            return _legacy_class(name)
        safe = self._SAFE.get((module, name))
        if safe is not None:
            return safe
        raise StateFormatError(f"format-0 state holds {module}.{name}, which this release does not convert: "
                               "run the previous release to drain it, or move CITYOPS_DATA_DIR aside")


def _plain0(value: Any) -> Any:
    """A format-0 value as plain data: tuples and sets as lists, stored objects as maps of their fields."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, _dt.datetime)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain0(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain0(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain0(v) for k, v in value.items()}
    if isinstance(value, _LegacyObject):
        return {k: _plain0(v) for k, v in value.fields.items()}
    raise StateFormatError(f"format-0 state holds a {type(value).__name__}, which has no plain form")


def _loads0(raw: bytes, where: Path) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(raw)).load()
    except StateFormatError:
        raise
    except Exception as exc:
        raise StateFormatError(f"{where} is not readable format-0 state ({type(exc).__name__}: {exc}): restore "
                               "a backup of CITYOPS_DATA_DIR or move it aside to start empty") from None


def _read_format0(directory: Path) -> tuple[int, dict[str, dict[Any, Any]], dict[tuple[str, int], int],
                                             dict[str, Any], int]:
    """(generation, tables, offsets, meta, commits) of a format-0 directory, exactly as it would have restored."""
    snap_path = directory / "state.snapshot"
    gen, commits = 0, 0
    tables: dict[str, dict[Any, Any]] = {}
    offsets: dict[tuple[str, int], int] = {}
    meta: dict[str, Any] = {}
    if snap_path.exists():
        snap = _loads0(snap_path.read_bytes(), snap_path)
        gen, tables, offsets, meta = snap["generation"], snap["tables"], snap["offsets"], snap["meta"]
        commits = snap.get("commits", 0)
    log_path = directory / f"state.{gen}.log"
    if log_path.exists():
        raw = log_path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(raw):
            length, crc = _HEADER.unpack_from(raw, pos)
            payload = raw[pos + _HEADER.size : pos + _HEADER.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break  # torn tail, as format 0 itself read it
            record = _loads0(payload, log_path)
            for name, changes in record["tables"].items():
                data = tables.setdefault(name, {})
                for key, value in changes.items():
                    if value is _DELETED_MARK:
                        data.pop(key, None)
                    else:
                        data[key] = value
            offsets.update(record["offsets"])
            meta = record["meta"]
            commits += 1
            pos += _HEADER.size + length
    return gen, tables, offsets, meta, commits
