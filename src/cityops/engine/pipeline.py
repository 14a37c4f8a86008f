"""The engine: from raw message bytes to exact KPI windows, alert conditions and dead letters.

Transport-free and synchronous on purpose: the Faust agents hand it (topic, partition, offset, bytes) and
call ``checkpoint()`` on a timer. Everything it decides is a function of the input order within each
partition and of the restored state, so a replay after a crash reproduces the same result.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

import msgspec

from cityops.engine.clocks import PartitionClock, jump_for
from cityops.engine.codec import Codec, StateStruct
from cityops.engine.context import Context, Decoded, Rejected, StreamKind
from cityops.engine.state import StateStore
from cityops.engine.windows import DiscardWindows, Kpi, WindowCodec, WindowKey, Windows, outside_storable
from cityops.streams.city_streams import QUALITY, QUALITY_INDEX
from cityops.streams.times import canonical_text, rfc3339_seconds

log = logging.getLogger("cityops.engine")

DEAD_LETTER_TOPIC = "cityops.dead-letter"
# store.meta key: event time (epoch s) of the first data the engine ever committed (RuleContext.engine_start_ts).
META_ENGINE_START = "engine_start_ts"
# Event times well inside InfluxDB's range skip the exact check (windows.outside_storable): one compare.
_STORABLE_MIN_S = -9_000_000_000.0
_STORABLE_MAX_S = 9_000_000_000.0


@dataclass
class Point:
    """One InfluxDB point: a window's KPI fields (rewritten as the window fills)."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    ts: int  # epoch seconds (window start)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], int]:
        return (self.measurement, tuple(sorted(self.tags.items())), self.ts)


@dataclass
class CheckpointResult:
    points: list[Point] = field(default_factory=list)
    closed: list[WindowKey] = field(default_factory=list)
    bytes_written: int = 0


# -- durable shapes of the engine's tables (see cityops.engine.codec) ------------------------------------
class Seen(StateStruct, kw_only=True, gc=False):
    """``dedup``: an accepted event's content hash and event time (epoch s), keyed (topic, event_id)."""

    digest: bytes
    ts: float


class DeadLetter(StateStruct, kw_only=True):
    """``dlq_outbox``: a dead-lettered record awaiting delivery to the dead-letter topic (a dict in memory)."""

    stream: str
    topic: str
    partition: int
    offset: int
    index: int | None
    reason: str
    outcome: str
    raw: bytes
    element: bytes | None = None  # the rejected batch element as JSON, when known
    measurement: str | None = None  # a point a sink refused: its measurement
    id: str | None = None  # a point a sink refused: its stable dead-letter id
    path: str | None = None  # JSON Pointer of the rejected event in its message, when it is nested


class BufferedEvent(StateStruct, kw_only=True):
    """``rule_buffer``: an accepted event waiting for the rules, keyed (event time, sequence number)."""

    topic: str
    event_id: str
    ts: float
    source: str
    digest: bytes
    index: int = 0
    event: Any  # the stream's decoded event (its ``event_type``), by field name


def _seen_v0(key: Any, plain: list[Any]) -> dict[str, Any]:
    return {"digest": plain[0], "ts": plain[1]}  # format 0: (digest, event time)


SEEN_CODEC = Codec("dedup_seen", Seen, migrations={0: _seen_v0})
_DLQ_ONLY_IF_SET = ("measurement", "id", "path")  # fields only some records carry (refused points)


def _dead_letter_dict(key: Any, dl: DeadLetter) -> dict[str, Any]:
    rec = msgspec.structs.asdict(dl)
    for name in _DLQ_ONLY_IF_SET:
        if rec[name] is None:
            del rec[name]
    return rec


DEAD_LETTER_CODEC = Codec("dead_letter", DeadLetter, to_plain=lambda k, rec: DeadLetter(**rec),
                          from_plain=_dead_letter_dict, migrations={0: lambda k, v: v})
NOTIFIED_CODEC = Codec("window_start", int, migrations={0: lambda k, v: v})


def buffer_codec(event_types: dict[str, Any]) -> Codec:
    """Codec of ``rule_buffer``: (topic, Decoded) in memory; the event read back as its stream's type."""

    def out(key: Any, entry: tuple[str, Decoded]) -> BufferedEvent:
        topic, ev = entry
        return BufferedEvent(topic=topic, event_id=ev.event_id, ts=ev.ts, source=ev.source, digest=ev.digest,
                             index=ev.index, event=ev.event)

    def back(key: Any, b: BufferedEvent) -> tuple[str, Decoded]:
        typ = event_types.get(b.topic, Any)
        event = b.event if typ is Any else msgspec.convert(b.event, typ)
        return b.topic, Decoded(b.event_id, b.ts, b.source, b.digest, event, b.index)

    def v0(key: Any, plain: list[Any]) -> dict[str, Any]:
        topic, ev = plain  # format 0: (topic, Decoded as its field map)
        return {"topic": topic, **ev}

    def v1(key: Any, plain: dict[str, Any]) -> dict[str, Any]:
        # Version 1 held the city events' `ts` as a datetime; since version 2 it is the RFC 3339 text as
        # sent (cityops.streams.times parses it). An aware datetime's isoformat is that text's equal.
        event = plain.get("event")
        if isinstance(event, dict) and isinstance(event.get("ts"), datetime):
            plain = dict(plain, event=dict(event, ts=canonical_text(event["ts"].isoformat())))
        return plain

    return Codec("buffered_event", BufferedEvent, version=2, to_plain=out, from_plain=back,
                 migrations={0: v0, 1: v1})


