"""Engine state kept in Kafka: the commit log and its snapshots on a partition of ``cityops.state``.

Why: with state only in ``CITYOPS_DATA_DIR`` the loss of one machine or disk loses 24 h of dedup, KPI
windows, rule state and outboxes. Here every commit of ``StateStore`` (table changes *together with* the input
offsets they cover, exactly the local log record) is produced to the task's state partition with
``acks=all``; a worker with an empty data directory restores from Kafka alone. No Kafka transactions,
compaction or DeleteRecords are needed (the test broker, Tansu, has none of them).

Tasks. Each task (a set of streams sharing engine state: ``StreamFactory.task``) has its own topic
``cityops.state.<task>`` with one partition (``state_topic``); ``cityops.ha`` decides which worker runs it.

Records. Each Kafka message on the partition is one *chunk* (MessagePack ``_Chunk``): a logical record
(a commit, a snapshot, a claim, a hand-over) is split into chunks below ``chunk_bytes`` (Kafka's message size limit);
it is complete when all its ``count`` chunks of one ``(kind, epoch, seq)`` were read (a retried produce may
repeat a chunk: it is the same chunk). A commit or snapshot cut short by a crash never completes and so
never happened, like a torn tail of the local log.

Finding the start without compaction. Every chunk carries ``base``, the offset of the first chunk of the
latest complete snapshot valid when it was written (-1: none yet, read from the log start), and ``claim``,
the offset of its writer's claim. A restore reads the last record and starts at its ``base`` — unless a
newer claim follows its writer's claim (that writer was fenced, and its base may be a snapshot nobody
applies): then at the base the newest claim names (``_restore_start``). From there it reads forward to
the end, applying only valid records.

Ownership with fencing. A worker claims the task by producing a claim record with ``epoch`` = the highest
epoch it has read + 1. A claim is valid when its epoch is higher than every claim before it in the
partition; every reader applies only commits and snapshots whose epoch is that of the latest valid claim.
The writer checks each commit as it lands: if anything else was written between its previous record and
this one, it reads that gap back; a newer claim there means it is fenced (``Fenced``): it writes nothing
more and releases nothing of that commit (no acks, no outputs). Since ``commit()`` returns only after that
check, everything the runtime delivers comes from commits read back as valid.

Standbys and hand-over. ``restore()`` without ``claim()`` and then ``tail()`` keeps a warm copy of the state
(a standby); ``claim()`` later makes it the writer. A writer that stops cleanly writes a hand-over record
after its final commit (``handover()``): a standby that sees it knows that commit is the last one, and one
whose owner wrote very recently waits briefly for it before claiming (``await_handover``).

Fault injection (tests): ``CITYOPS_FAULT_KILL_AT=point[@n]`` kills the process with SIGKILL the n-th time
(default 1st) it passes ``point``: ``snapshot-chunk`` (after the first chunk of a snapshot),
``commit-produced`` (a commit is in Kafka but not yet checked or acknowledged), ``claim-produced``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from cityops.engine.codec import StateFormatError
from cityops.engine.state import FORMAT_VERSION, StateStore, _offsets_out, _record_decoder, _snapshot_decoder

__all__ = ["STATE_TOPIC", "Fenced", "KafkaStateStore", "StateUnavailable"]

log = logging.getLogger("cityops.state.kafka")

STATE_TOPIC = "cityops.state"
CLAIM, COMMIT, SNAPSHOT, HANDOVER = "claim", "commit", "snapshot", "handover"


def state_topic(task: str | None) -> str:
    """The state topic of ``task`` (``cityops.state.<task>``, one partition); None: ``cityops.state``.

    A topic per task rather than a partition per task: the tasks come from the installed plugins, and a
    plugin installed later must not move an existing task's state to another partition.
    """
    return STATE_TOPIC if task is None else f"{STATE_TOPIC}.{task}"


class StateUnavailable(RuntimeError):
    """A commit could not be written to cityops.state in time: its changes are taken from the tables, so the
    worker must stop (nothing of it released) and restore from Kafka at its next start."""


class Fenced(RuntimeError):
    """Another worker claimed this task with a newer epoch: this one must not write or deliver anything more."""


class _Chunk(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    format: int
    kind: str  # claim | commit | snapshot | handover
    epoch: int
    seq: int  # commit: its sequence number; snapshot and handover: the last commit it covers; claim: 0
    index: int
    count: int
    base: int  # offset of the first chunk of the latest complete valid snapshot; -1 = none
    claim: int  # offset of the writer's claim record; -1 for the claim itself
    owner: str
    data: bytes


_chunk_decoder = msgspec.msgpack.Decoder(_Chunk)
_chunk_encoder = msgspec.msgpack.Encoder()

_fault_counts: dict[str, int] = {}


def fault_point(point: str) -> None:
    """Test hook: SIGKILL this process here if ``CITYOPS_FAULT_KILL_AT`` names ``point`` (see module doc)."""
    spec = os.environ.get("CITYOPS_FAULT_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if _fault_counts[point] >= int(nth or 1):
        log.warning("fault injection: killing the process at %s", point)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


class _Reader:
    """Applies a state partition's records in order with the fencing rules; fills a ``StateStore``."""

    def __init__(self, store: "KafkaStateStore") -> None:
        self.store = store
        self.epoch = -1  # epoch of the latest valid claim seen
        self.owner = ""
        self.claim_offset = -1
        self.max_epoch = -1  # highest epoch in any claim seen (valid or not)
        self.applied_seq = -1  # last commit applied (or covered by the loaded snapshot)
        self.base = -1  # first offset of the latest complete valid snapshot
        self.partial: dict[tuple[str, int, int], dict[int, bytes]] = {}
        self.first: dict[tuple[str, int, int], int] = {}  # offset of a logical record's first chunk seen
        self.need_snapshot_at: int | None = None  # restore from a snapshot: load it before any commit
        self.claims: list[tuple[int, int, str]] = []  # (offset, epoch, owner) of claims read
        self.handover_offset = -1  # the current owner's hand-over record (it stopped cleanly); -1: none
        self.owner_seen_ms: int | None = None  # Kafka timestamp of the current owner's latest valid record
        self.last_claim_handed_over = False  # the latest valid claim followed a hand-over of the owner before

    def feed(self, offset: int, raw: bytes, ts_ms: int | None = None) -> tuple[str, _Chunk] | None:
        """One message (``ts_ms``: its Kafka timestamp); returns (kind, last chunk) when it completes a valid
        logical record."""
        got = self._feed(offset, raw)
        if got is not None and ts_ms is not None:
            self.owner_seen_ms = ts_ms  # the owner was alive when it wrote this
        return got

    def _feed(self, offset: int, raw: bytes) -> tuple[str, _Chunk] | None:
        try:
            ch = _chunk_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise StateFormatError(f"{STATE_TOPIC} record at offset {offset} is not a cityops state chunk "
                                   f"({exc})") from None
        if ch.format != FORMAT_VERSION:
            raise StateFormatError(f"{STATE_TOPIC} offset {offset} has state format {ch.format}; this release "
                                   f"reads format {FORMAT_VERSION}: run a release that reads format {ch.format}")
        if ch.kind == CLAIM:
            self.max_epoch = max(self.max_epoch, ch.epoch)
            self.claims.append((offset, ch.epoch, ch.owner))
            if ch.epoch > self.epoch:
                self.last_claim_handed_over = self.handover_offset >= 0
                self.epoch, self.owner, self.claim_offset = ch.epoch, ch.owner, offset
                self.handover_offset = -1
                return CLAIM, ch
            return None
        if self.epoch == -1 and ch.kind == SNAPSHOT and offset == self.need_snapshot_at:
            # Restore starting at a snapshot: the claim that made its epoch current lies before it.
            self.epoch, self.owner = ch.epoch, ch.owner
            self.max_epoch = max(self.max_epoch, ch.epoch)
        if ch.epoch != self.epoch or ch.owner != self.owner:
            return None  # a fenced writer's record (or one of an invalid claim): never happened
        if ch.kind == HANDOVER:
            # The owner stopped cleanly after its last commit (``seq``): the task is free to be claimed.
            self.handover_offset = offset
            return HANDOVER, ch
        key = (ch.kind, ch.epoch, ch.seq)
        parts = self.partial.setdefault(key, {})
        if not parts:
            self.first[key] = offset
        parts[ch.index] = ch.data
        if len(parts) < ch.count:
            return None
        data = b"".join(parts[i] for i in range(ch.count))
        first = self.first.pop(key)
        del self.partial[key]
        # Chunks of records that can no longer complete (torn by a crash) are dropped with them.
        for k in [k for k in self.partial if k[0] == ch.kind and k[2] <= ch.seq]:
            self.partial.pop(k, None)
            self.first.pop(k, None)
        if ch.kind == SNAPSHOT:
            if self.need_snapshot_at is not None and first == self.need_snapshot_at:
                self.store._load_snapshot(data)
                self.need_snapshot_at = None
            # (a later snapshot holds what the commits before it built: nothing to apply)
            self.applied_seq = max(self.applied_seq, ch.seq)
            self.base = first
            self.store._last_snapshot_bytes = len(data)
            return SNAPSHOT, ch
        if self.need_snapshot_at is not None:
            return None  # a commit before the snapshot we start from is already in it
        if ch.seq <= self.applied_seq:
            return None  # a repeat
        self.store._apply_commit(data)
        self.applied_seq = ch.seq
        return COMMIT, ch


