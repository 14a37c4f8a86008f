"""The Kafka topics cityops reads and writes, created with explicit configs (deploy/kafka/topics.yml mirrors)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cityops.topics")

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(partitions: int = 6, plugins: Any = None) -> list[TopicSpec]:
    """Every topic with its partitions and configs (``partitions`` = CITYOPS_TOPIC_PARTITIONS sets the
    high-volume input topics): the input topics of every stream of ``plugins`` (a
    ``cityops.plugins.PluginSet``; None = the built-in agents and every installed plugin), each with the
    partitions its ``StreamFactory`` declares (``cityops.builtin``), then the core's output topics."""
    if plugins is None:
        from cityops.plugins import load_plugins

        plugins = load_plugins()
    big = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete", "max.message.bytes": str(8 << 20)}
    return [
        *(TopicSpec(topic, n, dict(big)) for topic, n in plugins.topic_partitions(partitions)),
        TopicSpec("cityops.dead-letter", 3, {"retention.ms": str(14 * DAY_MS), "cleanup.policy": "delete",
                                             "max.message.bytes": str(8 << 20)}),
        TopicSpec("cityops.alerts", 1, {"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete"}),
    ]


def state_topic_spec(task: str | None = None) -> TopicSpec:
    """The state topic of ``task`` (CITYOPS_STATE_STORE=kafka; ``cityops.state.<task>``, one partition;
    None: ``cityops.state``), kept forever.

    Never deleted by time: a restore reads from the latest complete snapshot, which may be old. Nothing
    needs compaction or DeleteRecords for correctness (the topic grows until a broker that has
    DeleteRecords trims what lies before the last complete snapshot).
    """
    from cityops.engine.kafka_state import state_topic

    return TopicSpec(state_topic(task), 1, {"retention.ms": "-1", "retention.bytes": "-1",
                                            "cleanup.policy": "delete", "max.message.bytes": str(8 << 20)})


LEASE_TOPIC = "cityops.leases"


def lease_topic(task: str) -> str:
    """The lease topic of ``task``: one empty partition whose assignment in the ``cityops-leases`` consumer
    group says which worker should run the task (``cityops.ha``)."""
    return f"{LEASE_TOPIC}.{task}"


def lease_topic_spec(task: str) -> TopicSpec:
    """``cityops.leases.<task>``: never written to; only its group assignment matters."""
    return TopicSpec(lease_topic(task), 1, {"retention.ms": str(DAY_MS), "cleanup.policy": "delete"})


def admin_client(bootstrap: str, security: Mapping[str, Any] | None, timeout_s: float) -> Any:
    """A kafka-python ``KafkaAdminClient``, or ``KafkaTimeoutError`` after ``timeout_s`` seconds.

    Made in a daemon thread: kafka-python 3.0's bootstrap can wait without end (seen with a plaintext client
    at a TLS port whose handshake timed out), and a start-up must end with a message instead. A thread
    given up stays blocked in kafka-python's own daemon IO thread; it holds no cityops resource.
    """
    import threading

    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    box: dict[str, Any] = {}

    def make() -> None:
        try:
            box["admin"] = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cityops-admin",
                                            request_timeout_ms=10_000, **(security or {}))
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=make, name="cityops-admin-bootstrap", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise KafkaTimeoutError(f"no answer from the broker's bootstrap within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["admin"]


def ensure_topics(bootstrap: str, specs: list[TopicSpec] | None = None, timeout_s: float = 30.0, *,
                  setting: str = "CITYOPS_KAFKA_BOOTSTRAP", security: Mapping[str, Any] | None = None) -> list[str]:
    """Create the missing topics (kafka-python admin) with their explicit configs; returns those created.

    Explicit configs matter: some Kafka-API brokers report only the settings a topic was created with.
    A broker that does not answer raises ``Unreachable`` naming ``bootstrap`` and ``setting`` (the variable
    or option the address came from): at once if nothing accepts a connection within ``reach.KAFKA_WAIT_S``,
    else after ``timeout_s`` seconds of failed admin requests (then naming the security settings too: a
    broker that takes the connection but not the TLS handshake or the SASL login looks the same).
    ``security``: SASL/TLS client arguments (cityops.connections.kafka_client_security; default PLAINTEXT).
    """
    import time

    from kafka.admin import NewTopic
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

    from cityops.errors import Unreachable
    from cityops.reach import check_kafka, describe, quiet_logs

    check_kafka(bootstrap, setting)
    specs = specs if specs is not None else topic_specs()
    deadline = time.monotonic() + timeout_s
    # kafka-python logs every failed attempt at ERROR; the one line that matters is ours.
    with quiet_logs("kafka"):
        while True:
            try:
                admin = admin_client(bootstrap, security, max(1.0, deadline - time.monotonic()))
                break
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise Unreachable("the Kafka broker", bootstrap, setting,
                                      f"{describe(exc)} within {timeout_s:g}s; {_security_hint(security)}") from None
                time.sleep(0.5)
        try:
            existing = set(admin.list_topics())
            todo = [s for s in specs if s.name not in existing]
            created = []
            for s in todo:
                try:
                    admin.create_topics([NewTopic(s.name, s.partitions, 1, topic_configs=s.configs)])
                    created.append(s.name)
                except TopicAlreadyExistsError:
                    pass
        except (KafkaConnectionError, KafkaTimeoutError) as exc:
            raise Unreachable("the Kafka broker", bootstrap, setting, describe(exc)) from None
        finally:
            admin.close()
    if created:
        log.info("created topics %s", ",".join(created))
    return created


def _security_hint(security: Mapping[str, Any] | None) -> str:
    """What the client tried, and which settings decide it (never the password)."""
    proto = (security or {}).get("security_protocol", "PLAINTEXT")
    mech = (security or {}).get("sasl_mechanism")
    tried = f"security protocol {proto}" + (f" ({mech} as {(security or {}).get('sasl_plain_username')})"
                                            if mech else "")
    check = ["CITYOPS_KAFKA_SECURITY_PROTOCOL"]
    if mech:
        check.append("the credentials (CITYOPS_KAFKA_SASL_USERNAME / _PASSWORD)")
    if proto.endswith("SSL"):
        check.append("the TLS files (CITYOPS_KAFKA_SSL_*)")
    return f"{tried}: check " + ", ".join(check)