class NullSignals:
    """Signals sink used when no alert engine is configured."""

    def signal(self, rule: str, entity: dict[str, str], ts: float, **kw: Any) -> None:
        pass


def _one_by_one(hook: Any) -> Any:
    """A run of quality calls for a rule with only the per-event hook."""

    def many(topic: str, outcome: str, items: list[tuple[float, str | None]], ctx: Any) -> None:
        for ts, source in items:
            hook(topic, outcome, ts, source, ctx)

    return many


class Engine:
    """Applies messages to durable state; ``checkpoint()`` commits and returns the points to write.

    ``now`` is the wall clock (processing-time windows and metrics only; never used for event-time logic).
    ``allowed_lateness_s``: the default allowed lateness; ``stream_lateness_s`` overrides it per topic (the food
    stream's store-and-forward uploads need days). ``max_future_s``: events dated further ahead of their Kafka
    record's timestamp are dead-lettered (reason ``future``). How every clock advances: ``cityops.engine.clocks``.
    """

    def __init__(
        self,
        store: StateStore,
        streams: Iterable[StreamKind],
        *,
        allowed_lateness_s: float = 600.0,
        stream_lateness_s: dict[str, float] | None = None,
        max_future_s: float | None = 300.0,
        dedup_horizon_s: float = 86400.0 * 1.05,
        window_s: int = 60,
        signals: Any = None,
        rules: Iterable[Any] = (),
        registry: Any = None,
        settings: Any = None,
        now: Callable[[], float] = time.time,
        on_outcome: Callable[[str, str, int], None] | None = None,
        extra_kpis: dict[str, Kpi] | None = None,
    ) -> None:
        self.store = store
        self.streams: dict[str, StreamKind] = {s.topic: s for s in streams}
        self.lateness = allowed_lateness_s
        self.lateness_of: dict[str, float] = {
            t: float((stream_lateness_s or {}).get(t, allowed_lateness_s)) for t in self.streams}
        self.jump_of: dict[str, float] = {t: jump_for(lat, window_s) for t, lat in self.lateness_of.items()}
        self.max_future_s = max_future_s
        self.dedup_horizon = dedup_horizon_s
        # Dedup entries live at least as long as the stream accepts events into windows: a duplicate of an event
        # still within lateness must not be counted twice.
        self.dedup_horizon_of: dict[str, float] = {
            t: max(dedup_horizon_s, lat + window_s) for t, lat in self.lateness_of.items()}
        self.now = now
        self.rules = list(rules)
        self.registry = registry
        self.on_outcome = on_outcome
        kpis: dict[str, Kpi] = {QUALITY.measurement: QUALITY}
        self.kpi_stream: dict[str, str | None] = {QUALITY.measurement: None}
        for s in self.streams.values():
            for name, kpi in getattr(s, "kpis", {}).items():
                kpis[name] = kpi
                self.kpi_stream[name] = s.topic
        kpis.update(extra_kpis or {})
        wc = WindowCodec(kpis)
        self.closed = store.table("closed_windows", wc.closed)  # key -> (point, accumulator): not yet confirmed written
        self.windows = Windows(store.table("windows", wc.windows), kpis, window_s, reopen=self._reopen)
        self.dedup = store.table("dedup", SEEN_CODEC)  # (topic, event_id) -> Seen
        self.dlq = store.table("dlq_outbox", DEAD_LETTER_CODEC)  # seq -> dead-letter record (DeadLetter's fields)
        event_types = {s.topic: getattr(s, "event_type", None) or getattr(s, "model", None) or Any
                       for s in self.streams.values()}
        # key (event ts, seq) -> (topic, event) not yet ruled on
        self.rule_buffer = store.table("rule_buffer", buffer_codec(event_types))
        # The buffer itself: per stream, a heap of (event time, sequence number, stream, event). Buffering and
        # releasing an event costs a push and a pop; the durable table is brought up to date once per
        # checkpoint (_sync_rule_buffer), so an event released before the next commit is never written at all.
        self._rule_heaps: dict[str, list[tuple[float, int, str, Decoded]]] = {}
        for (ts, seq), (topic, ev) in self.rule_buffer.data.items():
            self._rule_heaps.setdefault(topic, []).append((ts, seq, topic, ev))
        for rheap in self._rule_heaps.values():
            heapq.heapify(rheap)
        self._rule_released: list[tuple[float, int]] = []  # written entries released since the last commit
        self.signals = signals if signals is not None else NullSignals()
        self.ctx = Context(store=store, windows=self.windows, signals=self.signals, settings=settings)
        # Streams and rules with durable tables declare them now, so state this release cannot read stops
        # the start (StateFormatError) instead of failing at some later event.
        for part in (*self.streams.values(), *self.rules):
            restore = getattr(part, "restore", None)
            if restore is not None:
                restore(self.ctx)
        # Which stream each KPI measurement is computed from (rules keep a measurement's state on its clock).
        rule_ctx = self.ctx.rule
        rule_ctx.kpi_stream = {m: t for m, t in self.kpi_stream.items() if t is not None}
        rule_ctx.sources = getattr(registry, "registry", None)  # the RegistryGate's SourceRegistry
        rule_ctx.engine_start_ts = store.meta.get(META_ENGINE_START)
        # Late events still reach the stream's state and the rules, but not the KPI windows.
        self.late_ctx = Context(store=store, windows=DiscardWindows(kpis), signals=self.signals, settings=settings,
                                rule=self.ctx.rule)
        meta = store.meta
        meta.setdefault("partition_watermark", {})
        meta.setdefault("partition_clock", {})
        meta.setdefault("dlq_seq", 0)
        meta.setdefault("rule_seq", 0)
        self._rule_seq = self._rule_synced = int(meta["rule_seq"])  # entries up to _rule_synced are in the table
        # Dead letters up to this sequence number are committed: only those may leave (outbox rule).
        self._dlq_committed = meta["dlq_seq"]
        # Newest event time per (topic, partition). Lateness is judged per partition: a partition's
        # order is fixed, so the decision is the same in a replay after a crash whatever the
        # interleaving of partitions (a stream-wide maximum would depend on which partition the
        # consumer happened to read ahead, and a restart's catch-up would mark events late).
        # The value is the partition clock (see cityops.engine.clocks: a robust maximum, not the raw newest).
        self.partition_wm: dict[tuple[str, int], float] = meta["partition_watermark"]
        self._pclocks: dict[tuple[str, int], PartitionClock] = {
            tp: PartitionClock.from_state(st) for tp, st in meta["partition_clock"].items()}
        self._retention: dict[str, float] = {}  # per stream, its watermark's maximum so far
        self._last_seen_wall: dict[tuple[str, int], float] = {k: now() for k in self.partition_wm}
        self._started_wall = now()
        self._expected: dict[str, set[int]] = {}
        self._expected_since = self._started_wall
        self.first_record_grace_s = 10.0
        # A partition counts as idle (stops holding the clocks back) after this long without a record.
        # Long enough that a partition merely starved by the consumer under load is not taken for idle.
        self.idle_partition_s = float(getattr(settings, "idle_partition_s", 120.0))
        self.notify_delay_s = 60.0  # event-time seconds past a window's end before rules judge it
        # Expiry index of the dedup table by (stream, event-time hour); rebuilt from the table, never persisted.
        self._dedup_buckets: dict[tuple[str, int], list[tuple[str, str]]] = defaultdict(list)
        for key, seen in self.dedup.items():
            self._dedup_buckets[(key[0], int(seen.ts // 3600))].append(key)
        self.pending_offsets: dict[tuple[str, int], int] = {}
        # The value of the last record applied per partition since the last commit: its digest is committed
        # with the offset, so a later check can tell the same log from a re-created one (see offset_digest).
        self._last_raw: dict[tuple[str, int], bytes] = {}
        meta.setdefault("offset_digest", {})
        self.counts: dict[tuple[str, str], int] = defaultdict(int)  # (stream, outcome) -> n, since start
        self._hook_cache: dict[str, dict[str, list[Any]]] = {}
        # On recovery every stored window is rewritten: its last write may not have landed.
        self._rewrite_all = True
        # Due-time index of the open windows per stream (None: processing-time windows), heaps of (start, key),
        # and of the windows shown to the rules: built from the tables once, then fed with the windows changed
        # since the last commit. Finding what is due costs what is due, not every open window (the food stream
        # keeps a week of windows open).
        self._close_heap: dict[str | None, list[tuple[int, WindowKey]]] = {}
        self._notify_heap: dict[str, list[tuple[int, WindowKey]]] = {}
        self._indexed: set[WindowKey] = set()
        self._index_windows(self.windows.table.data)
        self.notified = store.table("windows_notified", NOTIFIED_CODEC)  # windows whose close the rules have seen
        self._notified_heap: dict[str, list[tuple[int, WindowKey]]] = {}
        for key, start in self.notified.items():
            heapq.heappush(self._notified_heap.setdefault(self.kpi_stream.get(key[0]) or "", []), (start, key))

    def set_rules(self, rules: Iterable[Any]) -> None:
        """The rule instances evaluated from now on (a manifest reload, between two records: see
        ``cityops.alerts.reload``). Instances not evaluated before declare their tables now."""
        before = {id(r) for r in self.rules}
        self.rules = list(rules)
        self._hook_cache = {}
        for rule in self.rules:
            restore = getattr(rule, "restore", None)
            if restore is not None and id(rule) not in before:
                restore(self.ctx)

    # -- processing ---------------------------------------------------------------------------------
    def _hooks(self, topic: str) -> dict[str, list[Any]]:
        """Per stream, the bound rule hooks that do something for it (most rules watch one stream)."""
        hooks = self._hook_cache.get(topic)
        if hooks is None:
            hooks = {}
            for name in ("on_event", "on_quality", "on_tampering", "on_rejected_source"):
                bound = []
                for rule in self.rules:
                    # A rule's declared subscriptions (RuleKind.subscriptions: the hooks its kind
                    # implements); a rule without the declaration gets every hook it has.
                    subs = getattr(rule, "subscriptions", None)
                    if (name not in subs) if subs is not None else not hasattr(rule, name):
                        continue
                    want = getattr(rule, "params", {}).get("stream") if hasattr(rule, "params") else None
                    if want is not None and want != topic:
                        continue
                    bound.append(getattr(rule, name))
                hooks[name] = bound
            # The accepted events of one message reach quality hooks as one ordered run (most events).
            hooks["on_quality_many"] = [
                getattr(h.__self__, "on_quality_many", None) or _one_by_one(h) for h in hooks["on_quality"]
            ]
            self._hook_cache[topic] = hooks
        return hooks

    def process(self, topic: str, partition: int, offset: int, raw: bytes | None,
                timestamp: float | None = None) -> None:
        """Apply one Kafka record; records at or below the partition's last applied offset are skipped.

        The last applied offset is the committed one or, since the last commit, the newest applied: a consumer
        moved back (a seek after a rewind, a rebalance) re-delivers records this worker already applied but
        has not committed yet, and those must not be applied twice.

        ``timestamp``: the record's Kafka timestamp (epoch seconds; None or <= 0 = unknown): the wall clock the
        ``future`` check uses, so that a replay of the record decides the same as the first run.
        """
        tp = (topic, partition)
        if offset <= self.pending_offsets.get(tp, self.store.offsets.get(tp, -1)):
            return
        stream = self.streams[topic]
        raw = raw if raw is not None else b""
        now = self.now()
        try:
            results = stream.decode(raw)
        except Exception as exc:  # a decoder bug must not kill the agent: the record is dead-lettered
            log.exception("decoder failed at=%s[%d]@%d", topic, partition, offset)
            results = [Rejected(f"decoder error: {type(exc).__name__}: {exc}")]
        hooks = self._hooks(topic)
        on_event, on_quality = hooks["on_event"], hooks["on_quality"]
        on_quality_many = hooks["on_quality_many"]
        # Accepted events' quality calls, sent as one run before any other outcome's call (order kept).
        quality_run: list[tuple[float, str | None]] = []
        registry = self.registry
        dedup = self.dedup
        dedup_data = dedup.data
        buckets = self._dedup_buckets
        wms = self.partition_wm
        pclock = self._pclocks.get(tp)
        if pclock is None:
            pclock = self._pclocks[tp] = PartitionClock()
        lateness = self.lateness_of[topic]
        jump = self.jump_of[topic]
        future_limit = (timestamp + self.max_future_s
                        if self.max_future_s is not None and timestamp is not None and timestamp > 0 else None)
        ctx = self.ctx
        apply = stream.apply
        rule_heap = self._rule_heaps.get(topic) if on_event else None
        if on_event and rule_heap is None:
            rule_heap = self._rule_heaps[topic] = []
        accepted = 0
        seen = False
        for res in results:
            added = None  # the dedup entry this event made, taken back if applying it fails
            if type(res) is Rejected:
                if quality_run:
                    self._quality_run(topic, quality_run, on_quality_many)
                self._reject(topic, partition, offset, raw, res, now)
                continue
            try:
                ts = res.ts
                if not _STORABLE_MIN_S <= ts < _STORABLE_MAX_S:
                    # Rejected at ingest: counted and dead-lettered here, never handed to a sink that
                    # would refuse its point after it was counted.
                    reason = outside_storable(ts, self.windows.width_s)
                    if reason is not None:
                        if quality_run:
                            self._quality_run(topic, quality_run, on_quality_many)
                        self._reject(topic, partition, offset, raw,
                                     Rejected(f"contract: {reason}", res.index), now)
                        continue
                if registry is not None:
                    verdict = registry.check(topic, res, raw)
                    if verdict is not None:
                        if quality_run:
                            self._quality_run(topic, quality_run, on_quality_many)
                        self._untrusted(topic, partition, offset, raw, res, now, verdict, hooks)
                        if verdict[0] != "observed":  # observe mode lets an unlisted source's event on
                            continue
                if future_limit is not None and ts > future_limit:
                    if quality_run:
                        self._quality_run(topic, quality_run, on_quality_many)
                    self._future(topic, partition, offset, raw, res, now, timestamp)
                    continue
                key = (topic, res.event_id)
                dup = dedup_data.get(key)
                if dup is not None:
                    if quality_run:
                        self._quality_run(topic, quality_run, on_quality_many)
                    self._duplicate(topic, res, now, dup.digest != res.digest, hooks)
                    continue
                seen = True
                wm = wms.get(tp)
                if pclock.provisional and wm is not None:
                    # The partition's first event set the clock alone: a second it would make late shows it was ahead.
                    wms[tp] = wm = pclock.settle(wm, ts, lateness)
                late = wm is not None and ts < wm - lateness
                # A late event is remembered from when it arrived (its partition's clock), not from its own old
                # time: a re-sent upload days late is still known as a duplicate for the dedup horizon.
                kept = wm if late else ts
                dedup[key] = Seen(digest=res.digest, ts=kept)
                added = key
                buckets[(topic, int(kept // 3600))].append(key)
                if late:
                    # Too late for its KPI window, but still data: it entered the dedup table above, and it
                    # reaches the stream's own state (the food lineage) and the rules.
                    if quality_run:
                        self._quality_run(topic, quality_run, on_quality_many)
                    self.late_ctx.clock = wm
                    apply(res, self.late_ctx)
                    added = None  # applied: it counts (as late)
                    self._count(topic, "late", now)
                    for hook in on_quality:
                        hook(topic, "late", ts, res.source, ctx)
                else:
                    pclock.see(res.source)
                    if wm is None or ts > wm:
                        wms[tp] = wm = pclock.advance(wm, ts, res.source, jump)
                    ctx.clock = wm
                    apply(res, ctx)
                    added = None  # applied: it counts
                    accepted += 1
                    if on_quality_many:
                        quality_run.append((ts, res.source))
                if on_event:
                    # Rules see a stream's events in event-time order, once every partition of the stream
                    # is past them (see _release): per-card rules then decide as if there were one partition.
                    self._rule_seq = seq = self._rule_seq + 1
                    heapq.heappush(rule_heap, (ts, seq, topic, res))
            except Exception as exc:
                log.exception("processing failed at=%s[%d]@%d index=%d", topic, partition, offset, res.index)
                if added is not None:
                    # The event is dead-lettered, so it was not counted: a corrected re-send must not be
                    # taken for its duplicate.
                    dedup.pop(added)
                if quality_run:
                    self._quality_run(topic, quality_run, on_quality_many)
                self._reject(topic, partition, offset, raw,
                             Rejected(f"processing error: {type(exc).__name__}: {exc}", res.index,
                                      path=getattr(res, "path", None)), now)
        if quality_run:
            self._quality_run(topic, quality_run, on_quality_many)
        if seen:
            self._last_seen_wall[tp] = now
        if accepted:
            self._count(topic, "accepted", now, accepted)
        self.pending_offsets[tp] = offset
        self._last_raw[tp] = raw

    def _future(self, topic: str, partition: int, offset: int, raw: bytes, ev: Decoded, now: float,
                timestamp: float) -> None:
        """An event dated too far ahead of the wall clock (its record's Kafka timestamp): dead-lettered."""
        ahead = ev.ts - timestamp
        reason = (f"future: event time {_iso(ev.ts)} is {ahead:.0f} s ahead of the record's Kafka timestamp "
                  f"{_iso(timestamp)} (at most {self.max_future_s:g} s, CITYOPS_MAX_FUTURE_S)")
        # Judged at the partition clock, not at its own (wrong) time: rules must not see time jump ahead.
        self._reject(topic, partition, offset, raw, Rejected(reason, ev.index), now, "future", source=ev.source)

    def _quality_run(self, topic: str, run: list[tuple[float, str | None]], hooks: list[Any]) -> None:
        """Send a run of accepted events to the quality hooks, then empty it (the caller's list)."""
        items = run[:]
        run.clear()
        for hook in hooks:
            try:
                hook(topic, "accepted", items, self.ctx)
            except Exception:
                log.exception("rule failed on quality run stream=%s events=%d", topic, len(items))

    def _count(self, topic: str, outcome: str, now: float, n: int = 1) -> None:
        acc = self.windows.acc(QUALITY, (topic,), now)
        acc[QUALITY_INDEX[outcome]] += n
        self.counts[(topic, outcome)] += n
        if self.on_outcome is not None:
            self.on_outcome(topic, outcome, n)

    def _reject(self, topic: str, partition: int, offset: int, raw: bytes, res: Rejected, now: float,
                outcome: str = "invalid", source: str | None = None) -> None:
        # A whole-message rejection counts once; an element of a batch counts as one event.
        self._count(topic, outcome, now)
        seq = self.store.meta["dlq_seq"] = self.store.meta["dlq_seq"] + 1
        self.dlq[seq] = {
            "stream": topic, "topic": topic, "partition": partition, "offset": offset,
            "index": res.index, "reason": res.reason, "outcome": outcome, "raw": raw,
            "element": None if res.fragment is None or res.index is None else _dumps(res.fragment),
        }
        if res.path:
            self.dlq.data[seq]["path"] = res.path
        wm = self.partition_wm.get((topic, partition))
        # The source of a rejected batch element is still known (it is sending, if badly): silence rules
        # must not take a source that sends only invalid events for a silent one.
        frag = res.fragment if isinstance(res.fragment, dict) else {}
        if source is None:
            source = frag.get("source") if isinstance(frag.get("source"), str) else None
        # When the broken event still carries a readable event time, judge it at that time (data-quality
        # rules then see the same minute whatever partition it was read from); else at the watermark.
        at = _event_time(frag.get("ts"))
        if at is None:
            at = wm if wm is not None else now
        for hook in self._hooks(topic)["on_quality"]:
            hook(topic, outcome, at, source, self.ctx)
        log.info("dead-letter stream=%s at=%s[%d]@%d index=%s reason=%r", topic, topic, partition, offset,
                 res.index, res.reason)

    def _release(self, now: float, final: bool = False) -> None:
        """Hand buffered events to the rules, oldest first, up to each stream's watermark (``final``: all).

        Each stream's events wait in their own heap, so a stream held back (its clock behind) costs nothing
        here; the events released from several streams reach the rules merged in event-time order.
        """
        heaps = self._rule_heaps
        closing = self.ctx.rule.stream_clocks or {}
        all_idle = final or not any(now - seen <= self.idle_partition_s for seen in self._last_seen_wall.values())
        runs: list[list[tuple[float, int, str, Decoded]]] = []
        pop = heapq.heappop
        for topic, heap in heaps.items():
            if not heap:
                continue
            limit = float("inf") if all_idle else closing.get(topic)
            if limit is None or heap[0][0] > limit:
                continue
            run = []
            while heap and heap[0][0] <= limit:
                run.append(pop(heap))
            runs.append(run)
        if not runs:
            return
        synced = self._rule_synced
        released = self._rule_released
        ctx = self.ctx
        hooks_of: dict[str, list[Any]] = {}
        for ts, seq, topic, ev in runs[0] if len(runs) == 1 else heapq.merge(*runs):
            if seq <= synced:
                released.append((ts, seq))
            hooks = hooks_of.get(topic)
            if hooks is None:
                hooks = hooks_of[topic] = self._hooks(topic)["on_event"]
            for hook in hooks:
                try:
                    hook(topic, ev, ctx)
                except Exception:
                    log.exception("rule failed on event stream=%s event_id=%s", topic, ev.event_id)

    def _sync_rule_buffer(self) -> None:
        """Bring the durable ``rule_buffer`` table up to date with the heaps (right before a commit).

        Written: the events buffered since the last commit and still waiting; deleted: written events released
        since. The cost is what changed plus one pass over the events still waiting.
        """
        table = self.rule_buffer
        for key in self._rule_released:
            table.pop(key)
        self._rule_released = []
        synced = self._rule_synced
        if self._rule_seq > synced:
            for heap in self._rule_heaps.values():
                for ts, seq, topic, ev in heap:
                    if seq > synced:
                        table[(ts, seq)] = (topic, ev)
            self._rule_synced = self._rule_seq
        self.store.meta["rule_seq"] = self._rule_seq

    def _untrusted(self, topic: str, partition: int, offset: int, raw: bytes, ev: Decoded, now: float,
                   verdict: tuple[str, str], hooks: dict[str, list[Any]]) -> None:
        outcome, reason = verdict
        if outcome == "observed":
            # CITYOPS_UNKNOWN_SOURCES=observe: the registry gate counted it; rules hear of the source and
            # the event is processed like any other (the caller goes on with it).
            reason_code = "untrusted_source_observed"
        else:
            self._reject(topic, partition, offset, raw, Rejected(reason, ev.index), now, outcome)
            reason_code = "untrusted_source" if outcome == "untrusted" else outcome
        for hook in hooks["on_rejected_source"]:
            hook(topic, ev.source, reason_code, ev.ts, self.ctx)

    def _duplicate(self, topic: str, ev: Decoded, now: float, tampered: bool,
                   hooks: dict[str, list[Any]]) -> None:
        self._count(topic, "tampered" if tampered else "duplicate", now)
        if tampered:
            for hook in hooks["on_tampering"]:
                hook(topic, ev.event_id, ev.source, ev.ts, self.ctx)
        for hook in hooks["on_quality"]:
            hook(topic, "duplicate", ev.ts, ev.source, self.ctx)

    def _reopen(self, key: WindowKey) -> list[Any] | None:
        """A closed window that a (not late) event still belongs to: take its accumulator back."""
        entry = self.closed.pop(key)
        return None if entry is None else entry[1]

    # -- time ---------------------------------------------------------------------------------------
    @property
    def newest_event_time(self) -> dict[str, float]:
        """Newest event time per stream (over its partitions, epoch s): for status. Not a watermark: events
        older than it may still come (see ``watermark``)."""
        out: dict[str, float] = {}
        for (topic, _p), wm in self.partition_wm.items():
            if wm > out.get(topic, float("-inf")):
                out[topic] = wm
        return out

    def watermark(self, now: float) -> dict[str, float]:
        """Per stream, its watermark: the event time up to which every active partition has progressed
        (epoch s; ``now``: wall clock, for idle partitions).

        A partition that has sent nothing for ``idle_partition_s`` wall seconds while behind does not hold
        windows open (a window it later reaches is reopened, so KPIs stay exact either way).
        """
        out: dict[str, float] = {}
        newest = self.newest_event_time
        for tp, wm in self.partition_wm.items():
            topic = tp[0]
            idle = now - self._last_seen_wall.get(tp, now) > self.idle_partition_s
            if idle and wm < newest[topic]:
                continue
            if wm < out.get(topic, float("inf")):
                out[topic] = wm
        # An assigned partition that has delivered nothing yet holds its stream back for a short grace
        # period: it may hold the stream's earliest events. The consumer fetches every assigned partition
        # in its first rounds, so one still silent after that is empty and must not hold anything.
        if now - self._expected_since <= self.first_record_grace_s:
            for topic, parts in self._expected.items():
                if any((topic, p) not in self.partition_wm for p in parts):
                    out.pop(topic, None)
        return out

    def expect_partitions(self, tps: Iterable[tuple[str, int]]) -> None:
        """The consumer's assignment: partitions whose first records the clocks should wait for."""
        for topic, partition in tps:
            if topic in self.streams:
                self._expected.setdefault(topic, set()).add(partition)
        self._expected_since = self.now()

    def stream_clocks(self, now: float) -> dict[str, float]:
        """Per consumed stream, the event time its rules may judge up to (absent: wait).

        A stream that has never delivered anything past the grace period gets the rules' clock, so its
        sources can still be found silent (a feed dead from the start).
        """
        clocks = self.watermark(now)
        rules_now = self.rules_clock(now)
        if rules_now is not None and now - self._started_wall > self.idle_partition_s:
            for topic in self.streams:
                if not any(tp[0] == topic for tp in self.partition_wm):
                    clocks.setdefault(topic, rules_now)
        return clocks

    @property
    def engine_time(self) -> float | None:
        """The newest event time seen on any stream (the clock of the alert lifecycle)."""
        return max(self.partition_wm.values()) if self.partition_wm else None

    def retention_clock(self, closing: dict[str, float]) -> dict[str, float]:
        """Per stream, the clock its state is expired on: the highest watermark it has reached.

        A stream's own clock (its slowest active partition), never another stream's nor one event's time: an
        event far ahead, or a stream read far ahead of the others, cannot expire anything.
        """
        ret = self._retention
        for topic, wm in closing.items():
            if wm > ret.get(topic, float("-inf")):
                ret[topic] = wm
        return ret

    def _expire_dedup(self, retention: dict[str, float]) -> None:
        limits = {t: int((wm - self.dedup_horizon_of.get(t, self.dedup_horizon)) // 3600)
                  for t, wm in retention.items()}
        # The index holds one list per (stream, hour) that has entries: bounded by the state, not by elapsed time.
        for bucket in [b for b in self._dedup_buckets if b[0] in limits and b[1] < limits[b[0]]]:
            for key in self._dedup_buckets.pop(bucket):
                entry = self.dedup.data.get(key)
                if entry is not None and int(entry.ts // 3600) == bucket[1]:
                    del self.dedup[key]

    def _index_windows(self, keys: Iterable[WindowKey]) -> None:
        """Add open windows not yet in the due-time index (new ones, or closed ones an event reopened)."""
        data = self.windows.table.data
        indexed = self._indexed
        for key in keys:
            if key in indexed or key not in data:
                continue
            indexed.add(key)
            stream = self.kpi_stream.get(key[0])
            heapq.heappush(self._close_heap.setdefault(stream, []), (key[2], key))
            if stream is not None:
                heapq.heappush(self._notify_heap.setdefault(stream, []), (key[2], key))

    def _due_windows(self, now: float, final: bool = False) -> tuple[list[WindowKey], list[WindowKey]]:
        """(windows to close: past end + lateness; windows to show the rules: past end + notify delay).

        From the due-time heaps: the work is the windows that fall due, whatever the number of open windows
        or the span of event time the clocks crossed. ``final``: every open window is due (end of input).
        """
        self._index_windows(self.windows.table.dirty)
        width = self.windows.width_s
        data = self.windows.table.data
        closing = self.watermark(now)
        closed: list[WindowKey] = []
        for stream, heap in self._close_heap.items():
            if final:
                limit = float("inf")
            elif stream is None:  # processing-time windows close by the wall clock
                limit = now - width - 5
            else:
                wm = closing.get(stream)
                if wm is None:
                    continue
                limit = wm - width - self.lateness_of[stream]
            while heap and heap[0][0] <= limit:
                _start, key = heapq.heappop(heap)
                self._indexed.discard(key)
                if key in data:
                    closed.append(key)
        done = set(closed)
        notify: list[WindowKey] = []
        for stream, heap in self._notify_heap.items():
            wm = closing.get(stream)
            if wm is None:
                continue
            # Anomaly rules judge a window once the stream is a little past it, not after the full
            # lateness: on-call hears within minutes; a rare late event still lands in the KPI.
            limit = wm - width - self.notify_delay_s
            while heap and heap[0][0] <= limit:
                _start, key = heapq.heappop(heap)
                if key in data and key not in done:
                    notify.append(key)
                    done.add(key)
        return closed, notify

    def rules_clock(self, now: float) -> float | None:
        """The event time rules and the alert lifecycle run on: the slowest stream still flowing.

        Taking the newest time of any stream would make a stream that is merely read behind (a backlog,
        partition skew) look silent, and evict rule state its late-read events still need; a stream that
        has stopped sending (wall clock) no longer holds the clock back, so its silence is noticed.
        """
        closing = self.watermark(now)
        flowing = {tp[0] for tp, seen in self._last_seen_wall.items() if now - seen <= self.idle_partition_s}
        times = [wm for stream, wm in closing.items() if stream in flowing]
        if times:
            return min(times)
        return self.engine_time

    # -- checkpoint ---------------------------------------------------------------------------------
    def checkpoint(self, *, final: bool = False) -> CheckpointResult:
        """Close windows, advance rules, commit state + offsets atomically; return points to write.

        The returned points reflect exactly the committed state, so InfluxDB never holds a count that a
        crash could take back. ``final``: the input has ended (the last commit of a backtest,
        ``cityops.backtest``): every buffered event is released to the rules and every open window is
        closed and shown to them, as if each stream's watermark had passed them all.
        """
        now = self.now()
        result = CheckpointResult()
        engine_ts = self.rules_clock(now)
        rule_ctx = self.ctx.rule
        if rule_ctx.engine_start_ts is None and self.engine_time is not None:
            # Silence of sources never heard from counts from here (event time of the first data).
            rule_ctx.engine_start_ts = self.store.meta[META_ENGINE_START] = self.engine_time
        rule_ctx.stream_clocks = self.stream_clocks(now)
        self._release(now, final)
        if engine_ts is not None:
            for rule in self.rules:
                rule.on_tick(engine_ts, self.ctx)
            advance = getattr(self.signals, "advance", None)
            if advance is not None:
                advance(engine_ts)
        closed, notify = self._due_windows(now, final)
        notified = self.notified
        # Rules (per-series detectors) must see each series' windows once and in time order.
        for key in sorted((k for k in closed + notify if k not in notified), key=lambda k: k[2]):
            point = self.windows.point(key)
            if point is None:
                continue
            measurement, tags, fields, start = point
            for rule in self.rules:
                rule.on_window(measurement, tags, fields, float(start), self.ctx)
            notified[key] = start
            heapq.heappush(self._notified_heap.setdefault(self.kpi_stream.get(key[0]) or "", []), (start, key))
        for key in closed:
            point = self.windows.point(key)
            acc = self.windows.table.pop(key)
            if point is not None:
                self.closed[key] = (point, acc)
        retention = self.retention_clock(self.watermark(now))
        # Forget old notifications, but never of a window still open: a stream that went quiet
        # (hospitals at night) keeps its last windows open for hours, and forgetting them would
        # show them to the rules again at every checkpoint. Each on its own stream's clock and lateness.
        horizons = {t: wm - 2 * self.lateness_of[t] - 3600 for t, wm in retention.items()}
        horizons[""] = now - 3600  # processing-time windows: on the wall clock
        open_windows = self.windows.table.data
        for stream, heap in self._notified_heap.items():
            horizon = horizons.get(stream)
            if horizon is None:
                continue
            still_open = []
            while heap and heap[0][0] < horizon:
                start, key = heapq.heappop(heap)
                if key in open_windows:
                    still_open.append((start, key))
                elif key in notified:
                    del notified[key]
            for entry in still_open:
                heapq.heappush(heap, entry)
        if engine_ts is not None:
            advance = getattr(self.signals, "advance", None)
            if advance is not None:
                advance(engine_ts)  # again: on_window may have raised conditions due now
        self._expire_dedup(retention)
        meta_clocks = self.store.meta["partition_clock"]
        for tp, pc in self._pclocks.items():
            meta_clocks[tp] = pc.to_state()
        if self._rewrite_all:
            dirty = set(self.windows.table.data) | set(self.closed.data)
            self._rewrite_all = False
        else:
            dirty = set(self.windows.table.dirty) | set(closed)
        for key in dirty:
            if key in self.windows.table.data:
                p = self.windows.point(key)
            else:
                entry = self.closed.data.get(key)
                p = None if entry is None else entry[0]
            if p is None:
                continue
            measurement, tags, fields, start = p
            result.points.append(Point(measurement, tags, fields, start))
        result.closed = closed
        offsets, self.pending_offsets = self.pending_offsets, {}
        if self._last_raw:
            digests = self.store.meta["offset_digest"]
            for tp, raw in self._last_raw.items():
                if tp in offsets:
                    digests[tp] = record_digest(raw)
            self._last_raw = {}
        self._sync_rule_buffer()
        result.bytes_written = self.store.commit(offsets)
        self._dlq_committed = self.store.meta["dlq_seq"]
        return result

    def confirm_written(self, keys: Iterable[tuple[str, dict[str, str], int]]) -> None:
        """The sink wrote these window points: closed windows among them can be forgotten."""
        for measurement, tags, ts in keys:
            kpi = self.windows.kpis.get(measurement)
            if kpi is None:
                continue
            key = (measurement, tuple(tags.get(t, "") for t in kpi.tags), ts)
            if key in self.closed.data:
                del self.closed[key]

    # -- offsets that go backwards -------------------------------------------------------------------
    def committed_records(self) -> dict[tuple[str, int], tuple[int, str | None]]:
        """Per partition, the committed offset and the digest of the record at it (None: not known)."""
        digests = self.store.meta["offset_digest"]
        return {tp: (off, digests.get(tp)) for tp, off in self.store.offsets.items() if off >= 0}

    def rewind(self, tp: tuple[str, int], next_offset: int) -> None:
        """The partition's log went backwards: apply its records again from ``next_offset``.

        The committed offset becomes ``next_offset - 1`` (committed with the next checkpoint). Events the
        new log shares with the old one (a producer re-sending them) are counted once by the dedup table;
        the partition's clock (its watermark) is kept, as the stream's event time did not go back.
        """
        self.store.offsets[tp] = next_offset - 1
        self.pending_offsets[tp] = next_offset - 1
        self._last_raw.pop(tp, None)
        self.store.meta["offset_digest"].pop(tp, None)

    # -- dead letters -------------------------------------------------------------------------------
    def pending_dead_letters(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Committed dead-letter records not yet confirmed sent (oldest first).

        A record created since the last commit waits for it: if the worker crashed first, its input would
        be processed again and dead-letter it again, so sending it now could send it twice.
        """
        committed = self._dlq_committed
        return sorted(item for item in self.dlq.data.items() if item[0] <= committed)[:limit]

    def dead_letter_point(self, sink: str, line: str, measurement: str, reason: str) -> None:
        """A point ``sink`` refused: queue it for the dead-letter topic with the sink's reason.

        The record joins the durable dead-letter outbox; it is committed by the next checkpoint together
        with the forgetting of the point (``confirm_written``), so after a crash either both happened or
        the point is written (and refused, and dead-lettered) again. Its id is a hash of the line: a repeat
        of the same point version carries the same ``cityops-dlq-id``.
        """
        seq = self.store.meta["dlq_seq"] = self.store.meta["dlq_seq"] + 1
        raw = line.encode()
        self.dlq[seq] = {
            "stream": self.kpi_stream.get(measurement) or "cityops", "topic": sink, "partition": -1,
            "offset": -1, "index": None, "reason": f"{sink} refused the point: {reason}", "outcome": "refused",
            "raw": raw, "element": None, "measurement": measurement,
            "id": f"{sink}:{measurement}:{hashlib.blake2b(raw, digest_size=12).hexdigest()}",
        }

    def confirm_dead_letters(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.dlq.pop(seq)


def record_digest(raw: bytes | None) -> str:
    """Hex digest of a Kafka record's value (16 bytes of BLAKE2b): identifies the record at an offset."""
    return hashlib.blake2b(raw or b"", digest_size=16).hexdigest()


def _event_time(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 time with offset, or None."""
    try:
        return rfc3339_seconds(value)
    except ValueError:
        return None


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value).encode()
