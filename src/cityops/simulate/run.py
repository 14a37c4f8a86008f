"""`cityops simulate`: merge the city and food simulators, batch, pace, and send to Kafka or a JSONL file."""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from cityops.units import CITY_TZ

CST = CITY_TZ  # cityops.units: the one definition
STREAM_GROUPS = {
    "traffic": ("traffic.card-taps", "traffic.road-detectors"),
    "road": ("traffic.road-detectors",),
    "taps": ("traffic.card-taps",),
    "health": ("health.card-events",),
}


def _event_ts(topic: str, value: dict[str, Any]) -> str:
    if topic == "food.trace-events":
        events = value.get("epcisBody", {}).get("eventList") or [value]
        return str(events[0].get("eventTime", ""))
    return str(value.get("ts", ""))


class Recording:
    """`simulate --to file`: a recording for `cityops backtest` (cityops.backtest: one Kafka record per line).

    Each message is stamped with the event time the simulation has reached when it is sent (``at``, ms):
    what a live feed's broker clock would read. A message given a ``due`` time (an EPCIS document: a party
    uploads it after capturing its events) is held until the simulation passes it, then written stamped so.
    """

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.now: int | None = None
        self.held: list[tuple[int, int, str, bytes]] = []
        self.seq = 0

    def at(self, ms: int) -> None:
        if self.now is None or ms > self.now:
            self.now = ms
        while self.held and self.held[0][0] <= self.now:
            due, _, topic, raw = heapq.heappop(self.held)
            self._write(topic, raw, due)

    def __call__(self, topic: str, raw: bytes, due: int | None = None) -> None:
        if due is not None and (self.now is None or due > self.now):
            self.seq += 1
            heapq.heappush(self.held, (due, self.seq, topic, raw))
        else:
            self._write(topic, raw, self.now)

    def _write(self, topic: str, raw: bytes, stamp: int | None) -> None:
        ts = b"" if stamp is None else b',"timestamp":' + str(stamp).encode()
        self.fh.write(b'{"topic":' + orjson.dumps(topic) + ts + b',"value":' + raw + b"}\n")

    def close(self) -> None:
        while self.held:
            due, _, topic, raw = heapq.heappop(self.held)
            self._write(topic, raw, due)
        self.fh.close()


def _newest_ms(topic: str, value: dict[str, Any]) -> int:
    """The newest event time in a message (an EPCIS document spans many), ms since the epoch."""
    if topic == "food.trace-events":
        times = [e.get("eventTime") for e in value.get("epcisBody", {}).get("eventList") or [value]]
        return max(round(datetime.fromisoformat(str(t)).timestamp() * 1000) for t in times if t)
    return round(datetime.fromisoformat(str(value.get("ts", ""))).timestamp() * 1000)


def events(*, seed: int, start: datetime, duration_s: float, rate: float | None, streams: set[str],
           incidents: bool, food_batch: int = 1, warmup_s: float = 7200.0) -> tuple[Iterator[tuple[str, dict[str, Any]]], list[Any]]:
    """All simulated (topic, value) pairs in event-time order, and the incidents' ground truth."""
    from cityops.simulate import food, traffic

    topics: list[str] = []
    for s in streams:
        topics.extend(STREAM_GROUPS.get(s, ()))
    topics = sorted(set(topics))
    iters: list[Iterator[tuple[str, dict[str, Any]]]] = []
    truth: list[Any] = []
    food_rate = None
    city_rate = rate
    if rate is not None and "food" in streams and topics:
        food_rate, city_rate = rate * 0.05, rate * 0.95
    elif rate is not None and "food" in streams:
        food_rate = rate
    if topics:
        if incidents:
            it, t = traffic.generate_with_truth(seed=seed, start=start, duration_s=duration_s, rate=city_rate,
                                                streams=topics, warmup_s=warmup_s)
            iters.append(it)
            truth.extend(t)
        else:
            iters.append(traffic.generate(seed=seed, start=start, duration_s=duration_s, rate=city_rate,
                                          streams=topics))
    if "food" in streams:
        if incidents:
            it, t = food.generate_with_truth(seed=seed, start=start, duration_s=duration_s, rate=food_rate,
                                             batch=food_batch, incidents=True)
            iters.append(it)
            truth.extend(t)
        else:
            iters.append(food.generate(seed=seed, start=start, duration_s=duration_s, rate=food_rate,
                                       batch=food_batch))
    if len(iters) == 1:
        return iters[0], truth
    return heapq.merge(*iters, key=lambda tv: _event_ts(*tv)), truth


