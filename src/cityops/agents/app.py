"""The one Faust app: an agent per input topic feeding the engine, a timer that commits, /metrics, /healthz."""

from __future__ import annotations

import logging
import signal
from typing import Any

import faust
from faust.tables import TableManager

from cityops.agents.consumer import BatchConsumer, RecordSink
from cityops.metrics import Metrics
from cityops.runtime import Runtime
from cityops.settings import Settings

log = logging.getLogger("cityops.agents")

TAKE_MAX = 2000  # records per agent step: amortizes Faust's per-step overhead
TAKE_WITHIN_S = 0.05


class _TableManager(TableManager):
    """Faust's table manager without the 1 s pause its start begins with (it gives tables time to be
    declared; cityops declares none: its state is its own). A warm standby's takeover waits for it."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class _App(faust.App):
    """Faust's app without its ``Monitor`` sensor. Faust calls each sensor on every message and every event
    (five calls, timestamps and deques per record); cityops reports through its own Prometheus metrics and
    never reads the Monitor, whose upkeep was ~10% of the worker's time on single-event messages (py-spy)."""

    #: where ``BatchConsumer`` hands the records of cityops' input topics (set by ``create_app``)
    record_sink: RecordSink | None = None

    def on_init_dependencies(self) -> Any:
        deps = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return deps

    def _new_consumer(self) -> Any:
        # Faust's own consumer (as ``Transport.create_consumer`` makes it) with the batch path to the engine.
        consumer = BatchConsumer(self.transport, callback=self.topics.on_message, loop=self.transport.loop,
                                 on_partitions_revoked=self._on_partitions_revoked,
                                 on_partitions_assigned=self._on_partitions_assigned, beacon=self.beacon)
        consumer.record_sink = self.record_sink
        return consumer


class _RuntimeSink:
    """The ``RecordSink`` of the worker: a fetched batch of one partition is applied by ``Runtime`` in one
    call, after the backpressure wait and, for a partition's first records since its assignment, the check
    that its log did not go backwards (the steps each agent batch took before)."""

    def __init__(self, runtime: Runtime, topics: set[str]) -> None:
        self.runtime = runtime
        self.topics = topics
        self._counters: dict[str, Any] = {}

    def claims(self, topic: str) -> bool:
        return topic in self.topics

    async def admit(self, tp: Any) -> None:
        runtime = self.runtime
        await runtime.wait_writable(tp.topic)
        key = (tp.topic, tp.partition)
        if key not in runtime.verified:
            await runtime.verify_offsets({key})

    def apply(self, tp: Any, records: list[Any], release: Any) -> None:
        # Acks (``release``) only after the commit that covers these records (runtime.tick).
        self.runtime.process_records(tp.topic, tp.partition, records, release)
        counter = self._counters.get(tp.topic)
        if counter is None:
            counter = self._counters[tp.topic] = self.runtime.metrics.messages.labels(topic=tp.topic)
        counter.inc(len(records))


