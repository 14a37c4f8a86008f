"""`cityops backtest`: run a proposed set of agent manifests over recorded events before deploying them.

The recorded events (a JSONL recording, or Kafka topics' retained history) go through the worker's own
engine, built by the worker's own construction path (``cityops.runtime.Runtime``: streams, KPIs, rule
kinds, manifests, source registry — plugins included), with its state in a temporary directory and none of
its outputs started: no InfluxDB, no Alertmanager, no Kafka writes, no consumer group. What the worker
would have written is collected instead: the final KPI point of every window, every alert transition and
the dead letters. Given the deployed manifests (the baseline), the same input also runs through a second
engine, and the alerts of both are compared per rule.

**Recorded events** (JSONL, one Kafka record per line; ``cityops record`` and ``cityops simulate --to file``
write it)::

    {"topic": "traffic.card-taps", "partition": 0, "offset": 17, "timestamp": 1764460800123, "value": {...}}

``topic`` (required); ``partition`` (default 0); ``offset`` (default: the previous offset of that
partition in the file + 1; must increase per partition); ``timestamp`` (required): the record's Kafka
timestamp, in milliseconds since the epoch (> 0) or as RFC 3339 text with a UTC offset; and either ``value``: the record's value as
JSON (given to the engine as its compact JSON text; ``null`` = an empty record), or ``value_b64``: the exact
bytes, base64 (any record, JSON or not). A line that breaks these rules is counted and reported with its
line number, and the rest goes on.

**Time.** The engine decides on event time; its wall clock (processing-time windows, idle partitions, the
``future`` check, commit cadence) is the records' Kafka timestamps here — the time they reached the broker,
i.e. what the live worker's clock read when it consumed them caught up — never the backtest's own clock, so
a backtest of the same input always decides the same. A record without a timestamp advances the wall
clock to the newest event time seen (a live feed read as it happens) and skips the ``future`` check, as the
worker does for a record without one. The engine commits every ``CITYOPS_FLUSH_INTERVAL_S`` of that clock,
as the worker does. At the end of the input the clock moves past the idle-partition time and a last commit
closes every open window (the watermark passes the last event), so the final KPIs are complete. Alerts
are judged up to where the worker's rule clock then stands (the slowest stream's watermark: a lone event
far ahead of its partition does not move it; README, "Event time you can trust"): an alert whose
``resolve_after`` has not passed by then is reported as still firing.

**Topics** are read from their start offsets to the end offsets they had when the backtest began, by a
consumer without a group (nothing is committed), merged across partitions in record-timestamp order
(ties: topic, partition, offset) — the order ``cityops record`` writes, so a recording of the topics
backtests exactly like the topics themselves.

**Comparing alerts.** An alert is one episode of a rule and entity: from the time its condition started
(its ``pending`` transition, or its ``firing`` one when the rule has no ``for``) to its ``resolved``
transition. Episodes of the baseline and the proposal match by (rule, entity labels, condition start);
matched episodes that differ in severity, firing time, resolve time, labels, summary or flapping are
*changed*; the others are *added* (only in the proposal) or *removed* (only in the baseline). Cancelled
pending alerts (the condition dropped before ``for`` elapsed) never reach Alertmanager and are not alerts.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from cityops.errors import CityopsError, ConfigError, RulesDirError
from cityops.units import CITY_TZ

__all__ = [
    "BadLines",
    "Episode",
    "Record",
    "Replay",
    "diff_episodes",
    "episodes",
    "parse_record",
    "read_recording",
    "read_topics",
    "record_line",
    "run_backtest",
]

log = logging.getLogger("cityops.backtest")

# Never contacted: the backtest builds the worker's runtime but never starts its outputs; an address that
# cannot resolve (RFC 2606 .invalid) makes sure nothing live could be reached even by mistake.
UNUSED_INFLUX_URL = "http://influxdb.backtest.invalid:8086"
UNUSED_BOOTSTRAP = "kafka.backtest.invalid:9092"
# Settings of the live outputs and of the live state: replaced, so a backtest started with a worker's
# environment can neither write to them nor fail on their credentials.
_LIVE_PREFIXES = ("CITYOPS_INFLUX_", "CITYOPS_ALERTMANAGER_", "CITYOPS_STATE_")
_REPLACED = {"CITYOPS_DATA_DIR", "CITYOPS_RULES_DIR"}
_RECORD_KEYS = {"topic", "partition", "offset", "timestamp", "value", "value_b64"}
BAD_LINES_LISTED = 50


# -- recorded events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record: ``timestamp`` in epoch seconds (None = unknown); ``value`` None = an empty record."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None
    value: bytes | None


def _timestamp(raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"timestamp: expected milliseconds since the epoch or RFC 3339 text, got {raw!r}")
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(f"timestamp: not RFC 3339 text: {raw!r}") from None
        if dt.tzinfo is None:
            raise ValueError(f"timestamp: {raw!r} has no UTC offset")
        return dt.timestamp()
    if not math.isfinite(raw) or raw < 0:
        raise ValueError(f"timestamp: {raw!r} is not milliseconds since the epoch")
    return raw / 1000.0 if raw > 0 else None  # Kafka writes -1 / 0 for "no timestamp"


def parse_record(line: bytes, next_offset: dict[tuple[str, int], int]) -> Record:
    """One line of a recording → ``Record``; ``ValueError`` naming what is wrong (the caller counts it).

    ``next_offset``: per (topic, partition), the lowest offset the next record may have; updated.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object (one Kafka record), got {type(obj).__name__}")
    unknown = set(obj) - _RECORD_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; a record has {sorted(_RECORD_KEYS)}")
    topic = obj.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic: required, a non-empty string")
    partition = obj.get("partition", 0)
    if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
        raise ValueError(f"partition: expected an integer >= 0, got {partition!r}")
    tp = (topic, partition)
    lowest = next_offset.get(tp, 0)
    offset = obj.get("offset", lowest)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset: expected an integer >= 0, got {offset!r}")
    if offset < lowest:
        raise ValueError(f"offset {offset} of {topic}[{partition}] is not after the previous record's "
                         f"({lowest - 1}): offsets must increase per partition")
    # A recording is replayed on its records' clock: a line without its time cannot be placed on it (read as
    # 0 it would open windows in 1970), so it is a bad line like any other.
    if obj.get("timestamp") is None:
        raise ValueError("timestamp: required (the record's Kafka timestamp: milliseconds since the epoch or "
                         "RFC 3339 text)")
    timestamp = _timestamp(obj.get("timestamp"))
    if timestamp is None:
        raise ValueError(f"timestamp: {obj['timestamp']!r} is Kafka's \"no timestamp\"; a recorded record needs "
                         "its time")
    if ("value" in obj) == ("value_b64" in obj):
        raise ValueError("expected exactly one of value (the record's JSON value) and value_b64 (its bytes, "
                         "base64)")
    if "value_b64" in obj:
        b64 = obj["value_b64"]
        if not isinstance(b64, str):
            raise ValueError("value_b64: expected a base64 string")
        try:
            value: bytes | None = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"value_b64: not base64: {exc}") from None
    else:
        value = None if obj["value"] is None else orjson.dumps(obj["value"])
    next_offset[tp] = offset + 1
    return Record(topic, partition, offset, timestamp, value)