class KafkaStateStore(StateStore):
    """A ``StateStore`` whose commit log and snapshots live on partition ``partition`` of ``cityops.state``.

    ``bootstrap``/``security``: kafka-python client arguments. ``chunk_bytes``: largest message written
    (below the topic's ``max.message.bytes``). ``snapshot_bytes``: after this many bytes of commits a
    snapshot is written, bounding what a cold restore reads. ``directory`` is not used for state (the data
    directory is only a cache; nothing is restored from it). ``open()`` restores and claims the task;
    ``commit()`` raises ``Fenced`` once another worker claimed it.
    """

    def __init__(self, bootstrap: str, *, partition: int = 0, topic: str = STATE_TOPIC,
                 security: Mapping[str, Any] | None = None, chunk_bytes: int = 512 << 10,
                 snapshot_bytes: int = 64 << 20, owner: str | None = None, timeout_s: float = 30.0) -> None:
        super().__init__(None, snapshot_bytes=snapshot_bytes, fsync=False)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.security = dict(security or {})
        self.chunk_bytes = chunk_bytes
        self.owner = owner or uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.epoch = -1
        self.claim_offset = -1
        self.base = -1
        self.last_offset = -1  # offset of the last record this store read or wrote
        self._since_snapshot = 0
        self._last_snapshot_bytes = 0
        self._broken: str | None = None
        self.bytes_written = 0
        self.restore_s = 0.0
        self.restored_records = 0
        self._producer: Any = None
        self._consumer: Any = None
        self._tp: Any = None
        self._tailing = False  # the consumer's position is last_offset + 1 (tail), not after a range read
        self._admin: Any = None  # for DeleteRecords (``_trim``), made on first use
        self._trim_refused = False
        self.trimmed_before = 0  # the log start this store asked for (DeleteRecords), 0: none

    # -- clients -------------------------------------------------------------------------------------
    def _clients(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self._tp = TopicPartition(self.topic, self.partition)
        self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                       auto_offset_reset="earliest", max_partition_fetch_bytes=self.chunk_bytes * 4 + (1 << 20),
                                       fetch_max_bytes=64 << 20, **self.security)
        self._consumer.assign([self._tp])
        # acks=all and one request in flight: chunks land in order, and a produce returns only once the
        # record is replicated.
        self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                       max_in_flight_requests_per_connection=1, retries=5,
                                       max_request_size=max(4 << 20, 2 * self.chunk_bytes) + (64 << 10),
                                       linger_ms=2, batch_size=max(4 << 20, 2 * self.chunk_bytes),
                                       max_block_ms=int(self.timeout_s * 1000), **self.security)

    def _read(self, start: int, end: int, reader: _Reader) -> None:
        """Feed records [start, end) of the partition to ``reader``."""
        self._tailing = False
        if start >= end:
            return
        consumer = self._consumer
        consumer.seek(self._tp, start)
        deadline = time.monotonic() + self.timeout_s
        pos = start
        while pos < end:
            got = consumer.poll(timeout_ms=500, max_records=10_000)
            for rec in got.get(self._tp, ()):
                if rec.offset >= end:
                    pos = end
                    break
                reader.feed(rec.offset, rec.value, rec.timestamp)
                self.restored_records += 1
                pos = rec.offset + 1
                deadline = time.monotonic() + self.timeout_s
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic}[{self.partition}] stalled at offset {pos} (end {end})")
        self.last_offset = max(self.last_offset, end - 1)

    def _record_at(self, offset: int) -> _Chunk:
        self._tailing = False
        consumer = self._consumer
        consumer.seek(self._tp, offset)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for rec in consumer.poll(timeout_ms=500, max_records=1).get(self._tp, ()):
                return _chunk_decoder.decode(rec.value)
        raise TimeoutError(f"no record at {self.topic}[{self.partition}] offset {offset}")

    # -- restore ---------------------------------------------------------------------------------------
    def open(self) -> "KafkaStateStore":
        """Restore the task's state from its partition, then claim it (epoch = highest seen + 1).

        Raises ``Fenced`` if another worker's claim lands first; ``StateFormatError`` for records this
        release cannot read.
        """
        self.restore()
        self.claim()
        return self

    def restore(self) -> "KafkaStateStore":
        """Read the partition from its latest complete valid snapshot to the end, without claiming: the
        start of an active worker (``claim`` next) and of a warm standby (``tail`` next)."""
        t0 = time.perf_counter()
        self._clients()
        start = self._consumer.beginning_offsets([self._tp])[self._tp]
        end = self._consumer.end_offsets([self._tp])[self._tp]
        reader = _Reader(self)
        if end > start:
            begin = self._restore_start(start, end)
            if begin > start:
                reader.need_snapshot_at = begin
            self._read(begin, end, reader)
        self.restore_s = time.perf_counter() - t0
        self._reader = reader
        log.info("state restored from %s[%d] records=%d commits=%d in %.2fs", self.topic, self.partition,
                 self.restored_records, self.commits, self.restore_s)
        return self

    def claim(self) -> None:
        """Claim the task: a claim record with epoch = the highest epoch read + 1, read back as valid.

        Everything that landed before the claim (the previous owner's last commits, a standby's lag) is
        applied first. Raises ``Fenced`` when another worker's claim lands before ours.
        """
        t0 = time.perf_counter()
        self._claim()
        log.info("state claimed %s[%d] epoch=%d base=%d commits=%d after=%s in %.2fs", self.topic,
                 self.partition, self.epoch, self.base, self.commits,
                 "hand-over" if self._reader.last_claim_handed_over else
                 ("no owner" if self.epoch == 0 else "owner lost"), time.perf_counter() - t0)

    def tail(self, timeout_s: float = 0.5) -> int:
        """A standby's step: apply what landed on the partition since the last read (at most ``timeout_s``
        waiting for it); returns the records read. The state stays what a restore at that offset gives."""
        if not self._tailing:
            # A read of a range may have fetched past its end: go on from the last record applied.
            self._consumer.seek(self._tp, self.last_offset + 1)
            self._tailing = True
        got = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=10_000)
        n = 0
        for rec in got.get(self._tp, ()):
            self._reader.feed(rec.offset, rec.value, rec.timestamp)
            self.last_offset = rec.offset
            n += 1
        self.restored_records += n
        return n

    def lag(self) -> int:
        """Records on the partition not read yet (a standby's lag; 0 when caught up)."""
        end = self._consumer.end_offsets([self._tp])[self._tp]
        return max(0, end - (self.last_offset + 1))

    def standby_status(self) -> dict[str, Any]:
        """What a standby knows of the task: the owner's epoch, whether it handed over, commits applied."""
        r = self._reader
        return {"epoch": r.epoch, "owner": r.owner, "handed_over": r.handover_offset >= 0,
                "commits": self.commits, "offset": self.last_offset,
                "owner_seen_s_ago": None if r.owner_seen_ms is None else round(time.time() - r.owner_seen_ms / 1000, 1)}

    def await_handover(self, alive_s: float, wait_s: float) -> str:
        """Before a standby claims: if the owner wrote within ``alive_s`` seconds it is probably stopping
        cleanly (its final commit and hand-over come within a commit interval): tail up to ``wait_s`` for
        its hand-over, so the claim follows it instead of fencing that final commit. An owner silent for
        longer (killed, paused, gone) is not waited for. Returns "handed over", "owner silent" or "waited"."""
        r = self._reader
        deadline = time.monotonic() + wait_s
        while r.handover_offset < 0:
            if r.epoch < 0 or r.owner_seen_ms is None or time.time() - r.owner_seen_ms / 1000 > alive_s:
                return "owner silent"
            if time.monotonic() >= deadline:
                return "waited"
            self.tail(0.1)
        return "handed over"

    def handover(self) -> None:
        """After the final commit of a clean stop: a hand-over record tells standbys the owner is gone and
        its last commit is final. Best effort: a claim needs none (a lost owner is fenced all the same)."""
        if self._broken is not None or self.epoch < 0 or self._producer is None:
            return
        try:
            landed = self._produce(HANDOVER, self.commits, b"")
            self._check_landed(landed)
        except Fenced as exc:
            log.warning("no hand-over: %s", exc)
            return
        except Exception as exc:  # the next owner claims without it
            log.warning("hand-over not written to %s[%d]: %s: %s", self.topic, self.partition,
                        type(exc).__name__, exc)
            return
        log.info("state handed over %s[%d] epoch=%d commits=%d offset=%d", self.topic, self.partition,
                 self.epoch, self.commits, landed[0])

    def _restore_start(self, start: int, end: int) -> int:
        """Where a restore starts reading: the latest complete valid snapshot (or the log start).

        The last record names its writer's claim and that writer's base snapshot. If no newer claim follows
        that claim, its base is valid. Otherwise the writer was fenced: the newest valid claim after it
        names the base its claimer restored from (every claim of a higher epoch lies after the claims its
        claimer read, so it is found after the last record's claim).
        """
        last = self._record_at(end - 1)
        claim_at = end - 1 if last.kind == CLAIM else last.claim
        base = last.base
        if claim_at >= start:
            scan = _ClaimScan()
            self._scan_claims(claim_at, end, scan)
            if scan.newest is not None and scan.newest[1] > last.epoch:
                base = scan.newest[2]  # the last record's writer was fenced: start where its successor did
        return base if base >= start else start

    def _scan_claims(self, begin: int, end: int, scan: "_ClaimScan") -> None:
        self._tailing = False
        consumer = self._consumer
        consumer.seek(self._tp, begin)
        pos = begin
        deadline = time.monotonic() + self.timeout_s
        while pos < end:
            for rec in consumer.poll(timeout_ms=500, max_records=10_000).get(self._tp, ()):
                if rec.offset >= end:
                    pos = end
                    break
                ch = _chunk_decoder.decode(rec.value)
                if ch.kind == CLAIM:
                    scan.add(rec.offset, ch)
                pos = rec.offset + 1
                deadline = time.monotonic() + self.timeout_s
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {self.topic}[{self.partition}] stalled at offset {pos}")

    def _load_snapshot(self, payload: bytes) -> None:
        snap = _snapshot_decoder.decode(payload)
        if snap.format != FORMAT_VERSION:
            self._check_format(snap.format, Path(f"{self.topic}[{self.partition}]"))
        self._pending = {}
        self.tables = {}
        self.commits = snap.commits
        self.offsets = {(o.topic, o.partition): o.offset for o in snap.offsets}
        self.meta = snap.meta
        self._apply(snap.tables)

    def _apply_commit(self, payload: bytes) -> None:
        record = _record_decoder.decode(payload)
        if record.format != FORMAT_VERSION:
            self._check_format(record.format, Path(f"{self.topic}[{self.partition}]"))
        self._apply(record.tables)
        self.offsets.update({(o.topic, o.partition): o.offset for o in record.offsets})
        self.meta = record.meta
        self.commits += 1

    # -- writing ---------------------------------------------------------------------------------------
    def _produce(self, kind: str, seq: int, data: bytes, point: str | None = None) -> list[int]:
        """Produce one logical record as chunks (acks=all); returns their offsets."""
        n = max(1, -(-len(data) // self.chunk_bytes))
        futures = []
        for i in range(n):
            ch = _Chunk(format=FORMAT_VERSION, kind=kind, epoch=self.epoch, seq=seq, index=i, count=n,
                        base=self.base, claim=self.claim_offset, owner=self.owner,
                        data=data[i * self.chunk_bytes:(i + 1) * self.chunk_bytes])
            raw = _chunk_encoder.encode(ch)
            self.bytes_written += len(raw)
            futures.append(self._producer.send(self.topic, value=raw, partition=self.partition))
            if point is not None and i == 0 and n > 1:
                self._producer.flush(timeout=self.timeout_s)
                fault_point(point)
        self._producer.flush(timeout=self.timeout_s)
        return [f.get(timeout=self.timeout_s).offset for f in futures]

    def _produce_retrying(self, kind: str, seq: int, data: bytes) -> list[int]:
        """``_produce`` the same logical record again until it lands (a repeat of a chunk or of the whole
        record is the same record to a reader), for at most ``timeout_s``; then ``StateUnavailable``, and
        this store writes nothing more (the changes were taken from the tables)."""
        if self._broken is not None:
            raise StateUnavailable(self._broken)
        deadline = time.monotonic() + self.timeout_s
        delay = 0.2
        while True:
            try:
                return self._produce(kind, seq, data)
            except Exception as exc:  # kafka errors, timeouts: the record may or may not have landed
                if time.monotonic() + delay > deadline:
                    self._broken = (f"{kind} {seq} not written to {self.topic}[{self.partition}] within "
                                    f"{self.timeout_s:g}s: {type(exc).__name__}: {exc}")
                    raise StateUnavailable(self._broken) from exc
                log.warning("writing %s %d to %s[%d] failed (%s: %s); retrying in %.1fs", kind, seq, self.topic,
                            self.partition, type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _check_landed(self, offsets: list[int]) -> None:
        """Read back what others wrote between our last record and ``offsets``: a newer claim fences us."""
        expected = self.last_offset + 1
        lo, hi = min(offsets), max(offsets)
        mine = set(offsets)
        if lo == expected and hi - lo + 1 == len(offsets):
            self.last_offset = hi
            return  # nothing else landed in between: our record follows our last one
        scan = _ClaimScan()
        self._scan_claims(expected, hi + 1, scan)
        for off, epoch, owner, _base in scan.all:
            if off not in mine and epoch > self.epoch:
                raise Fenced(f"task {self.topic}[{self.partition}] was claimed by worker {owner} with epoch "
                             f"{epoch} (ours {self.epoch}) at offset {off}")
        self.last_offset = hi

    def _claim(self) -> None:
        reader = self._reader
        self.epoch = reader.max_epoch + 1
        self.claim_offset = -1
        self.base = reader.base
        end_before = self.last_offset + 1
        (offset,) = self._produce(CLAIM, 0, b"")
        fault_point("claim-produced")
        # Commits the previous owner landed before our claim are valid: read them in, then judge our claim.
        self._read(end_before, offset + 1, reader)
        if reader.claim_offset != offset:
            raise Fenced(f"task {self.topic}[{self.partition}]: our claim (epoch {self.epoch}) at offset {offset} "
                         f"lost to worker {reader.owner} (epoch {reader.epoch})")
        self.claim_offset = offset
        self.last_offset = offset
        self.base = reader.base
        self._since_snapshot = 0

    def commit(self, offsets: dict[tuple[str, int], int]) -> int:
        """Produce every table change since the last commit with ``offsets`` (acks=all), check that it landed
        under our claim; returns bytes written. Raises ``Fenced`` (nothing of this commit may be released)."""
        self.offsets.update(offsets)
        changes: list[dict[str, Any]] = self._take_drops()  # first: a table declared again starts empty
        for table in self.tables.values():
            if table.dirty:
                keys, values, deleted = table.take_changes()
                changes.append(self._table_out(table, keys, values, deleted))
        self.commits += 1
        payload = self._encoder.encode(
            {"format": FORMAT_VERSION, "tables": changes, "offsets": _offsets_out(offsets), "meta": self.meta})
        before = self.bytes_written
        landed = self._produce_retrying(COMMIT, self.commits, payload)
        fault_point("commit-produced")
        self._check_landed(landed)
        self._since_snapshot += len(payload)
        # A snapshot once the commits since the last one outweigh it (and ``snapshot_bytes``): a restore reads
        # at most about twice the state, and writing snapshots costs at most what writing commits costs.
        if self._since_snapshot > max(self.snapshot_bytes, self._last_snapshot_bytes):
            self.snapshot()
        return self.bytes_written - before

    def snapshot(self) -> None:
        """Write the whole state as a snapshot (chunks); later records name it as their base."""
        images = self._snapshot_images()
        body = self._encoder.encode(
            {"format": FORMAT_VERSION, "generation": 0, "commits": self.commits, "tables": images,
             "offsets": _offsets_out(self.offsets), "meta": self.meta})
        if self._broken is not None:
            raise StateUnavailable(self._broken)
        try:
            landed = self._produce(SNAPSHOT, self.commits, body, point="snapshot-chunk")
        except Exception as exc:  # an incomplete snapshot is never applied; the commits before it hold all
            log.warning("snapshot not written to %s[%d] (%s: %s); the next commit tries again", self.topic,
                        self.partition, type(exc).__name__, exc)
            return
        self._check_landed(landed)
        previous, self.base = self.base, min(landed)
        self._since_snapshot = 0
        self._last_snapshot_bytes = len(body)
        self._trim(previous)
        log.info("state snapshot at %s[%d] offset=%d chunks=%d bytes=%d", self.topic, self.partition,
                 self.base, len(landed), len(body))

    def _trim(self, before: int) -> None:
        """On a broker with DeleteRecords: drop the history before ``before``, the snapshot preceding the one
        just written (a restore starts at the latest one; the one before stays, so a restore that read the
        previous ``base`` just before this snapshot landed still finds it). A broker without DeleteRecords
        (Tansu) keeps everything: logged once, nothing else changes."""
        if before <= 0 or self._trim_refused:
            return
        try:
            from cityops.topics import admin_client

            if self._admin is None:  # (bounded: kafka-python's bootstrap can wait without end)
                self._admin = admin_client(self.bootstrap, self.security, self.timeout_s)
            self._admin.delete_records({self._tp: before}, timeout_ms=int(self.timeout_s * 1000))
            self.trimmed_before = before
            log.info("state history of %s[%d] before offset %d deleted", self.topic, self.partition, before)
        except Exception as exc:
            self._trim_refused = True
            log.warning("state history of %s[%d] is kept whole: DeleteRecords failed (%s: %s); restores read from "
                        "the latest snapshot all the same", self.topic, self.partition, type(exc).__name__, exc)

    def close(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # (closing a client that failed)
                pass
            self._admin = None
        if self._producer is not None:
            try:
                self._producer.flush(timeout=self.timeout_s)
            except Exception as exc:  # what did not land is not committed: the next start restores without it
                log.warning("closing the state producer: %s: %s", type(exc).__name__, exc)
            try:
                self._producer.close(timeout=0 if self._broken else self.timeout_s)
            except Exception as exc:  # (kafka-python's close raises when records are still queued)
                log.warning("closing the state producer: %s: %s", type(exc).__name__, exc)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class _ClaimScan:
    """Claims seen in a range: all of them, and the newest valid one (offset, epoch, base)."""

    def __init__(self) -> None:
        self.all: list[tuple[int, int, str, int]] = []
        self.newest: tuple[int, int, int] | None = None

    def add(self, offset: int, ch: _Chunk) -> None:
        self.all.append((offset, ch.epoch, ch.owner, ch.base))
        if self.newest is None or ch.epoch > self.newest[1]:
            self.newest = (offset, ch.epoch, ch.base)