def create_app(settings: Settings, metrics: Metrics | None = None, *,
               store: Any = None) -> tuple[faust.App, Runtime]:
    """Build the Faust app and its runtime. Settings come only from ``settings`` (``env={}``).

    ``store``: an opened state store (a warm standby's, once claimed); default ``open_state_store``. With
    ``CITYOPS_TASK`` the app is ``cityops-<task>`` (its consumer group) and reads that task's streams only.
    """
    from cityops.connections import describe_security, faust_broker_credentials

    metrics = metrics or Metrics()
    # SIGHUP reloads the rule manifests (as Prometheus does). The handler only sets a flag, which the next
    # commit (runtime.tick, in the event loop) acts on: never in the middle of applying a record. Installed
    # before the runtime loads the manifests, so a SIGHUP while they load asks for a reload after it instead
    # of ending the process (one before it needs nothing: the load reads the files as they are then).
    hup: list[Runtime] = []
    early: list[str] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hup[0].request_reload("SIGHUP") if hup
                  else early.append("SIGHUP"))
    runtime = Runtime(settings, metrics, store=store)
    hup.append(runtime)
    if early:
        runtime.request_reload("SIGHUP during start-up")
    app = _App(
        # One consumer group per task: a task's input partitions all go to the one worker that owns it.
        "cityops" if settings.task is None else f"cityops-{settings.task}",
        env={},  # Faust would otherwise let BROKER_URL & co. in the environment override our settings
        broker=settings.kafka_broker_url,
        # SASL and/or TLS for Faust's consumer, producer and topic admin (None = PLAINTEXT).
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",  # state lives in cityops' own committed store, not Faust tables
        datadir=str(settings.data_dir / "faust"),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.consumer_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.consumer_session_timeout_s / 3),
        broker_commit_interval=settings.flush_interval_s,
        stream_buffer_maxsize=16384,
        # Our own committed offsets decide what is replayed, so on shutdown Faust need not wait for
        # buffered-but-unprocessed records to be acked (it would wait forever for records we hold).
        stream_wait_empty=False,
        consumer_max_fetch_size=8 << 20,
        producer_max_request_size=settings.max_message_bytes + (64 << 10),
        logging_config=None,
        TableManager=_TableManager,
    )

    app.record_sink = _RuntimeSink(runtime, {stream.topic for stream in runtime.engine.streams.values()})
    for stream in runtime.engine.streams.values():
        _add_agent(app, runtime, stream.topic, settings)

    @app.timer(interval=settings.flush_interval_s, on_leader=False)
    async def commit() -> None:
        if runtime.ready:
            runtime.tick()

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        # The clocks wait (briefly) for every assigned partition's first records before judging.
        runtime.engine.expect_partitions((tp.topic, tp.partition) for tp in assigned)
        runtime.assigned = {(tp.topic, tp.partition) for tp in assigned}
        # Faust has sought to its own committed offsets: check each partition's log again before use.
        runtime.verified.clear()

    async def seek(tp: tuple[str, int], offset: int) -> None:
        await _seek_faust(app, tp, offset)

    runtime.seek = seek

    @app.task
    async def start_runtime() -> None:
        await runtime.start()
        log.info("worker ready web=http://%s:%d streams=%s %s", settings.web_host, settings.web_port,
                 ",".join(runtime.engine.streams), describe_security(settings))

    @app.on_before_shutdown.connect
    async def flush_on_shutdown(app: Any, **kwargs: Any) -> None:
        log.info("shutting down: final commit and flush")
        await runtime.stop()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        metrics.checkpoint_age.set(runtime.checkpoint_age())
        return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        age = runtime.checkpoint_age()
        body = {
            "ready": runtime.ready,
            "checkpoint_age_s": round(age, 3),
            "influx_pending_points": len(runtime.influx.pending),
            "influx_healthy": runtime.influx.healthy,
            "backpressure": runtime.backpressure,
            "newest_event_time": dict(runtime.engine.newest_event_time),
            "watermarks": runtime.engine.watermark(runtime.clock()),
            "events": {f"{s}/{o}": n for (s, o), n in runtime.engine.counts.items()},
            "state": runtime.state_status(),
            # the rule manifests in force: generation, content hash, the last reload's result
            "rules": runtime.rules_status(),
            # CITYOPS_SOURCE_REGISTRY / CITYOPS_UNKNOWN_SOURCES in force (null: no registry)
            "source_registry": runtime.registry_gate.status() if runtime.registry_gate is not None else None,
        }
        ok = runtime.ready and age < max(30.0, 10 * settings.flush_interval_s)
        return web.json(body, status=200 if ok else 503)

    return app, runtime


async def _seek_faust(app: faust.App, tp: tuple[str, int], offset: int) -> None:
    """Move Faust's consumer of ``tp`` back to ``offset`` after its log went backwards.

    Faust drops records below the offset it last read, and ignores acks below the offset it last
    committed; both belong to the old log now, so they are forgotten for this partition (Faust has no public
    call for it).
    """
    from faust.types import TP

    consumer = app.consumer
    ftp = TP(tp[0], tp[1])
    for name in ("_committed_offset", "_read_offset"):
        table = getattr(consumer, name, None)
        if table is not None:
            table[ftp] = None
    acked = getattr(consumer, "_acked", None)
    if acked is not None:
        acked[ftp] = []
    index = getattr(consumer, "_acked_index", None)
    if index is not None:
        index[ftp] = set()
    await consumer.seek(ftp, offset)


def _add_agent(app: faust.App, runtime: Runtime, topic_name: str, settings: Settings) -> None:
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw",
                      partitions=settings.topic_partitions, allow_empty=True)

    # The agent subscribes the topic (group membership, assignment). Its records reach the runtime in
    # batches through the consumer's record sink (_RuntimeSink), not through this stream; the loop below
    # is the same work one record at a time, for a record Faust delivers through its stream all the same.
    async def agent(stream: Any) -> None:
        process = runtime.process
        verified = runtime.verified
        async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):
            await runtime.wait_writable(topic_name)
            # Before the first records of a partition are applied (or skipped as already applied), check
            # that its log did not go backwards. Records come in runs per partition: test at each change.
            last: Any = None
            unverified: set[tuple[str, int]] | None = None
            for event in events:
                msg = event.message
                tp = (msg.topic, msg.partition)
                if tp != last:
                    last = tp
                    if tp not in verified:
                        unverified = unverified or set()
                        unverified.add(tp)
            if unverified:
                await runtime.verify_offsets(unverified)
            for event in events:
                msg = event.message
                # Acks are released only after the commit that covers this record (runtime.tick).
                process(msg.topic, msg.partition, msg.offset, event.value, event.ack, msg.timestamp)
            runtime.metrics.messages.labels(topic=topic_name).inc(len(events))

    agent.__name__ = "agent_" + topic_name.replace(".", "_").replace("-", "_")
    app.agent(topic, name=f"cityops.{topic_name}")(agent)