def record_line(rec: Record) -> bytes:
    """The recording line of ``rec`` (newline included): ``value`` as JSON when that gives back the exact
    bytes (``parse_record`` re-serializes it compactly), else ``value_b64``."""
    head = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
    if rec.timestamp is not None:
        head["timestamp"] = round(rec.timestamp * 1000)
    out = orjson.dumps(head)[:-1]
    raw = rec.value
    if raw is None:
        return out + b',"value":null}\n'
    try:
        if orjson.dumps(orjson.loads(raw)) == raw:
            return out + b',"value":' + raw + b"}\n"
    except (orjson.JSONDecodeError, TypeError):
        pass
    return out + b',"value_b64":"' + base64.b64encode(raw) + b'"}\n'


@dataclass
class BadLines:
    """Lines of a recording that are not a record: how many, and the first ``BAD_LINES_LISTED`` of them."""

    count: int = 0
    listed: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.listed) < BAD_LINES_LISTED:
            self.listed.append((line, reason))


def read_recording(path: Path, bad: BadLines, on_bytes: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The records of a JSONL recording, in file order; bad lines go to ``bad`` (never raised). Blank lines
    are skipped. ``on_bytes(n)``: progress, bytes read."""
    next_offset: dict[tuple[str, int], int] = {}
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if on_bytes is not None:
                on_bytes(len(line))
            if not line.strip():
                continue
            try:
                rec = parse_record(line, next_offset)
            except ValueError as exc:
                bad.add(n, str(exc))
                continue
            yield rec


class TopicReader:
    """Kafka topics' retained history, from each partition's start offset to the end offset it had when
    the reader opened, merged in record-timestamp order (ties: topic, partition, offset).

    A consumer without a group (``group_id=None``, no auto commit): nothing is committed, nothing written.
    Memory is bounded: a partition with ``buffer`` records waiting is paused until they are used.
    ``total``: records to read. ``ConfigError`` for a topic the broker does not have, naming ``option`` (the
    command's option that named the topics; ``setting``: what set ``bootstrap``), followed by ``hint``.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str], *, security: Mapping[str, Any] | None = None,
                 setting: str = "--bootstrap", option: str = "--from", hint: str = "",
                 timeout_s: float = 30.0, buffer: int = 5000) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from cityops.reach import check_kafka, quiet_logs

        check_kafka(bootstrap, setting)
        self.timeout_s = timeout_s
        self.buffer = buffer
        with quiet_logs("kafka"):
            # No group (nothing committed), and asking about a topic never creates it.
            self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest", allow_auto_create_topics=False,
                                          **dict(security or {}))
        tps = []
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                self.consumer.close()
                broker = (f"{bootstrap} ({setting})" if setting.startswith("the default")
                          else f"{setting} ({bootstrap})")
                raise ConfigError(f"{option} {topic}: no such topic on {broker}" + (f" {hint}" if hint else ""))
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        self.tps = tps
        self.consumer.assign(tps)
        self.start = self.consumer.beginning_offsets(tps)
        self.end = self.consumer.end_offsets(tps)
        self.total = sum(max(0, self.end[tp] - self.start[tp]) for tp in tps)

    def __iter__(self) -> Iterator[Record]:
        consumer = self.consumer
        pending = set()
        for tp in self.tps:
            if self.end[tp] > self.start[tp]:
                consumer.seek(tp, self.start[tp])
                pending.add(tp)
        bufs: dict[Any, deque[Record]] = {tp: deque() for tp in self.tps}
        heads: list[tuple[float, str, int, int, Any]] = []  # one entry per partition with records waiting
        fetched: set[Any] = set()

        def key(rec: Record, tp: Any) -> tuple[float, str, int, int, Any]:
            return (rec.timestamp if rec.timestamp is not None else -math.inf, rec.topic, rec.partition,
                    rec.offset, tp)

        try:
            consumer.pause(*[tp for tp in self.tps if tp not in pending])
            while True:
                # The smallest record is known only when every unfinished partition has one waiting.
                deadline = time.monotonic() + self.timeout_s
                while any(not bufs[tp] for tp in pending):
                    if time.monotonic() > deadline:
                        late = sorted(f"{tp.topic}[{tp.partition}]" for tp in pending if not bufs[tp])
                        raise CityopsError(f"reading {', '.join(late)}: no records within {self.timeout_s:.0f} s "
                                           "before the end offsets")
                    full = [tp for tp in pending if len(bufs[tp]) >= self.buffer]
                    if full:
                        consumer.pause(*full)
                    for ktp, recs in consumer.poll(timeout_ms=500, max_records=self.buffer).items():
                        if ktp not in fetched:
                            # The end offset the first fetch reports (its high watermark): some brokers
                            # (Tansu 0.6) answer ListOffsets with the last batch's base offset + 1 instead.
                            fetched.add(ktp)
                            high = consumer.highwater(ktp)
                            if high is not None and high > self.end[ktp]:
                                self.end[ktp] = high
                        buf = bufs[ktp]
                        end = self.end[ktp]
                        was_empty = not buf
                        for r in recs:
                            if r.offset >= end:
                                break
                            buf.append(Record(r.topic, r.partition, r.offset,
                                              r.timestamp / 1000.0 if r.timestamp and r.timestamp > 0 else None,
                                              r.value))
                        if was_empty and buf:
                            heapq.heappush(heads, key(buf[0], ktp))
                        if ktp in pending and (consumer.position(ktp) >= end or (buf and buf[-1].offset >= end - 1)):
                            pending.discard(ktp)
                            consumer.pause(ktp)
                    if full:
                        consumer.resume(*[tp for tp in full if tp in pending])
                if not heads:
                    return
                tp = heapq.heappop(heads)[-1]
                buf = bufs[tp]
                yield buf.popleft()
                if buf:
                    heapq.heappush(heads, key(buf[0], tp))
        finally:
            consumer.close(autocommit=False)


