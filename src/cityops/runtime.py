"""The worker's moving parts around the engine: checkpoint cadence, sinks, outboxes and backpressure.

Transport-agnostic: the Faust agents (cityops.agents.app) feed ``process()``; the benchmark and tests can
drive it directly. Every output (InfluxDB points, dead letters, alert transitions) leaves only from
committed state, so a crash can repeat a delivery (idempotent: same point key, same record id) but never
invent or lose one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cityops.alerts.spec import RuleSpec
from cityops.engine.kafka_state import Fenced, KafkaStateStore, StateUnavailable
from cityops.engine.pipeline import DEAD_LETTER_TOPIC, Engine, Point, record_digest
from cityops.engine.state import StateStore
from cityops.errors import ConfigError
from cityops.metrics import Metrics
from cityops.settings import Settings
from cityops.sinks.influx import InfluxPointSink, InfluxSink, InfluxUnavailable
from cityops.sinks.kafka import KafkaRecord, KafkaTopicSink
from cityops.streams.city_streams import Pseudonymizer
from cityops.types import Sink, StreamSetup, Transition

log = logging.getLogger("cityops.runtime")

ALERTS_TOPIC = "cityops.alerts"
EXIT_STATE_UNAVAILABLE = 5  # a commit could not be written to cityops.state in time
EXIT_FENCED = 4  # the worker found its task claimed by another worker (CITYOPS_STATE_STORE=kafka)


@dataclass(frozen=True)
class ShutdownReport:
    """What the final flush at stop left undelivered (counts of committed outputs); all zero = clean.

    Whatever is left stays committed in ``data_dir`` and is delivered by the next worker started on it.
    """

    influx_pending_points: int
    alert_outbox: int
    dead_letter_outbox: int
    data_dir: str
    cause: str = ""

    @property
    def clean(self) -> bool:
        return not (self.influx_pending_points or self.alert_outbox or self.dead_letter_outbox)

    def line(self) -> str:
        """The worker's last log line: ``stop: flushed cleanly ...`` or ``stop: flush incomplete ...``."""
        counts = (f"influx_pending_points={self.influx_pending_points} alert_outbox={self.alert_outbox} "
                  f"dead_letter_outbox={self.dead_letter_outbox}")
        if self.clean:
            return f"stop: flushed cleanly: every committed output delivered {counts}"
        return (f"stop: flush incomplete: {counts} kept_in={self.data_dir} (committed; delivered by the next "
                f"start on this data dir) cause={self.cause or 'unknown'}")


def build_streams(settings: Settings, rules: Mapping[str, RuleSpec] | None = None) -> list[Any]:
    """All streams the worker consumes: every loaded plugin's (``cityops.plugins``: the built-in agents, then
    the installed plugins CITYOPS_PLUGINS selects), built from settings; ``rules`` (alert name -> RuleSpec,
    the loaded manifests; None = alerting off) give streams that evaluate rules their names and thresholds.
    With ``CITYOPS_TASK``, only that task's streams. Raises ConfigError naming the plugin or setting."""
    from cityops.plugins import plugin_set

    plugins = plugin_set(settings)
    check_task(settings, plugins)
    pseudo = Pseudonymizer(settings.pseudonym_key.get_secret_value().encode())
    return list(plugins.build_streams(StreamSetup(settings, pseudo, dict(rules or {})), settings.task))


def check_task(settings: Settings, plugins: Any) -> None:
    """``CITYOPS_TASK`` names a task of the loaded plugins (ConfigError naming the setting otherwise)."""
    if settings.task is not None and settings.task not in plugins.tasks():
        raise ConfigError(f"CITYOPS_TASK: {settings.task!r} is no task of the loaded agents "
                          f"({', '.join(sorted(plugins.tasks()))})")


