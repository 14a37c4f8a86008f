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
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_HEADER = struct.Struct(">II")  # payload length, crc32
_DELETED = object()


class Table(Generic[K, V]):
    """A dict whose writes are tracked so the next commit persists exactly what changed.

    Values are owned by the table: after mutating a stored value in place, call ``mark(key)``.
    """

    __slots__ = ("name", "data", "dirty", "fresh")

    def __init__(self, name: str) -> None:
        self.name = name
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

    def take_changes(self) -> dict[K, Any]:
        data = self.data
        changes = {k: data.get(k, _DELETED) for k in self.dirty}
        self.dirty = set()
        self.fresh = set()
        return changes


class StateStore:
    """Named tables plus input offsets, persisted as snapshot + append-only commit log in ``directory``.

    ``snapshot_bytes``: once the log exceeds this size (default 64 MiB) the next commit compacts it.
    ``fsync``: flush commits to stable storage (default True; tests of pure logic may turn it off).
    """

    def __init__(self, directory: Path | None, *, snapshot_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.directory = directory
        self.snapshot_bytes = snapshot_bytes
        self.fsync = fsync
        self.tables: dict[str, Table[Any, Any]] = {}
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset applied
        self.meta: dict[str, Any] = {}  # small scalars (watermarks, sequence numbers), always committed whole
        self.commits = 0
        self._log: Any = None
        self._log_size = 0
        self._generation = 0
        self._loaded: dict[str, dict[Any, Any]] = {}

    # -- tables -------------------------------------------------------------------------------------
    def table(self, name: str) -> Table[Any, Any]:
        """The table called ``name``, created (and filled from disk, if recovered) on first use."""
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = Table(name)
            table.data.update(self._loaded.pop(name, {}))
        return table

    # -- persistence ---------------------------------------------------------------------------------
    @property
    def _snapshot_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "state.snapshot"

    def _log_path(self, generation: int) -> Path:
        assert self.directory is not None
        return self.directory / f"state.{generation}.log"

    def open(self) -> "StateStore":
        """Load the snapshot and replay the complete records of its log; ready for commits."""
        if self.directory is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        tables: dict[str, dict[Any, Any]] = {}
        if self._snapshot_path.exists():
            snap = pickle.loads(self._snapshot_path.read_bytes())
            self._generation = snap["generation"]
            tables = snap["tables"]
            self.offsets = snap["offsets"]
            self.meta = snap["meta"]
            self.commits = snap.get("commits", 0)
        log_path = self._log_path(self._generation)
        good = 0
        if log_path.exists():
            raw = log_path.read_bytes()
            pos = 0
            while pos + _HEADER.size <= len(raw):
                length, crc = _HEADER.unpack_from(raw, pos)
                payload = raw[pos + _HEADER.size : pos + _HEADER.size + length]
                if len(payload) != length or zlib.crc32(payload) != crc:
                    break  # torn tail of a commit that never completed: it never happened
                record = pickle.loads(payload)
                for name, changes in record["tables"].items():
                    data = tables.setdefault(name, {})
                    for key, value in changes.items():
                        if value is _DELETED_MARK:
                            data.pop(key, None)
                        else:
                            data[key] = value
                self.offsets.update(record["offsets"])
                self.meta = record["meta"]
                self.commits += 1
                pos += _HEADER.size + length
            good = pos
            if good != len(raw):
                with open(log_path, "r+b") as fh:
                    fh.truncate(good)
        for name, data in tables.items():
            if name in self.tables:
                self.tables[name].data.update(data)
            else:
                self._loaded[name] = data
        self._log = open(log_path, "ab")
        self._log_size = good
        # Drop logs of older generations left by a crash between snapshot rename and log cleanup.
        for old in self.directory.glob("state.*.log"):
            if old != log_path:
                old.unlink(missing_ok=True)
        return self

    def commit(self, offsets: dict[tuple[str, int], int]) -> int:
        """Persist every table change since the last commit together with ``offsets``; returns bytes written."""
        self.offsets.update(offsets)
        changes: dict[str, dict[Any, Any]] = {}
        for name, table in self.tables.items():
            if table.dirty:
                ch = table.take_changes()
                changes[name] = {k: (_DELETED_MARK if v is _DELETED else v) for k, v in ch.items()}
        self.commits += 1
        if self.directory is None:
            return 0
        payload = pickle.dumps(
            {"tables": changes, "offsets": dict(offsets), "meta": self.meta}, protocol=pickle.HIGHEST_PROTOCOL
        )
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        self._log.write(frame)
        self._log.flush()
        if self.fsync:
            os.fsync(self._log.fileno())
        self._log_size += len(frame)
        if self._log_size > self.snapshot_bytes:
            self.snapshot()
        return len(frame)

    def snapshot(self) -> None:
        """Write the whole state as a new snapshot and start an empty log (call right after a commit)."""
        if self.directory is None:
            return
        for table in self.tables.values():
            if table.dirty:
                raise RuntimeError(f"snapshot with uncommitted changes in table {table.name!r}")
        tables = {name: t.data for name, t in self.tables.items()}
        tables.update(self._loaded)
        generation = self._generation + 1
        body = pickle.dumps(
            {"generation": generation, "tables": tables, "offsets": self.offsets, "meta": self.meta,
             "commits": self.commits},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        tmp = self._snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        new_log = open(self._log_path(generation), "wb")
        os.replace(tmp, self._snapshot_path)  # the atomic switch: from here on the new generation is live
        if self.fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        old = self._log
        old_path = self._log_path(self._generation)
        self._log, self._log_size, self._generation = new_log, 0, generation
        old.close()
        old_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class _DeletedMark:
    """Pickle-stable tombstone for deleted keys in the log."""

    def __reduce__(self) -> str:
        return "_DELETED_MARK"


_DELETED_MARK = _DeletedMark()