# -- the engine, run as the worker runs it ----------------------------------------------------------
def backtest_settings(env: Mapping[str, str], *, rules_dir: str, data_dir: Path,
                      pseudonym_key: str | None = None) -> Any:
    """The worker's settings from ``env`` for a backtest: the engine's settings as given (lateness, window,
    registry, ...), the live outputs and state replaced (InfluxDB and Alertmanager unset or unreachable,
    state in ``data_dir``), rules from ``rules_dir`` ("none" = no rules).

    ``ConfigError`` naming the setting, as the worker's start; CITYOPS_PSEUDONYM_KEY (or ``pseudonym_key``)
    is required like the worker's: card labels are pseudonyms.
    """
    from cityops.settings import load_settings

    values = {k: v for k, v in env.items()
              if k.upper().startswith("CITYOPS_") and not k.upper().startswith(_LIVE_PREFIXES)
              and k.upper() not in _REPLACED}
    if pseudonym_key:
        values["CITYOPS_PSEUDONYM_KEY"] = pseudonym_key
    if not values.get("CITYOPS_PSEUDONYM_KEY"):
        raise ConfigError("CITYOPS_PSEUDONYM_KEY is not set: the backtest needs the worker's pseudonym key (card "
                          "labels of alerts are pseudonyms); set it, pass the worker's settings with --env-file, or "
                          "give --pseudonym-key")
    values.setdefault("CITYOPS_KAFKA_BOOTSTRAP", UNUSED_BOOTSTRAP)
    values.update(CITYOPS_INFLUX_URL=UNUSED_INFLUX_URL, CITYOPS_DATA_DIR=str(data_dir), CITYOPS_RULES_DIR=rules_dir,
                  CITYOPS_STATE_STORE="local")
    return load_settings(values)