def open_state_store(settings: Settings) -> StateStore:
    """The engine's state store, restored: local (``CITYOPS_DATA_DIR``) or on ``cityops.state`` (Kafka).

    Kafka: the task's topic (``cityops.state.<task>``, CITYOPS_TASK) is read from its latest complete
    snapshot and claimed for this worker; raises ``Fenced`` if another worker claims it first.
    """
    if settings.state_store == "kafka":
        return kafka_state_store(settings).open()
    return StateStore(Path(settings.data_dir) / "state").open()


def kafka_state_store(settings: Settings) -> KafkaStateStore:
    """The (unopened) ``KafkaStateStore`` of ``CITYOPS_TASK``'s state topic. ConfigError without a task: the
    tasks' workers are started by ``cityops worker`` (``cityops.ha``), each with its task."""
    if settings.task is None:
        raise ConfigError("CITYOPS_STATE_STORE=kafka keeps state per task: set CITYOPS_TASK (`cityops worker` "
                          "without it runs every task under the lease group)")
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # a cache (Faust's own files); may be empty
    from cityops.connections import kafka_client_security
    from cityops.engine.kafka_state import state_topic

    return KafkaStateStore(settings.kafka_bootstrap, topic=state_topic(settings.task),
                           security=kafka_client_security(settings), chunk_bytes=settings.state_chunk_bytes,
                           snapshot_bytes=settings.state_snapshot_bytes)


