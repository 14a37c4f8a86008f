"""The worker's own health as Prometheus metrics (prometheus-client; registry injectable for tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cityops import __version__


class Metrics:
    """All worker metrics on one registry. Counters end in _total, durations are in seconds."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("cityops_events", "Events by stream and outcome "
                              "(accepted|invalid|duplicate|tampered|late|untrusted|bad_signature)",
                              ["stream", "outcome"], registry=r)
        self.dead_letters = Counter("cityops_dead_letters", "Records sent to cityops.dead-letter",
                                    ["stream", "reason"], registry=r)
        self.messages = Counter("cityops_messages", "Kafka records consumed", ["topic"], registry=r)
        self.sink_pending = Gauge("cityops_sink_pending_points", "Points waiting for the sink", ["sink"],
                                  registry=r)
        self.sink_writes = Counter("cityops_sink_writes", "Successful sink batch writes", ["sink"], registry=r)
        self.sink_errors = Counter("cityops_sink_write_errors", "Failed sink writes by cause "
                                   "(unavailable|throttled|rejected)", ["sink", "kind"], registry=r)
        self.points_refused = Counter("cityops_points_refused", "Points a sink refused for their data "
                                      "(dead-lettered with the sink's reason)", ["sink", "measurement"],
                                      registry=r)
        self.offsets_backwards = Counter("cityops_offsets_backwards", "Partitions whose log went backwards "
                                         "(topic re-created or log truncated) and were read again from their "
                                         "start", ["topic", "partition"], registry=r)
        self.backpressure = Gauge("cityops_backpressure", "1 while consumption is paused for the sink",
                                  ["stream"], registry=r)
        self.checkpoint_duration = Histogram("cityops_checkpoint_duration_seconds",
                                             "Time to commit state + offsets", registry=r,
                                             buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.checkpoint_age = Gauge("cityops_checkpoint_age_seconds", "Seconds since the last commit",
                                    registry=r)
        self.watermark_lag = Gauge("cityops_watermark_lag_seconds",
                                   "Wall clock minus the stream's watermark (the event time up to which every "
                                   "active partition has been read)", ["stream"], registry=r)
        self.alerts_active = Gauge("cityops_alerts_active", "Firing alerts", ["alertname", "severity"],
                                   registry=r)
        self.alert_notifications = Counter("cityops_alert_notifications", "Alert deliveries by receiver",
                                           ["receiver", "outcome"], registry=r)
        self.unlisted_source_events = Counter(
            "cityops_unlisted_source_events", "Events of sources the registry does not list, processed because "
            "CITYOPS_UNKNOWN_SOURCES=observe", ["stream"], registry=r)
        # CITYOPS_STATE_STORE=kafka: this worker's claim on its task and what it wrote to cityops.state.
        self.state_epoch = Gauge("cityops_state_epoch", "Claim epoch this worker holds on its task (active)",
                                 ["task", "role"], registry=r)
        self.state_bytes = Gauge("cityops_state_written_bytes", "Bytes this worker wrote to cityops.state "
                                 "since its start (commits, snapshots, claims)", ["task"], registry=r)
        self.manifest_reloads = Counter("cityops_manifest_reloads", "Rule manifest reloads (SIGHUP or a file "
                                        "change) by result: ok, refused (the running rules stay)", ["result"],
                                        registry=r)
        self.manifest_last_reload_successful = Gauge(
            "cityops_manifest_last_reload_successful", "1 when the last load of the rule manifests (the start's, "
            "or the last reload) succeeded; 0 while the files on disk were refused and the previous rules run",
            registry=r)
        self.manifest_generation = Gauge("cityops_manifest_generation", "Generation of the rules in force: 1 at "
                                         "start, +1 per reload that changed them", registry=r)
        self._event_children: dict[tuple[str, str], Counter] = {}
        self.build_info = Gauge("cityops_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

    def on_outcome(self, stream: str, outcome: str, n: int) -> None:
        # labels() costs a lock and a tuple build per call; this runs per message, so keep the children.
        child = self._event_children.get((stream, outcome))
        if child is None:
            child = self._event_children[(stream, outcome)] = self.events.labels(stream=stream, outcome=outcome)
        child.inc(n)

    def on_unlisted(self, stream: str) -> None:
        self.unlisted_source_events.labels(stream=stream).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