class Replay:
    """One engine over the input: the worker's ``Runtime`` (never started: no output is opened), its state
    in ``data_dir``, and what its outputs would have received.

    ``points``: the last version of every KPI point (what InfluxDB would hold), by point key;
    ``transitions``: every alert transition in outbox order; ``dead_letters``: (stream, reason) -> count.
    """

    def __init__(self, name: str, settings: Any, clock: Callable[[], float]) -> None:
        from cityops.engine.state import StateStore
        from cityops.metrics import Metrics
        from cityops.runtime import Runtime

        self.name = name
        self.settings = settings
        # The worker's own construction (streams, KPIs, rules, registry; plugins too); its state in the
        # temporary directory, without fsync (it is thrown away).
        store = StateStore(Path(settings.data_dir) / "state", fsync=False).open()
        self.runtime = Runtime(settings, Metrics(), clock=clock, store=store)
        self.engine = self.runtime.engine
        self.alerts = self.runtime.alerts
        self.points: dict[Any, Any] = {}
        self.transitions: list[Any] = []
        self.dead_letters: Counter[tuple[str, str]] = Counter()
        self.dead_letter_examples: list[dict[str, Any]] = []

    @property
    def topics(self) -> list[str]:
        return sorted(self.engine.streams)

    def process(self, rec: Record) -> None:
        self.engine.process(rec.topic, rec.partition, rec.offset, rec.value, rec.timestamp)

    def checkpoint(self, final: bool = False) -> None:
        """A commit as the worker's, then take what its outputs would have sent, as if delivered."""
        res = self.engine.checkpoint(final=final)
        points = self.points
        for p in res.points:
            points[p.key] = p
        self.engine.confirm_written((p.measurement, p.tags, p.ts) for p in res.points)
        while True:
            batch = self.engine.pending_dead_letters(5000)
            if not batch:
                break
            for _seq, dl in batch:
                self.dead_letters[(dl["stream"], _reason_kind(dl["reason"]))] += 1
                if len(self.dead_letter_examples) < 20:
                    self.dead_letter_examples.append({"stream": dl["stream"], "partition": dl["partition"],
                                                      "offset": dl["offset"], "index": dl["index"],
                                                      "reason": dl["reason"]})
            self.engine.confirm_dead_letters([seq for seq, _ in batch])
        if self.alerts is not None:
            while True:
                batch = self.alerts.pop_outbox(5000)
                if not batch:
                    break
                self.transitions.extend(tr for _, tr in batch)
                self.alerts.ack_outbox([seq for seq, _ in batch])

    def close(self) -> None:
        self.runtime.store.close()


def _reason_kind(reason: str) -> str:
    from cityops.runtime import _reason_kind as kind

    return kind(reason)


# -- alert episodes and their difference ---------------------------------------------------------------
@dataclass
class Episode:
    """One alert: a rule and entity from the start of its condition to its resolve (times: event time, s).

    ``start``: the condition's start (the episode's first transition's ``starts_at``); ``fired_at``: when it
    fired; ``resolved_at``: None = still firing at the end of the input.
    """

    alertname: str
    entity: tuple[tuple[str, str], ...]
    start: float
    severity: str
    labels: dict[str, str]
    fired_at: float | None = None
    resolved_at: float | None = None
    summary: str = ""
    value: float = 0.0
    flapping: bool = False
    transitions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], float]:
        return (self.alertname, self.entity, self.start)

    COMPARED = ("severity", "fired_at", "resolved_at", "labels", "summary", "flapping")

    def differences(self, other: "Episode") -> list[str]:
        """The compared fields in which ``other`` differs."""
        return [f for f in self.COMPARED if getattr(self, f) != getattr(other, f)]

    def to_json(self) -> dict[str, Any]:
        return {"alertname": self.alertname, "entity": dict(self.entity), "start": self.start,
                "fired_at": self.fired_at, "resolved_at": self.resolved_at, "severity": self.severity,
                "labels": self.labels, "summary": self.summary, "value": self.value, "flapping": self.flapping,
                "transitions": self.transitions}


def episodes(transitions: Iterable[Any]) -> tuple[list[Episode], int]:
    """(alerts that fired, number of cancelled pending alerts) from transitions in outbox order."""
    open_: dict[tuple[str, tuple[tuple[str, str], ...]], Episode] = {}
    done: list[Episode] = []
    cancelled = 0
    for tr in transitions:
        entity = tuple(sorted(tr.entity.items()))
        k = (tr.alertname, entity)
        status = str(tr.status)
        ep = open_.get(k)
        if ep is None:
            if status == "resolved":
                continue  # a resolve with nothing open (cannot happen from one engine's outbox)
            ep = open_[k] = Episode(tr.alertname, entity, float(tr.starts_at if tr.starts_at is not None else tr.ts),
                                    tr.severity, _rule_labels(tr.labels, tr.entity))
        ep.transitions.append({"status": status, "ts": tr.ts, "previous": None if tr.previous is None
                               else str(tr.previous)})
        ep.summary = tr.annotations.get("summary", "")
        ep.value = float(tr.value)
        ep.severity = tr.severity
        ep.labels = _rule_labels(tr.labels, tr.entity)
        if status == "firing" and ep.fired_at is None:
            ep.fired_at = float(tr.starts_at if tr.starts_at is not None else tr.ts)
        elif status == "flapping":
            ep.flapping = True
        elif status == "resolved":
            ep.resolved_at = float(tr.ends_at if tr.ends_at is not None else tr.ts)
            del open_[k]
            if ep.fired_at is None:
                cancelled += 1
            else:
                done.append(ep)
    done.extend(ep for ep in open_.values() if ep.fired_at is not None or ep.flapping)
    cancelled += sum(1 for ep in open_.values() if ep.fired_at is None and not ep.flapping)
    done.sort(key=lambda e: (e.alertname, e.start, e.entity))
    return done, cancelled