class Runtime:
    """Engine + sinks + outbox dispatch. ``start()``/``stop()`` bracket its life; ``tick()`` commits."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, *,
                 clock: Callable[[], float] = time.time, store: StateStore | None = None) -> None:
        """``store``: an opened state store (default ``open_state_store(settings)``; a backtest passes its own)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.store = store if store is not None else open_state_store(settings)
        self.alerts = None
        rules: list[Any] = []
        registry = None
        try:
            from cityops.alerts.wiring import build_alerting
        except ImportError:
            build_alerting = None  # type: ignore[assignment]
        if build_alerting is not None:
            self.alerts, rules, registry = build_alerting(settings, self.store, self.metrics.on_unlisted)
        self.registry_gate = registry  # /healthz reports its mode
        self.engine = Engine(
            self.store, build_streams(settings, self.alerts.rules if self.alerts is not None else None),
            allowed_lateness_s=settings.allowed_lateness_s, stream_lateness_s=settings.stream_lateness_s,
            max_future_s=settings.max_future_s, dedup_horizon_s=settings.dedup_horizon_s,
            window_s=settings.window_s, signals=self.alerts, rules=rules, registry=registry,
            settings=settings, on_outcome=self.metrics.on_outcome, now=clock,
        )
        self._reload_ignored = ""
        self.reloader: Any = None  # the manifests' reload (SIGHUP, CITYOPS_RULES_WATCH_S); None: rules are off
        if self.alerts is not None:
            from cityops.alerts.reload import RuleReloader
            from cityops.alerts.wiring import build_rules, load_rules, one_shot_rules, resolve_rules_dir

            self.reloader = RuleReloader(
                settings, self.engine, self.alerts, resolve_rules_dir(settings.rules_dir), load=load_rules,
                build=build_rules, one_shot=one_shot_rules, watch_s=settings.rules_watch_s, clock=clock,
                on_result=self._reload_result)
            self.metrics.manifest_generation.set(self.reloader.generation)
            self.metrics.manifest_last_reload_successful.set(1)
        if self.store.undeclared():
            # Not read by this configuration (a rule taken out of the manifests): carried forward unread.
            log.warning("state tables not used by this configuration, kept as written: %s",
                        ",".join(self.store.undeclared()))
        from cityops.connections import alertmanager_http, influx_http

        token = settings.influx_secret.get_secret_value() if settings.influx_secret else None
        self.influx = InfluxSink(str(settings.influx_url), settings.influx_database, token=token,
                                 org=settings.influx_org, batch_size=settings.influx_batch_size,
                                 max_pending=settings.max_pending_points, metrics=self.metrics,
                                 on_rejected=self._influx_refused, http=influx_http(settings))
        self.alertmanager: Any = None
        if settings.alertmanager_url is not None:
            from cityops.sinks.alertmanager import AlertmanagerSink
            # One attempt per delivery round: the outbox keeps the alert and the dispatcher retries with
            # backoff, so an outage never blocks KPI writes behind Alertmanager's retries.
            self.alertmanager = AlertmanagerSink(str(settings.alertmanager_url), counter=self.metrics.alert_notifications,
                                                 resend_s=settings.alert_resend_s, attempts=1,
                                                 http=alertmanager_http(settings))
        self.producer: Any = None
        # Each output reads the outbox with its own cursor: one output's outage never holds back another.
        self.dead_letter_sink: KafkaTopicSink[dict[str, Any]] = KafkaTopicSink(
            "dead_letters", DEAD_LETTER_TOPIC, lambda: self.producer, dead_letter_record)
        self.alert_sinks: list[Sink[Transition]] = [
            KafkaTopicSink("kafka", ALERTS_TOPIC, lambda: self.producer, alert_record),
            InfluxPointSink("influx", self.influx, alert_point),
        ]
        if self.alertmanager is not None:
            self.alert_sinks.append(self.alertmanager)
        self._probe: Any = None  # a group-less consumer that reads the record at a committed offset
        self.assigned: set[tuple[str, int]] = set()
        self.verified: set[tuple[str, int]] = set()  # partitions checked since their last assignment
        # Set by the app: moves the input consumer of a partition to an offset (after a rewind).
        self.seek: Callable[[tuple[str, int], int], Awaitable[None]] | None = None
        self._last_offset_check = clock()
        self._check_lock = asyncio.Lock()
        self._acks: list[Any] = []
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._last_commit = clock()
        self._last_resend = 0.0
        self.ready = False
        self._ready = asyncio.Event()
        self.backpressure = False
        self.shutdown: ShutdownReport | None = None
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from cityops.connections import kafka_client_security

        delay = 0.5
        while True:
            try:
                await self.influx.setup()
                break
            except InfluxUnavailable as exc:
                # As during an outage mid-run: keep trying, and consume nothing until it answers (the
                # agents wait for readiness), so nothing is lost and no backlog builds up in memory.
                log.warning("cannot reach InfluxDB at %s (set by CITYOPS_INFLUX_URL): %s; retrying in %.1fs, "
                            "consuming nothing until it answers", self.settings.influx_url, exc.__cause__ or exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        # Dead letters and alert transitions: the same SASL/TLS as the Faust app's clients.
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                         max_request_size=self.settings.max_message_bytes + (64 << 10),
                                         linger_ms=5, **kafka_client_security(self.settings))
        await self.producer.start()
        from aiokafka import AIOKafkaConsumer

        self._probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                       enable_auto_commit=False, auto_offset_reset="none",
                                       max_partition_fetch_bytes=self.settings.max_message_bytes + (64 << 10),
                                       **kafka_client_security(self.settings))
        await self._probe.start()
        self._dispatcher = asyncio.ensure_future(self._dispatch_loop())
        self.ready = True
        self._ready.set()

    async def stop(self, timeout_s: float = 15.0) -> ShutdownReport:
        """Final commit and flush (SIGTERM path): what was consumed is committed and written if possible.

        Returns (and keeps in ``self.shutdown``) what could not be delivered within ``timeout_s`` seconds.
        """
        self._stopping = True
        self.tick()
        log.info("stop: committed; delivering")
        if self._dispatcher is not None:
            # The flag too: Python 3.11's wait_for can swallow a cancel that races with the wake-up the
            # commit above just sent, and the loop would run on until the 5 s wait below gives up.
            self._dispatcher.cancel()
            await asyncio.wait({self._dispatcher}, timeout=5.0)
            log.info("stop: dispatcher stopped")
        cause = ""
        deadline = time.monotonic() + timeout_s
        for _ in range(3):
            try:
                await asyncio.wait_for(self.deliver(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                cause = f"not done within {timeout_s:g}s"
            except InfluxUnavailable as exc:
                cause = str(exc)
            except Exception as exc:  # a Kafka or Alertmanager error: the report below says what is left
                log.exception("stop: delivery failed")
                cause = f"{type(exc).__name__}: {exc}"
            # Commit the confirmations; a commit can also close windows and so queue their final points,
            # which the next round delivers.
            self.tick()
            report = self._report(cause)
            if report.clean or cause:
                break
        else:
            report = self._report("outputs still queued after 3 delivery rounds")
        self.shutdown = report
        log.info("stop: closing clients")
        if self.producer is not None:
            await asyncio.wait_for(self.producer.stop(), 10)
        if self._probe is not None:
            await asyncio.wait_for(self._probe.stop(), 10)
        await self.influx.close()
        if self.alertmanager is not None:
            await self.alertmanager.close()
        if isinstance(self.store, KafkaStateStore):
            self.store.handover()  # after the last commit: standbys may take the task over at once
        self.store.close()
        (log.info if self.shutdown.clean else log.warning)("%s", self.shutdown.line())
        return self.shutdown

    def _report(self, cause: str) -> ShutdownReport:
        return ShutdownReport(
            influx_pending_points=len(self.influx.pending),
            alert_outbox=self.alerts.outbox_size() if self.alerts is not None else 0,
            dead_letter_outbox=len(self.engine.dlq.data),
            data_dir=str(self.settings.data_dir),
            cause=" ".join(cause.split()),
        )

    # -- input --------------------------------------------------------------------------------------
    def process(self, topic: str, partition: int, offset: int, value: bytes | None, ack: Any = None,
                timestamp: float | None = None) -> None:
        """One record; ``timestamp`` is its Kafka timestamp in epoch seconds (the ``future`` check's wall clock)."""
        self.engine.process(topic, partition, offset, value, timestamp)
        if ack is not None:
            self._acks.append(ack)

    def process_records(self, topic: str, partition: int, records: Sequence[Any], release: Any = None) -> None:
        """Records of one partition in offset order, as aiokafka gives them (``.offset``, ``.value`` bytes,
        ``.timestamp`` in epoch ms); ``release()`` is called after the commit that covers them."""
        process = self.engine.process
        for rec in records:
            ts = rec.timestamp
            process(topic, partition, rec.offset, rec.value, None if ts is None else ts / 1000.0)
        if release is not None:
            self._acks.append(release)

    async def wait_writable(self, topic: str) -> None:
        """Hold the agent until the runtime is ready (InfluxDB answered), and while the sink backlog is full."""
        if not self.ready:
            await self._ready.wait()
        if not self.influx.full:
            return
        self.metrics.backpressure.labels(stream=topic).set(1)
        self.backpressure = True
        log.warning("backpressure stream=%s pending=%d: pausing consumption until InfluxDB catches up",
                    topic, len(self.influx.pending))
        while self.influx.full:
            await asyncio.sleep(0.2)
        self.backpressure = False
        self.metrics.backpressure.labels(stream=topic).set(0)

    # -- offsets that go backwards -------------------------------------------------------------------
    async def check_offsets(self, tps: Iterable[tuple[str, int]], timeout_s: float = 3.0) -> list[tuple[str, int]]:
        """Check that each partition's log still holds the record at its committed offset; rewind those whose
        log went backwards (topic deleted and re-created, log truncated). Returns the rewound partitions.

        The engine skips records at or below its committed offsets (they were applied before a crash), so
        a log whose offsets start over would be skipped silently up to the old offset. A partition's log
        went backwards when the record at its committed offset is gone (the fetch there returns nothing and
        the log end offset is not past it, or returns a later offset) or is another record (its digest
        differs from the one committed). The worker then logs it once with both offsets, counts it in
        ``cityops_offsets_backwards_total{topic,partition}``, and reads the partition again from its log
        start offset (``Engine.rewind``): the new records are applied, and events it shares with the old
        log are counted once by the dedup table. Called at partition assignment and every
        ``offset_check_s`` seconds; ``timeout_s`` bounds the fetch.
        """
        async with self._check_lock:  # one probe consumer: one check at a time
            return await self._check_offsets(tps, timeout_s)

    async def _check_offsets(self, tps: Iterable[tuple[str, int]], timeout_s: float) -> list[tuple[str, int]]:
        from aiokafka import TopicPartition
        from aiokafka.errors import OffsetOutOfRangeError

        committed = self.engine.committed_records()
        todo = {tp: committed[tp] for tp in tps if tp in committed and tp[0] in self.engine.streams}
        if not todo or self._probe is None:
            return []
        probe = self._probe
        ktps = {TopicPartition(*tp): tp for tp in todo}
        probe.assign(list(ktps))
        for ktp, tp in ktps.items():
            probe.seek(ktp, todo[tp][0])
        found: dict[tuple[str, int], Any] = {}
        out_of_range: set[tuple[str, int]] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiting = [k for k in ktps]
        while waiting and loop.time() < deadline:
            try:
                got = await probe.getmany(*waiting, timeout_ms=int(max(0.05, deadline - loop.time()) * 1000),
                                          max_records=len(waiting))
            except OffsetOutOfRangeError as exc:
                for ktp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else waiting:
                    out_of_range.add(ktps[ktp])
                    probe.pause(ktp)
                waiting = [k for k in waiting if ktps[k] not in out_of_range]
                continue
            for ktp, records in got.items():
                if records and ktps[ktp] not in found:
                    found[ktps[ktp]] = records[0]
                    probe.pause(ktp)
            waiting = [k for k in waiting if ktps[k] not in found]
        ends: dict[Any, int] = await probe.end_offsets(list(ktps))
        starts: dict[Any, int] = await probe.beginning_offsets(list(ktps))
        probe.assign([])
        rewound = []
        for ktp, tp in ktps.items():
            offset, digest = todo[tp]
            rec = found.get(tp)
            start = starts.get(ktp, 0)
            end = ends.get(ktp)
            if rec is None:
                if offset < start:
                    continue  # retention removed it: the log moved forward, not back
                if end is None or end > offset:
                    continue  # not answered in time: inconclusive, checked again later
                if not await self._still_short(probe, ktp, offset, digest):
                    continue  # the broker's end offset lagged its last record (Tansu does): not backwards
                why = f"log end offset {end} is not past it"
            elif rec.offset != offset:
                why = f"the record at it is gone (the log continues at {rec.offset})"
            elif digest is not None and record_digest(rec.value) != digest:
                why = "the record at it is another one"
            else:
                continue
            self._went_backwards(tp, offset, start, end, why)
            rewound.append(tp)
        for tp in rewound:
            if self.seek is not None:
                await self.seek(tp, starts.get(TopicPartition(*tp), 0))
        return rewound

    async def _still_short(self, probe: Any, ktp: Any, offset: int, digest: bytes | None, rounds: int = 4,
                           pause_s: float = 1.0) -> bool:
        """True when the partition's log still ends at or before ``offset`` after ``rounds`` more looks,
        ``pause_s`` apart, and the record at ``offset`` never appears: the log went backwards. A broker whose
        log end offset lags behind its last record (Tansu, seen in CI: end offset 13 records short of a
        record already consumed) shows the record or a later end offset within a look or two."""
        from aiokafka.errors import OffsetOutOfRangeError

        try:
            for _ in range(rounds):
                await asyncio.sleep(pause_s)
                end = (await probe.end_offsets([ktp])).get(ktp)
                if end is None or end > offset:
                    return False
                probe.assign([ktp])
                probe.seek(ktp, offset)
                try:
                    got = await probe.getmany(ktp, timeout_ms=int(pause_s * 1000), max_records=1)
                except OffsetOutOfRangeError:
                    continue  # past the end: still short
                recs = got.get(ktp) or []
                if recs and recs[0].offset == offset and (digest is None or record_digest(recs[0].value) == digest):
                    return False
            return True
        finally:
            probe.assign([])

    async def verify_offsets(self, tps: set[tuple[str, int]]) -> None:
        """``check_offsets`` for partitions about to be read for the first time since their assignment."""
        while not self.ready:  # the check needs the runtime's clients
            await asyncio.sleep(0.1)
        try:
            await self.check_offsets(tps)
        except Exception:  # (e.g. the topic is being re-created) the periodic check tries again
            log.exception("offset check failed partitions=%s", sorted(tps))
        self.verified |= tps

    def _went_backwards(self, tp: tuple[str, int], committed: int, start: int, end: int | None,
                        why: str) -> None:
        topic, partition = tp
        log.warning("offsets went backwards at=%s[%d] committed_offset=%d log_start_offset=%d log_end_offset=%s "
                    "reason=%r: topic re-created or log truncated; applying the partition again from offset %d",
                    topic, partition, committed, start, end, why, start)
        self.metrics.offsets_backwards.labels(topic=topic, partition=str(partition)).inc()
        self.engine.rewind(tp, start)

    # -- checkpoint ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Commit state + offsets, then release acks and queue the committed points. Synchronous.

        A reload of the manifests asked for since the last commit is applied first, so the new rules take
        effect with this commit (``cityops.alerts.reload``); it never runs while a record is being applied.
        """
        reloader = self.reloader
        if self._reload_ignored:
            log.warning("rules reload asked for (%s) but alerting is off (CITYOPS_RULES_DIR=none): nothing to reload",
                        self._reload_ignored)
            self._reload_ignored = ""
        if reloader is not None and not self._stopping:
            reloader.poll()
            if reloader.pending:
                reloader.apply_pending()
                self.metrics.manifest_generation.set(reloader.generation)
        t0 = time.perf_counter()
        try:
            res = self.engine.checkpoint()
        except Fenced as exc:
            # Another worker owns the task now: nothing of this commit may be released (no acks, no
            # points), and nothing more may be written. Stop at once; the owner continues from its state.
            log.critical("fenced: %s; stopping without releasing anything of the last commit", exc)
            logging.shutdown()
            os._exit(EXIT_FENCED)
        except StateUnavailable as exc:
            # The commit's changes are out of the tables but not in Kafka: continuing would lose them. Stop
            # without releasing anything; the next start restores the last commit that landed.
            log.critical("state store unavailable: %s; stopping without releasing anything of the last commit",
                         exc)
            logging.shutdown()
            os._exit(EXIT_STATE_UNAVAILABLE)
        self.metrics.checkpoint_duration.observe(time.perf_counter() - t0)
        if isinstance(self.store, KafkaStateStore):
            task = self.settings.task or str(self.store.partition)
            self.metrics.state_epoch.labels(task=task, role="active").set(self.store.epoch)
            self.metrics.state_bytes.labels(task=task).set(self.store.bytes_written)
        self._last_commit = self.clock()
        acks, self._acks = self._acks, []
        for ack in acks:
            ack()
        self.influx.add(res.points)
        now = self.clock()
        for stream, wm in self.engine.watermark(now).items():
            self.metrics.watermark_lag.labels(stream=stream).set(max(0.0, now - wm))
        self._wake.set()

    def request_reload(self, why: str = "SIGHUP") -> None:
        """Reload the rule manifests at the next commit (safe to call from a signal handler: sets a flag)."""
        if self.reloader is None:
            self._reload_ignored = why  # logged by the next commit: no logging inside a signal handler
            return
        self.reloader.request(why)

    def _reload_result(self, result: str) -> None:
        self.metrics.manifest_reloads.labels(result=result).inc()
        self.metrics.manifest_last_reload_successful.set(1 if result == "ok" else 0)

    def rules_status(self) -> dict[str, Any] | None:
        """For /healthz: the rules in force (generation, hash) and the last reload's result; None: rules off."""
        return None if self.reloader is None else self.reloader.status()

    def state_status(self) -> dict[str, Any]:
        """Where the state is committed; with Kafka, this worker's task, role, claim epoch and bytes written."""
        store = self.store
        if not isinstance(store, KafkaStateStore):
            return {"store": "local"}
        return {"store": "kafka", "topic": store.topic, "task": self.settings.task, "role": "active",
                "epoch": store.epoch, "claim_offset": store.claim_offset, "snapshot_offset": store.base,
                "bytes_written": store.bytes_written, "restore_s": round(store.restore_s, 3)}

    def checkpoint_age(self) -> float:
        return self.clock() - self._last_commit

    async def _dispatch_loop(self) -> None:
        delay = 0.0
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            self.metrics.checkpoint_age.set(self.checkpoint_age())
            if self.clock() - self._last_offset_check >= self.settings.offset_check_s:
                self._last_offset_check = self.clock()
                try:
                    await self.check_offsets(self.assigned)
                except Exception:  # a check that fails is tried again at the next interval
                    log.exception("offset check failed")
            try:
                await self.deliver()
                delay = 0.0
            except InfluxUnavailable as exc:
                delay = min(max(delay * 2, 0.5), 30.0)
                log.warning("influxdb write failed, retry in %.1fs, pending=%d: %s", delay,
                            len(self.influx.pending), exc)
                await asyncio.sleep(delay)
            except ConfigError as exc:
                # Credentials refused mid-run (rotated, revoked): the data stays queued until they work again.
                delay = min(max(delay * 2, 1.0), 60.0)
                log.error("delivery refused, retry in %.0fs, pending=%d: %s", delay, len(self.influx.pending), exc)
                await asyncio.sleep(delay)
            except Exception:  # keep delivering: a bug here must not stop consumption silently
                log.exception("dispatch failed")
                await asyncio.sleep(1.0)

    async def deliver(self) -> None:
        """Send committed outputs: dead letters, alert transitions, then KPI points."""
        await self._deliver_dead_letters()
        await self._deliver_alerts()
        confirmed = await self.influx.flush()
        self.engine.confirm_written(confirmed)

    def _influx_refused(self, line: str, measurement: str, reason: str) -> None:
        """InfluxDB refused one point: dead-letter it (durably, with InfluxDB's reason) and count it."""
        self.metrics.points_refused.labels(sink="influxdb", measurement=measurement).inc()
        self.engine.dead_letter_point("influxdb", line, measurement, reason)
        self._wake.set()

    async def _deliver_dead_letters(self) -> None:
        batch = self.engine.pending_dead_letters()
        if not batch:
            return
        res = await self.dead_letter_sink.write(batch)
        by_seq = dict(batch)
        for seq in res.done:
            rec = by_seq[seq]
            self.metrics.dead_letters.labels(stream=rec["stream"], reason=_reason_kind(rec["reason"])).inc()
        for seq, why in res.rejected:
            # Nowhere further to send it: it stays committed in the outbox (reported at stop) and is logged.
            log.error("dead letter refused by kafka seq=%d stream=%s reason=%s", seq, by_seq[seq]["stream"], why)
        self.engine.confirm_dead_letters(res.done)

    async def _deliver_alerts(self) -> None:
        if self.alerts is None:
            return
        for sink in self.alert_sinks:
            batch = self.alerts.pop_outbox(500, sink=sink.name)
            if not batch:
                continue
            res = await sink.write(batch)
            for seq, why in res.rejected:
                log.error("alert transition rejected sink=%s seq=%d reason=%s", sink.name, seq, why)
            settled = res.settled
            if res.retry:
                # Keep order per sink (a resolve must not overtake its firing): past the first kept item,
                # everything goes again next round.
                first = min(res.retry)
                settled = [s for s in settled if s < first]
            self.alerts.ack_outbox(settled, sink=sink.name)
        now = self.clock()
        if self.alertmanager is not None and now - self._last_resend >= self.settings.alert_resend_s:
            firing = self.alerts.firing()
            if not firing or await self.alertmanager.post(firing):
                self._last_resend = now
        counts: dict[tuple[str, str], int] = {}
        for a in self.alerts.firing():
            k = (a.alertname, a.labels.get("severity", ""))
            counts[k] = counts.get(k, 0) + 1
        self.metrics.alerts_active.clear()
        for (name, sev), n in counts.items():
            self.metrics.alerts_active.labels(alertname=name, severity=sev).set(n)


def alert_record(tr: Transition) -> KafkaRecord:
    """The ``cityops.alerts`` record of a transition: key = its id, value = its record as JSON."""
    rec = tr.to_record()
    rec.pop("delivered", None)
    return tr.id.encode(), orjson.dumps(rec), []


def dead_letter_record(rec: dict[str, Any]) -> KafkaRecord:
    """The dead-letter topic record: the value is the bytes as received (or the refused point's line
    protocol), untouched, so it can be replayed after a fix; the why in headers."""
    if rec.get("measurement") is not None:
        headers = [
            ("cityops-reason", rec["reason"].encode()),
            ("cityops-stream", rec["stream"].encode()),
            ("cityops-sink", rec["topic"].encode()),
            ("cityops-measurement", rec["measurement"].encode()),
            ("cityops-outcome", rec["outcome"].encode()),
            ("cityops-dlq-id", rec["id"].encode()),
        ]
        return None, rec["raw"], headers
    headers = [
        ("cityops-reason", rec["reason"].encode()),
        ("cityops-stream", rec["stream"].encode()),
        ("cityops-source-topic", rec["topic"].encode()),
        ("cityops-source-partition", str(rec["partition"]).encode()),
        ("cityops-source-offset", str(rec["offset"]).encode()),
        ("cityops-outcome", rec["outcome"].encode()),
        ("cityops-dlq-id", f"{rec['topic']}:{rec['partition']}:{rec['offset']}:{rec['index']}".encode()),
    ]
    if rec["index"] is not None:
        headers.append(("cityops-batch-index", str(rec["index"]).encode()))
    if rec.get("path"):  # where the event sits in its message (a batch element, an EPCIS document's event)
        headers.append(("cityops-event-path", rec["path"].encode()))
    return None, rec["raw"], headers


def alert_point(tr: Transition) -> Point:
    """The `alerts` measurement point of one transition (Grafana annotations and tables)."""
    labels = tr.labels
    # k=v pairs joined by ",", with "%", "," and "=" percent-encoded inside names and values: two
    # different label sets never make one entity (card "a,b=c" vs cards "a" and b "c").
    entity = ",".join(f"{_entity_part(k)}={_entity_part(v)}" for k, v in sorted(labels.items())
                      if k not in ("alertname", "severity", "domain"))
    # entity is a tag so two alerts of one rule in the same second stay two points.
    return Point("alerts", {"alertname": labels["alertname"], "severity": labels.get("severity", ""),
                            "domain": labels.get("domain", ""), "status": str(tr.status), "entity": entity},
                 {"summary": tr.annotations.get("summary", ""), "value": float(tr.value or 0.0), "id": tr.id},
                 int(tr.ts))


_ENTITY_ESCAPE = str.maketrans({"%": "%25", ",": "%2C", "=": "%3D"})


def _entity_part(text: str) -> str:
    return text.translate(_ENTITY_ESCAPE)


def _reason_kind(reason: str) -> str:
    """A low-cardinality label for a dead-letter reason (the full text is in the record's header)."""
    head = reason.split(":", 1)[0].strip().lower()
    return head if len(head) <= 40 else "other"