class Batcher:
    """Groups consecutive events of a topic into JSON-array messages of up to ``size`` events."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.buffers: dict[str, list[dict[str, Any]]] = {}

    def add(self, topic: str, value: dict[str, Any]) -> tuple[str, bytes] | None:
        if topic == "food.trace-events":  # EPCIS documents carry their own batching (eventList)
            return topic, orjson.dumps(value)
        if self.size == 1:
            return topic, orjson.dumps(value)
        buf = self.buffers.setdefault(topic, [])
        buf.append(value)
        if len(buf) >= self.size:
            self.buffers[topic] = []
            return topic, orjson.dumps(buf)
        return None

    def drain(self) -> list[tuple[str, bytes]]:
        out = [(t, orjson.dumps(b)) for t, b in self.buffers.items() if b]
        self.buffers = {}
        return out


def default_start(duration_s: float, now: datetime | None = None) -> datetime:
    """The latest 06:00 (+08:00) from which ``duration_s`` of event time ends by the wall clock ``now``.

    The worker dead-letters events dated more than CITYOPS_MAX_FUTURE_S ahead of their Kafka record's
    timestamp (reason ``future``); a period that ends by the wall clock is never ahead of it, whatever the
    ``--speedup``: at speedup s the event time at wall second w is start + s·w, at most start + duration ≤ now.
    """
    now = now or datetime.now(CST)
    start = now.astimezone(CST).replace(hour=6, minute=0, second=0, microsecond=0)
    days = max(0, int(-(-(start.timestamp() + duration_s - now.timestamp()) // 86400)))  # ceil, in whole days
    return start - timedelta(days=days)


def run_simulation(args: argparse.Namespace, kafka_security: dict[str, Any] | None = None) -> int:
    """Generate events to ``args.to``; ``kafka_security``: SASL/TLS producer arguments
    (cityops.connections.kafka_client_security; default PLAINTEXT)."""
    start = args.start or default_start(args.duration)
    ahead = start.timestamp() + args.duration - time.time()
    if args.to == "kafka" and ahead > 0:
        print(f"cityops simulate: warning: the period ends {ahead:.0f} s after the wall clock; events dated more "
              "than CITYOPS_MAX_FUTURE_S (300 s) ahead of it when sent are dead-lettered by the worker "
              "(reason future). Leave --start unset to replay a period that ends now.", file=sys.stderr)
    streams = {s.strip() for s in args.streams.split(",") if s.strip()}
    unknown = streams - set(STREAM_GROUPS) - {"food"}
    if unknown:
        print(f"cityops simulate: unknown stream(s) {sorted(unknown)}; use traffic, road, taps, health, food",
              file=sys.stderr)
        return 2
    # First: a missing broker stops the command before anything is written.
    send, close = _sink(args, kafka_security)
    it, truth = events(seed=args.seed, start=start, duration_s=args.duration, rate=args.rate, streams=streams,
                       incidents=args.incidents, food_batch=max(1, min(args.batch, 50)), warmup_s=args.warmup)
    if args.incidents:
        Path(args.truth).write_text(json.dumps([truth_row(i) for i in truth], ensure_ascii=False, indent=1))
        if not args.quiet:
            print(f"ground truth: {len(truth)} incidents → {args.truth}", file=sys.stderr)
    batcher = Batcher(args.batch)
    t_wall0 = time.monotonic()
    t_ev0: float | None = None
    n_events = n_msgs = 0
    last_report = t_wall0
    paced_every = 200
    to_file = args.to == "file"
    try:
        for topic, value in it:
            n_events += 1
            if to_file:
                send.at(round(datetime.fromisoformat(_event_ts(topic, value)).timestamp() * 1000))
            if args.speedup > 0 and n_events % paced_every == 1:
                ts = datetime.fromisoformat(_event_ts(topic, value)).timestamp()
                if t_ev0 is None:
                    t_ev0 = ts
                delay = (ts - t_ev0) / args.speedup - (time.monotonic() - t_wall0)
                if delay > 0:
                    for t, raw in batcher.drain():
                        send(t, raw)
                        n_msgs += 1
                    time.sleep(min(delay, 5.0))
            out = batcher.add(topic, value)
            if out is not None:
                # An EPCIS document spans many events: a recording holds it until its newest one.
                send(*out, due=_newest_ms(topic, value) if to_file and topic == "food.trace-events" else None)
                n_msgs += 1
            now = time.monotonic()
            if not args.quiet and now - last_report >= 1.0:
                last_report = now
                print(f"\rsimulate: {n_events:,} events in {n_msgs:,} messages, "
                      f"event time {_event_ts(topic, value)[:19]}, {n_events / (now - t_wall0):,.0f} ev/s",
                      end="", file=sys.stderr, flush=True)
        for t, raw in batcher.drain():
            send(t, raw)
            n_msgs += 1
    finally:
        close()
    if not args.quiet:
        print(f"\rsimulate: done, {n_events:,} events in {n_msgs:,} messages "
              f"({time.monotonic() - t_wall0:.1f}s)" + " " * 20, file=sys.stderr)
    return 0


def truth_row(inc: Any) -> dict[str, Any]:
    """One incident as plain JSON data: rule, entity, start (ISO), and description/end when known."""
    if hasattr(inc, "__dataclass_fields__"):
        row = asdict(inc)
    elif isinstance(inc, tuple):
        row = dict(zip(("rule", "entity", "start"), inc))
    else:
        row = dict(inc)
    for k, v in list(row.items()):
        if isinstance(v, datetime):
            row[k] = v.isoformat()
    return row


def _sink(args: argparse.Namespace, kafka_security: dict[str, Any] | None = None) -> tuple[Any, Any]:
    if args.to == "file":
        rec = Recording(open(args.out, "wb"))
        return rec, rec.close
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from cityops.errors import Unreachable
    from cityops.reach import check_kafka, describe, quiet_logs

    setting = getattr(args, "bootstrap_setting", "--bootstrap")
    check_kafka(args.bootstrap, setting)
    try:
        with quiet_logs("kafka"):
            producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=20, batch_size=1 << 20,
                                     max_request_size=8 << 20, acks=1,
                                     **(kafka_security or {}))
    except KafkaError as exc:
        raise Unreachable("the Kafka broker", args.bootstrap, setting, describe(exc)) from None

    def send_kafka(topic: str, raw: bytes, due: int | None = None) -> None:
        producer.send(topic, raw)  # timestamped by the producer: the wall clock

    def close() -> None:
        producer.flush()
        producer.close()

    return send_kafka, close