def _rule_labels(labels: Mapping[str, str], entity: Mapping[str, str]) -> dict[str, str]:
    """An alert's labels other than its entity's, its name and severity (compared on its own): ``domain``
    and the manifest's labels."""
    return {k: v for k, v in sorted(labels.items()) if k not in entity and k not in ("alertname", "severity")}


@dataclass
class RuleDiff:
    added: list[Episode] = field(default_factory=list)
    removed: list[Episode] = field(default_factory=list)
    changed: list[tuple[Episode, Episode, list[str]]] = field(default_factory=list)
    same: int = 0


def diff_episodes(baseline: Iterable[Episode], proposed: Iterable[Episode]) -> dict[str, RuleDiff]:
    """Per rule: alerts added (only proposed), removed (only baseline), changed (matched by rule, entity
    and condition start, differing in a compared field) and the number unchanged. Rules without any
    difference are included only when they have alerts."""
    base = {e.key: e for e in baseline}
    prop = {e.key: e for e in proposed}
    out: dict[str, RuleDiff] = {}
    for k in sorted(set(base) | set(prop), key=lambda k: (k[0], k[2], k[1])):
        d = out.setdefault(k[0], RuleDiff())
        b, p = base.get(k), prop.get(k)
        if b is None:
            d.added.append(p)  # type: ignore[arg-type]
        elif p is None:
            d.removed.append(b)
        else:
            fields = b.differences(p)
            if fields:
                d.changed.append((b, p, fields))
            else:
                d.same += 1
    return out


# -- KPIs ------------------------------------------------------------------------------------------------
def kpi_summary(points: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per measurement: windows (distinct window starts), points, series (distinct tag sets), the first and
    last window start (epoch s), and per field its total, mean and max over the points."""
    out: dict[str, dict[str, Any]] = {}
    for p in points:
        m = out.setdefault(p.measurement, {"windows": set(), "points": 0, "series": set(), "first": math.inf,
                                           "last": -math.inf, "fields": {}})
        m["windows"].add(p.ts)
        m["points"] += 1
        m["series"].add(tuple(sorted(p.tags.items())))
        m["first"] = min(m["first"], p.ts)
        m["last"] = max(m["last"], p.ts)
        for name, v in p.fields.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            f = m["fields"].setdefault(name, {"total": 0, "n": 0, "max": -math.inf})
            f["total"] += v
            f["n"] += 1
            f["max"] = max(f["max"], v)
    for m in out.values():
        m["windows"] = len(m["windows"])
        m["series"] = len(m["series"])
        for f in m["fields"].values():
            n = f.pop("n")
            f["mean"] = f["total"] / n if n else None
            if isinstance(f["total"], float):
                f["total"] = round(f["total"], 6)
    return dict(sorted(out.items()))


def write_kpis(points: Iterable[Any], out: Path, fmt: str) -> tuple[int, int]:
    """The final KPI points to ``out``: ``lp`` = InfluxDB line protocol (the worker's encoder), ``jsonl`` =
    one ``{"measurement", "tags", "fields", "time"}`` per line (time: window start, epoch s). Returns
    (written, not writable): a point line protocol cannot carry (a non-finite field) is counted, not written."""
    from cityops.sinks.influx import to_line

    written = skipped = 0
    with out.open("w", encoding="utf-8") as fh:
        for p in sorted(points, key=lambda p: (p.measurement, p.ts, sorted(p.tags.items()))):
            if fmt == "jsonl":
                fh.write(orjson.dumps({"measurement": p.measurement, "tags": p.tags, "fields": p.fields,
                                       "time": p.ts}, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
            else:
                try:
                    fh.write(to_line(p) + "\n")
                except ValueError:
                    skipped += 1
                    continue
            written += 1
    return written, skipped


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Everything a backtest found (``report_json`` / ``format_report`` present it)."""

    source: str
    proposed_dir: str
    baseline_dir: str | None
    records: int = 0  # records of the streams loaded (processed)
    read: int = 0  # every record read (the processed, those of topics no stream reads)
    compared: bool = False  # a baseline ran: the alerts listed are the proposal's
    plugin_manifests: list[tuple[str, str]] = field(default_factory=list)  # (plugin, folder) also loaded
    ignored: Counter[str] = field(default_factory=Counter)
    bad: BadLines = field(default_factory=BadLines)
    first_ts: float | None = None
    last_ts: float | None = None
    elapsed_s: float = 0.0
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    kpis: dict[str, dict[str, Any]] = field(default_factory=dict)
    proposed: list[Episode] = field(default_factory=list)
    baseline: list[Episode] | None = None
    cancelled: int = 0
    dead_letters: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letter_examples: list[dict[str, Any]] = field(default_factory=list)
    diff: dict[str, RuleDiff] | None = None
    transitions: int = 0
    open_windows: int = 0  # windows still open after the final commit (0: every window closed)


class Clock:
    """The backtest's wall clock: the records' timestamps (see the module docstring), never time.time()."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def replay(records: Iterable[Record], replays: list[Replay], clock: Clock, outcome: Outcome, *,
           flush_interval_s: float, idle_s: float, progress: Callable[[int], None] | None = None) -> None:
    """Feed ``records`` to every replay with the worker's commit cadence on the records' clock; at the end,
    let the partitions go idle and make the final commit that closes every window."""
    lead = replays[0]
    consumed = set(lead.topics)
    last_commit = clock.now
    n = 0
    for rec in records:
        n += 1
        if progress is not None and n % 1000 == 0:
            progress(1000)
        if rec.topic not in consumed:
            outcome.ignored[rec.topic] += 1
            continue
        if rec.timestamp is not None:
            if rec.timestamp > clock.now:
                clock.now = rec.timestamp
        else:
            newest = lead.engine.engine_time
            if newest is not None and newest > clock.now:
                clock.now = newest
        if clock.now - last_commit >= flush_interval_s:
            for r in replays:
                r.checkpoint()
            last_commit = clock.now
        for r in replays:
            r.process(rec)
        outcome.records += 1
        if rec.timestamp is not None:
            if outcome.first_ts is None:
                outcome.first_ts = rec.timestamp
            outcome.last_ts = clock.now
    if progress is not None:
        progress(n % 1000)
    outcome.read = n
    # Nothing more arrives: as the worker would after idle_partition_s, then every window is closed.
    for r in replays:
        r.checkpoint()
    clock.now += idle_s + flush_interval_s
    for r in replays:
        r.checkpoint(final=True)


def _source_kind(value: str) -> str:
    """"file" for an existing path or one that looks like a path (a separator, a .jsonl/.json suffix),
    else "topics" (comma-separated names; "all" = every topic the worker consumes)."""
    if Path(value).exists() or os.sep in value or "/" in value or value.endswith((".jsonl", ".json", ".ndjson")):
        return "file"
    return "topics"


def run_backtest(args: Any, env: Mapping[str, str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`cityops backtest` (see the module docstring); ``env``: the CITYOPS_* settings to run with; ``out``:
    the report (default stdout); ``err``: progress and notes (default stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    from cityops.alerts.wiring import resolve_rules_dir

    deployed = resolve_rules_dir(env.get("CITYOPS_RULES_DIR"))
    if args.baseline:
        baseline_dir: str | None = args.baseline
    else:
        baseline_dir = str(deployed) if deployed is not None else "none"
    proposed_dir = args.agents or baseline_dir
    for option, d in (("--agents", args.agents), ("--baseline", args.baseline)):
        if d and d.lower() != "none" and not Path(d).is_dir():
            raise ConfigError(f"{option} {d}: no such directory (a folder of agent manifests and runbooks)")
    compare = args.agents is not None and Path(proposed_dir).resolve() != Path(baseline_dir).resolve()
    kind = _source_kind(args.source)
    if kind == "file" and Path(args.source).is_dir():
        raise ConfigError(f"--from {args.source}: is a directory (a recording is a file: one Kafka record per JSON "
                          "line)")
    if kind == "file" and not Path(args.source).is_file():
        raise ConfigError(f"--from {args.source}: no such file (a recording: one Kafka record per JSON line)")
    tmp = Path(tempfile.mkdtemp(prefix="cityops-backtest-"))
    replays: list[Replay] = []
    try:
        clock = Clock()
        sides = [("proposed", proposed_dir, "--agents" if args.agents else "CITYOPS_RULES_DIR")]
        if compare:
            sides.append(("baseline", baseline_dir, "--baseline" if args.baseline else "CITYOPS_RULES_DIR"))
        settings = {}
        topics: list[str] = []
        for name, rules_dir, option in sides:
            s = backtest_settings(env, rules_dir=rules_dir, data_dir=tmp / name, pseudonym_key=args.pseudonym_key)
            # Manifests, runbooks, registry and parameters are checked before any input is read.
            try:
                probe = Replay(name, backtest_settings(env, rules_dir=rules_dir, data_dir=tmp / f"check-{name}",
                                                       pseudonym_key=args.pseudonym_key), clock)
            except RulesDirError as exc:
                # Named by what the user set (--agents/--baseline stand for CITYOPS_RULES_DIR here); any other
                # problem (a plugin's, a setting's) already names its own source.
                raise ConfigError(exc.named(option)) from None
            topics = topics or probe.topics
            if name == "proposed":
                from cityops.plugins import plugin_set

                plugin_folders = [(ld.label(), str(folder)) for ld, folder, _url in plugin_set(s).manifest_folders()
                                  ] if rules_dir.lower() != "none" else []
            probe.close()
            settings[name] = s
        outcome = Outcome(source=args.source, proposed_dir=str(proposed_dir),
                          baseline_dir=str(baseline_dir) if compare else None, compared=compare,
                          plugin_manifests=plugin_folders)
        from tqdm import tqdm

        disable = True if args.quiet else None  # None: tqdm shows the bar only on a terminal
        if kind == "file":
            path = Path(args.source)
            bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="backtest", file=err,
                       disable=disable)
            records: Iterable[Record] = read_recording(path, outcome.bad, on_bytes=bar.update)
            progress = None
        else:
            from cityops.cli import DEFAULT_BOOTSTRAP, _address, _kafka_security

            bootstrap, setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP",
                                          DEFAULT_BOOTSTRAP, dict(env))
            names = [t.strip() for t in args.source.split(",") if t.strip()]
            if names == ["all"]:
                names = topics
            reader = TopicReader(bootstrap, names, security=_kafka_security(bootstrap, dict(env)), setting=setting,
                                 option="--from", hint="(a recording file must exist, or name it with a path such "
                                                       "as ./file.jsonl)")
            bar = tqdm(total=reader.total, unit="rec", unit_scale=True, desc="backtest", file=err, disable=disable)
            records = reader
            progress = bar.update
        t0 = time.monotonic()
        records = iter(records)
        first = next(records, None)
        if first is not None and first.timestamp is not None:
            clock.now = first.timestamp  # the worker's clock when the first record arrives
        for name, _rules_dir, _option in sides:
            replays.append(Replay(name, settings[name], clock))
        flush = settings["proposed"].flush_interval_s
        idle = settings["proposed"].idle_partition_s
        chained: Iterable[Record] = records if first is None else _chain(first, records)
        replay(chained, replays, clock, outcome, flush_interval_s=flush, idle_s=idle, progress=progress)
        bar.close()
        outcome.elapsed_s = time.monotonic() - t0
        if outcome.read == 0:
            print(f"cityops: warning: no records in {args.source}", file=err)
        lead = replays[0]
        for (stream, what), n in sorted(lead.engine.counts.items()):
            outcome.events.setdefault(stream, {})[what] = n
        for (stream, reason), n in sorted(lead.dead_letters.items()):
            outcome.dead_letters.setdefault(stream, {})[reason] = n
        outcome.dead_letter_examples = lead.dead_letter_examples
        outcome.kpis = kpi_summary(lead.points.values())
        outcome.open_windows = len(lead.engine.windows.table.data)
        outcome.transitions = len(lead.transitions)
        outcome.proposed, outcome.cancelled = episodes(lead.transitions)
        if compare:
            outcome.baseline, _ = episodes(replays[1].transitions)
            outcome.diff = diff_episodes(outcome.baseline, outcome.proposed)
        if args.kpis_out:
            fmt = args.kpis_format or ("jsonl" if args.kpis_out.endswith((".jsonl", ".json")) else "lp")
            written, skipped = write_kpis(lead.points.values(), Path(args.kpis_out), fmt)
            print(f"KPI points: {written} written to {args.kpis_out} ({fmt})"
                  + (f", {skipped} not writable as line protocol (non-finite field)" if skipped else ""), file=err)
        out.write(format_report(outcome, max_listed=args.max_listed))
        if args.json:
            Path(args.json).write_bytes(orjson.dumps(report_json(outcome), option=orjson.OPT_INDENT_2))
        return 0
    finally:
        for r in replays:
            r.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _chain(first: Record, rest: Iterator[Record]) -> Iterator[Record]:
    yield first
    yield from rest


# -- presenting ----------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, CITY_TZ).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def _entity(ep: Episode) -> str:
    return ",".join(f"{k}={v}" for k, v in ep.entity) or "(no entity)"


def _episode_line(ep: Episode) -> str:
    fired = f"firing {_iso(ep.fired_at)}" if ep.fired_at is not None else "flapping"
    resolved = f" → resolved {_iso(ep.resolved_at)}" if ep.resolved_at is not None else " (still firing at the end)"
    flap = " [flapping]" if ep.flapping else ""
    return f"    {_entity(ep)}  {fired}{resolved}{flap}  value={_num(ep.value)}"


def format_report(o: Outcome, max_listed: int = 20) -> str:
    """The text report: input, events, KPIs, alerts per rule, and the difference per rule."""
    lines: list[str] = []
    add = lines.append
    events = sum(n for counts in o.events.values() for n in counts.values())
    rate = events / o.elapsed_s if o.elapsed_s > 0 else 0.0
    ignored = sum(o.ignored.values())
    add(f"backtest of {o.source}: {o.read} records read, {o.records} of the streams loaded"
        + (f" ({ignored} of topics no stream reads)" if ignored else "")
        + f"; {events} events in {o.elapsed_s:.1f} s ({rate:,.0f} "
        f"events/s), record time {_iso(o.first_ts)} .. {_iso(o.last_ts)}")
    add(f"  manifests: {o.proposed_dir}" + "".join(f", {folder} ({label})" for label, folder in o.plugin_manifests)
        + (f"   baseline: {o.baseline_dir}" if o.baseline_dir else
           "   (no --agents other than the deployed ones: no comparison)"))
    for topic, n in sorted(o.ignored.items()):
        add(f"  ignored: {n} records of {topic} (no stream loaded reads it)")
    if o.bad.count:
        add(f"  bad lines: {o.bad.count} (not processed)")
        for line, reason in o.bad.listed[:max_listed]:
            add(f"    line {line}: {reason}")
        if o.bad.count > min(len(o.bad.listed), max_listed):
            add(f"    ... {o.bad.count - min(len(o.bad.listed), max_listed)} more")
    add("")
    add("events (per stream and outcome):")
    for stream, counts in sorted(o.events.items()):
        add(f"  {stream}: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for stream, reasons in sorted(o.dead_letters.items()):
        add(f"  dead letters {stream}: " + " ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    add("")
    add("KPIs (final points, every window closed):")
    if not o.kpis:
        add("  none")
    for m, s in o.kpis.items():
        add(f"  {m}: windows={s['windows']} points={s['points']} series={s['series']} "
            f"{_iso(s['first'])} .. {_iso(s['last'])}")
        add("    " + "  ".join(f"{f}: total={_num(v['total'])} mean={_num(v['mean'])} max={_num(v['max'])}"
                               for f, v in s["fields"].items()))
    add("")
    by_rule: dict[str, list[Episode]] = {}
    for ep in o.proposed:
        by_rule.setdefault(ep.alertname, []).append(ep)
    add(f"alerts{' (proposed)' if o.compared else ''}: {len(o.proposed)} in {len(by_rule)} rules, {o.transitions} transitions"
        + (f"; {o.cancelled} pending alerts cancelled before firing" if o.cancelled else ""))
    for rule, eps in sorted(by_rule.items()):
        add(f"  {rule} ({eps[0].severity}): {len(eps)}")
        for ep in eps[:max_listed]:
            add(_episode_line(ep))
        if len(eps) > max_listed:
            add(f"    ... {len(eps) - max_listed} more")
    if o.diff is not None:
        add("")
        n_added = sum(len(d.added) for d in o.diff.values())
        n_removed = sum(len(d.removed) for d in o.diff.values())
        n_changed = sum(len(d.changed) for d in o.diff.values())
        add(f"difference to the baseline ({len(o.baseline or [])} alerts): {n_added} added, {n_removed} removed, "
            f"{n_changed} changed")
        for rule, d in o.diff.items():
            if not (d.added or d.removed or d.changed):
                add(f"  {rule}: unchanged ({d.same})")
                continue
            add(f"  {rule}: +{len(d.added)} -{len(d.removed)} ~{len(d.changed)} ={d.same}")
            for ep in d.added[:max_listed]:
                add("    added  " + _episode_line(ep).strip())
            for ep in d.removed[:max_listed]:
                add("    removed " + _episode_line(ep).strip())
            for b, p, fields in d.changed[:max_listed]:
                what = ", ".join(f"{f}: {_show(f, getattr(b, f))} → {_show(f, getattr(p, f))}" for f in fields)
                add(f"    changed {_entity(p)} from {_iso(p.start)}: {what}")
            more = max(0, len(d.added) - max_listed) + max(0, len(d.removed) - max_listed) + \
                max(0, len(d.changed) - max_listed)
            if more:
                add(f"    ... {more} more")
    return "\n".join(lines) + "\n"


def _show(name: str, value: Any) -> str:
    if name in ("fired_at", "resolved_at"):
        return _iso(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return repr(value) if isinstance(value, str) else str(value)


def report_json(o: Outcome) -> dict[str, Any]:
    """The report as JSON data (times: event time or record time, epoch seconds)."""
    rules: dict[str, list[dict[str, Any]]] = {}
    for ep in o.proposed:
        rules.setdefault(ep.alertname, []).append(ep.to_json())
    out: dict[str, Any] = {
        "input": {"source": o.source, "records": o.records, "records_read": o.read, "elapsed_s": round(o.elapsed_s, 3),
                  "first_timestamp": o.first_ts,
                  "last_timestamp": o.last_ts, "ignored": dict(o.ignored), "bad_lines": o.bad.count,
                  "bad_lines_listed": [{"line": n, "reason": r} for n, r in o.bad.listed]},
        "manifests": o.proposed_dir,
        "plugin_manifests": [{"plugin": label, "folder": folder} for label, folder in o.plugin_manifests],
        "baseline_manifests": o.baseline_dir,
        "events": o.events,
        "dead_letters": o.dead_letters,
        "dead_letter_examples": o.dead_letter_examples,
        "kpis": o.kpis,
        "open_windows_at_end": o.open_windows,
        "alerts": rules,
        "cancelled_pending": o.cancelled,
    }
    if o.diff is not None:
        base: dict[str, list[dict[str, Any]]] = {}
        for ep in o.baseline or []:
            base.setdefault(ep.alertname, []).append(ep.to_json())
        out["baseline_alerts"] = base
        out["diff"] = {rule: {"added": [e.to_json() for e in d.added], "removed": [e.to_json() for e in d.removed],
                              "changed": [{"baseline": b.to_json(), "proposed": p.to_json(), "fields": f}
                                          for b, p, f in d.changed],
                              "unchanged": d.same}
                       for rule, d in o.diff.items()}
    return out


def run_record(args: Any, env: Mapping[str, str], err: TextIO | None = None) -> int:
    """`cityops record`: topics' retained history → a recording (the order ``TopicReader`` reads)."""
    err = err or sys.stderr
    from tqdm import tqdm

    from cityops.cli import DEFAULT_BOOTSTRAP, _address, _kafka_security

    bootstrap, setting = _address(args.bootstrap, "--bootstrap", "CITYOPS_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP,
                                  dict(env))
    names = [t.strip() for t in args.topic.split(",") if t.strip()]
    reader = TopicReader(bootstrap, names, security=_kafka_security(bootstrap, dict(env)), setting=setting,
                         option="--topic")
    n = 0
    with open(args.out, "wb") as fh, tqdm(total=reader.total, unit="rec", unit_scale=True, desc="record",
                                          file=err, disable=True if args.quiet else None) as bar:
        for rec in reader:
            fh.write(record_line(rec))
            n += 1
            if n % 1000 == 0:
                bar.update(1000)
        bar.update(n % 1000)
    print(f"recorded {n} records of {', '.join(names)} to {args.out}", file=err)
    return 0
