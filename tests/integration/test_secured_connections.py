"""Secured connections against real servers (issue 8 item 5).

- InfluxDB 1.x (`influxd`) with ``[http] auth-enabled`` and ``https-enabled`` (test CA): user + password,
  HTTPS with the CA file; wrong credentials / untrusted certificate stop the worker with one line.
- Alertmanager with ``--web.config.file`` (TLS + basic auth, bcrypt): posting and the status read succeed
  with the settings' credentials and fail clearly (alerts kept) without them.
- Kafka over TLS with a client certificate (encrypted key): the bundled Tansu 0.6.0 cannot serve TLS
  itself, so a TLS terminator (tests/tls_proxy.py) fronts the real broker, which advertises only the TLS
  port: every client of the worker, the simulator, the topics admin and evaluate-alerts' reader must speak
  TLS with the client certificate or get nothing.
- Kafka SASL: Tansu 0.6.0 with ``--authentication`` offers SCRAM only, and with its memory storage no user
  can be created once authentication is on (see README), so only the refusal is tested here for real; the
  mechanism and credentials reaching every client are tested in tests/unit/test_connections.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cityops.connections import alertmanager_http, influx_http, kafka_client_security, preflight
from cityops.errors import CityopsError, ConfigError
from cityops.localproc import ManagedProcess, free_port
from cityops.localstack import start_kafka
from cityops.settings import load_kafka_settings, load_settings
from cityops.sinks.alertmanager import AlertmanagerAuthError, AlertmanagerSink
from cityops.sinks.influx import InfluxSink, query
from cityops.topics import ensure_topics, topic_specs
from cityops.types import Alert
from tests.conftest import INFLUX_ADMIN, PSEUDONYM_KEY, Worker
from tests.integration.conftest import ALERTMANAGER_USER
from tests.pki import CLIENT_KEY_PASSWORD, Pki
from tests.tls_proxy import TlsTerminator

pytestmark = pytest.mark.integration

BASE = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "CITYOPS_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CITYOPS_DATA_DIR": "/tmp/cityops-secured-test"}


def influx_env(influx: ManagedProcess, pki: Pki, user: str = INFLUX_ADMIN[0], password: str = INFLUX_ADMIN[1],
               ca: Path | None = None) -> dict[str, str]:
    return {"CITYOPS_INFLUX_URL": influx.url, "CITYOPS_INFLUX_USERNAME": user, "CITYOPS_INFLUX_PASSWORD": password,
            "CITYOPS_INFLUX_CA_FILE": str(ca or pki.ca)}


def am_env(am: ManagedProcess, pki: Pki, password: str = ALERTMANAGER_USER[1]) -> dict[str, str]:
    return {"CITYOPS_ALERTMANAGER_URL": am.url, "CITYOPS_ALERTMANAGER_USERNAME": ALERTMANAGER_USER[0],
            "CITYOPS_ALERTMANAGER_PASSWORD": password, "CITYOPS_ALERTMANAGER_CA_FILE": str(pki.ca)}


def admin_query(influx: ManagedProcess, pki: Pki, q: str, db: str | None = None) -> dict[str, Any]:
    """InfluxQL as the admin user, independently of cityops' client (urllib, basic auth, test CA)."""
    import base64

    params = {"q": q, "epoch": "s"} | ({"db": db} if db else {})
    req = urllib.request.Request(f"{influx.url}/query", data=urllib.parse.urlencode(params).encode(), headers={
        "Authorization": "Basic " + base64.b64encode(":".join(INFLUX_ADMIN).encode()).decode()})
    with urllib.request.urlopen(req, timeout=30, context=pki.client_context()) as r:
        return json.loads(r.read())["results"][0]


# -- InfluxDB: auth-enabled + https ------------------------------------------------------------------------
async def test_influx_user_password_over_https_creates_writes_and_queries(secure_influx: ManagedProcess,
                                                                          pki: Pki) -> None:
    from cityops.engine.pipeline import Point

    s = load_settings(BASE | influx_env(secure_influx, pki))
    sink = InfluxSink(str(s.influx_url), s.influx_database, http=influx_http(s))
    try:
        await sink.setup()  # CREATE DATABASE, as the admin user
        sink.add([Point("traffic_ridership", {"mode": "metro", "line": "1"}, {"taps_in": 7}, 1_764_000_000)])
        await sink.flush()
    finally:
        await sink.close()
    assert any(["cityops"] == v for v in admin_query(secure_influx, pki, "SHOW DATABASES")["series"][0]["values"])
    series = await query(str(s.influx_url), "cityops", 'SELECT "taps_in" FROM "traffic_ridership"',
                         http=influx_http(s))
    assert series[0]["values"] == [[1_764_000_000, 7]]
    # The same query without credentials is refused by the server: the credentials above were used.
    anonymous = load_settings(BASE | {"CITYOPS_INFLUX_URL": secure_influx.url,
                                      "CITYOPS_INFLUX_CA_FILE": str(pki.ca)})
    with pytest.raises(Exception, match="401"):
        await query(str(anonymous.influx_url), "cityops", "SHOW MEASUREMENTS", http=influx_http(anonymous))


@pytest.mark.parametrize("case,names", [
    ("wrong password", "CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD"),
    ("no credentials", "CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD (none set)"),
    ("untrusted CA", "CITYOPS_INFLUX_CA_FILE"),
])
async def test_influx_refusal_names_the_setting(secure_influx: ManagedProcess, pki: Pki, case: str,
                                                names: str) -> None:
    env = BASE | influx_env(secure_influx, pki)
    if case == "wrong password":
        env["CITYOPS_INFLUX_PASSWORD"] = "not-the-password"
    elif case == "no credentials":
        del env["CITYOPS_INFLUX_USERNAME"], env["CITYOPS_INFLUX_PASSWORD"]
    else:
        env["CITYOPS_INFLUX_CA_FILE"] = str(pki.other_ca)
    with pytest.raises(ConfigError) as err:
        await preflight(load_settings(env))
    assert names in str(err.value) and "not-the-password" not in str(err.value)


async def test_influx_least_privilege_user_on_an_existing_database(secure_influx: ManagedProcess, pki: Pki) -> None:
    """A 1.x user with WRITE on a database the operator created: no admin rights needed."""
    admin_query(secure_influx, pki, 'CREATE DATABASE "city"')
    admin_query(secure_influx, pki, "CREATE USER \"writer\" WITH PASSWORD 'w-pass-1'")
    admin_query(secure_influx, pki, 'GRANT ALL ON "city" TO "writer"')
    s = load_settings(BASE | influx_env(secure_influx, pki, "writer", "w-pass-1")
                      | {"CITYOPS_INFLUX_DATABASE": "city"})
    await preflight(s)
    missing = load_settings(BASE | influx_env(secure_influx, pki, "writer", "w-pass-1")
                            | {"CITYOPS_INFLUX_DATABASE": "nodb"})
    with pytest.raises(ConfigError, match="refused CREATE DATABASE .*403"):
        await preflight(missing)


# -- Alertmanager: TLS + basic auth ------------------------------------------------------------------------
async def test_alertmanager_sink_posts_and_reads_over_tls_with_basic_auth(secure_alertmanager: ManagedProcess,
                                                                          pki: Pki) -> None:
    s = load_settings(BASE | {"CITYOPS_INFLUX_URL": "http://127.0.0.1:1"} | am_env(secure_alertmanager, pki))
    registry = CollectorRegistry()
    card = "p-" + uuid.uuid4().hex[:16]
    now = time.time()
    alert = Alert(labels={"alertname": "CardImpossibleTravel", "card": card}, annotations={"summary": "secured"},
                  starts_at=now - 30)
    async with AlertmanagerSink(str(s.alertmanager_url), http=alertmanager_http(s), registry=registry) as sink:
        status = await sink.status()
        assert status["cluster"]["status"] in ("disabled", "ready") and status["versionInfo"]["version"]
        assert await sink.post([alert]) is True
        deadline = time.monotonic() + 10
        while not (got := await sink.get_alerts(filter=[f'card="{card}"'])) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [a["labels"]["card"] for a in got] == [card]
    assert registry.get_sample_value("cityops_alert_notifications_total",
                                     {"receiver": "alertmanager", "outcome": "sent"}) == 1


@pytest.mark.parametrize("case,names", [
    ("wrong password", "CITYOPS_ALERTMANAGER_USERNAME / CITYOPS_ALERTMANAGER_PASSWORD"),
    ("bearer token", "CITYOPS_ALERTMANAGER_TOKEN"),
    ("untrusted CA", "CITYOPS_ALERTMANAGER_CA_FILE"),
])
async def test_alertmanager_refusal_is_clear_and_keeps_the_alerts(secure_alertmanager: ManagedProcess, pki: Pki,
                                                                  case: str, names: str) -> None:
    env = BASE | {"CITYOPS_INFLUX_URL": "http://127.0.0.1:1"} | am_env(secure_alertmanager, pki)
    if case == "wrong password":
        env["CITYOPS_ALERTMANAGER_PASSWORD"] = "not-the-password"
    elif case == "bearer token":  # Alertmanager itself knows basic auth only: a token is for a proxy
        del env["CITYOPS_ALERTMANAGER_USERNAME"], env["CITYOPS_ALERTMANAGER_PASSWORD"]
        env["CITYOPS_ALERTMANAGER_TOKEN"] = "some-token"
    else:
        env["CITYOPS_ALERTMANAGER_CA_FILE"] = str(pki.other_ca)
    s = load_settings(env)
    registry = CollectorRegistry()
    alert = Alert(labels={"alertname": "CardImpossibleTravel", "card": "p-x"}, starts_at=time.time())
    async with AlertmanagerSink(str(s.alertmanager_url), http=alertmanager_http(s), registry=registry,
                                attempts=1) as sink:
        with pytest.raises(AlertmanagerAuthError) as err:
            await sink.status()
        assert names in str(err.value)
        # Not the alert's fault: kept for a later attempt (False), never counted as rejected.
        assert await sink.post([alert]) is False
    assert registry.get_sample_value("cityops_alert_notifications_total",
                                     {"receiver": "alertmanager", "outcome": "unavailable"}) == 1
    assert registry.get_sample_value("cityops_alert_notifications_total",
                                     {"receiver": "alertmanager", "outcome": "rejected"}) is None
    with pytest.raises(ConfigError, match=names.split(" ")[0]):
        await preflight(s)


# -- Kafka over TLS (client certificate), the whole worker secured -----------------------------------------
@pytest.fixture
def tls_kafka(tmp_path: Path, pki: Pki) -> Iterator[tuple[ManagedProcess, TlsTerminator]]:
    """Real Tansu on a private port; clients reach it only through TLS with a client certificate."""
    broker_port = free_port()
    terminator = TlsTerminator(broker_port, pki.server_context(require_client_cert=True)).start()
    broker = start_kafka(tmp_path / "kafka-tls", broker_port, advertised_port=terminator.port)
    yield broker, terminator
    broker.stop()
    terminator.stop()


def kafka_tls_env(terminator: TlsTerminator, pki: Pki) -> dict[str, str]:
    return {"CITYOPS_KAFKA_BOOTSTRAP": f"127.0.0.1:{terminator.port}", "CITYOPS_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CITYOPS_KAFKA_SSL_CAFILE": str(pki.ca), "CITYOPS_KAFKA_SSL_CERTFILE": str(pki.client_cert),
            "CITYOPS_KAFKA_SSL_KEYFILE": str(pki.client_key), "CITYOPS_KAFKA_SSL_KEY_PASSWORD": CLIENT_KEY_PASSWORD}


def test_kafka_tls_refuses_plaintext_and_untrusted_clients(tls_kafka: Any, pki: Pki) -> None:
    _, terminator = tls_kafka
    env = kafka_tls_env(terminator, pki)
    boot = env["CITYOPS_KAFKA_BOOTSTRAP"]
    assert ensure_topics(boot, topic_specs(2), timeout_s=20,
                         security=kafka_client_security(load_kafka_settings(env))) != []
    with pytest.raises(CityopsError, match="CITYOPS_KAFKA_SECURITY_PROTOCOL") as err:
        ensure_topics(boot, topic_specs(2), timeout_s=3)  # plaintext against a TLS port
    assert "PLAINTEXT" in str(err.value)
    no_client_cert = {k: v for k, v in env.items() if "CERTFILE" not in k and "KEY" not in k}
    with pytest.raises(CityopsError, match="CITYOPS_KAFKA_SSL_"):
        ensure_topics(boot, topic_specs(2), timeout_s=3,
                      security=kafka_client_security(load_kafka_settings(no_client_cert)))
    with pytest.raises(CityopsError, match="CITYOPS_KAFKA_SSL_"):
        ensure_topics(boot, topic_specs(2), timeout_s=3, security=kafka_client_security(
            load_kafka_settings(env | {"CITYOPS_KAFKA_SSL_CAFILE": str(pki.other_ca)})))


def test_secured_worker_end_to_end(tmp_path: Path, pki: Pki, tls_kafka: Any, secure_influx: ManagedProcess,
                                   secure_alertmanager: ManagedProcess) -> None:
    """Kafka over TLS with a client certificate, InfluxDB with a user over HTTPS, Alertmanager with basic
    auth over HTTPS: the simulator's events reach InfluxDB as KPIs, a bad message reaches the dead-letter
    topic (the runtime's own producer), and evaluate-alerts' reader reads the alerts topic, all over TLS."""
    from kafka import KafkaConsumer, KafkaProducer

    from cityops import evaluate

    broker, terminator = tls_kafka
    env = kafka_tls_env(terminator, pki) | influx_env(secure_influx, pki) | am_env(secure_alertmanager, pki)
    security = kafka_client_security(load_kafka_settings(env))
    boot = env["CITYOPS_KAFKA_BOOTSTRAP"]
    worker = Worker(tmp_path, broker, secure_influx, **env).start()
    try:
        worker.wait(lambda: (worker.health() or {}).get("ready"), 120, "worker ready over TLS")
        sim_env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")} | env
        sim = subprocess.run([sys.executable, "-m", "cityops.cli", "simulate", "--bootstrap", boot, "--seed", "5",
                              "--duration", "5m", "--rate", "4", "--streams", "traffic,health", "--quiet"],
                             env=sim_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert sim.returncode == 0, sim.stderr
        producer = KafkaProducer(bootstrap_servers=boot, **security)
        producer.send("traffic.card-taps", b"{not json")
        producer.flush()
        producer.close()
        worker.wait(lambda: worker.counted() >= 500, 120, "simulated events counted")

        def kpi_rows() -> int:
            res = admin_query(secure_influx, pki, 'SELECT count("taps_in") FROM "traffic_ridership"', "cityops")
            return int(res["series"][0]["values"][0][1]) if res.get("series") else 0

        worker.wait(lambda: kpi_rows() > 0, 60, "KPIs in the secured InfluxDB")
        dead = KafkaConsumer("cityops.dead-letter", bootstrap_servers=boot, auto_offset_reset="earliest",
                             consumer_timeout_ms=30_000, **security)
        try:
            first = next(iter(dead))
            assert first.value == b"{not json"
        finally:
            dead.close()
        assert isinstance(evaluate.read_alerts(boot, security=security), list)
        assert worker.terminate() == 0
    finally:
        worker.stop()
    # Every connection was TLS with the worker's client certificate (the terminator's only door).
    assert terminator.handshakes >= 4 and terminator.peers == {"{'commonName': 'cityops-worker'}"}


@pytest.mark.parametrize("setting,value,names", [
    ("CITYOPS_INFLUX_PASSWORD", "not-the-password", "CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD"),
    ("CITYOPS_ALERTMANAGER_PASSWORD", "not-the-password",
     "CITYOPS_ALERTMANAGER_USERNAME / CITYOPS_ALERTMANAGER_PASSWORD"),
])
def test_worker_with_refused_credentials_stops_with_one_line(tmp_path: Path, pki: Pki, kafka: ManagedProcess,
                                                             secure_influx: ManagedProcess,
                                                             secure_alertmanager: ManagedProcess, setting: str,
                                                             value: str, names: str) -> None:
    env = influx_env(secure_influx, pki) | am_env(secure_alertmanager, pki) | {setting: value}
    worker = Worker(tmp_path, kafka, secure_influx, **env).start()
    assert worker.proc is not None
    code = worker.proc.wait(90)
    out = worker.log_tail()
    assert code == 2, out
    assert names in out and "Traceback" not in out and value not in out
    assert len([ln for ln in out.splitlines() if ln.startswith("cityops:")]) == 1


# -- Kafka SASL: Tansu --authentication --------------------------------------------------------------------
def test_kafka_sasl_refused_credentials_are_named(tmp_path: Path) -> None:
    """Tansu with --authentication answers SCRAM-SHA-256/512 and refuses the login (with memory storage no
    user can exist once authentication is on): the failure names the SASL settings, never the password."""
    broker = start_kafka(tmp_path / "kafka-sasl", authentication=True)
    try:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            s = load_kafka_settings({"CITYOPS_KAFKA_BOOTSTRAP": broker.url,
                                     "CITYOPS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                     "CITYOPS_KAFKA_SASL_MECHANISM": mechanism,
                                     "CITYOPS_KAFKA_SASL_USERNAME": "cityops",
                                     "CITYOPS_KAFKA_SASL_PASSWORD": "kafka-pass-1"})
            with pytest.raises(CityopsError) as err:
                ensure_topics(broker.url, topic_specs(2), timeout_s=3, security=kafka_client_security(s))
            msg = str(err.value)
            assert f"{mechanism} as cityops" in msg and "CITYOPS_KAFKA_SASL_USERNAME" in msg
            assert "kafka-pass-1" not in msg
    finally:
        broker.stop()


# -- credentials refused mid-run: nothing lost ------------------------------------------------------------
def secure_stored(influx: ManagedProcess, pki: Pki) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """The ridership KPIs as test_kpi_path.stored() reads them, through the admin user."""
    res = admin_query(influx, pki, 'SELECT * FROM "traffic_ridership"', "cityops")
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for s in res.get("series", []):
        for values in s["values"]:
            r = dict(zip(s["columns"], values))
            out[(r["mode"], r["line"], r["time"])] = r
    return {"traffic_ridership": out}


def test_credentials_refused_mid_run_keep_the_data(tmp_path: Path, pki: Pki, kafka: ManagedProcess,
                                                   secure_influx: ManagedProcess) -> None:
    """A least-privilege user's password is changed under a running worker: its writes are refused, it logs
    that naming the settings, keeps every point queued and keeps consuming; once the password works again
    the KPIs are exactly those of all events."""
    from tests.conftest import produce
    from tests.integration.test_kpi_path import assert_kpis_equal, expected, simulate

    admin_query(secure_influx, pki, 'CREATE DATABASE "cityops"')
    admin_query(secure_influx, pki, "CREATE USER \"writer\" WITH PASSWORD 'w-pass-1'")
    admin_query(secure_influx, pki, 'GRANT ALL ON "cityops" TO "writer"')
    worker = Worker(tmp_path, kafka, secure_influx, **influx_env(secure_influx, pki, "writer", "w-pass-1")).start()
    try:
        first, evs1 = simulate(seed=41, minutes=4, rate=30, batch=10)
        produce(kafka.url, first)
        worker.wait(lambda: secure_stored(secure_influx, pki)["traffic_ridership"] != {}, 120, "first KPIs")
        admin_query(secure_influx, pki, "SET PASSWORD FOR \"writer\" = 'rotated-2'")
        second, evs2 = simulate(seed=42, minutes=4, rate=30, batch=10)
        produce(kafka.url, second)
        worker.wait(lambda: worker.counted() >= len(evs1) + len(evs2), 120, "second part consumed")
        worker.wait(lambda: "delivery refused" in worker.log_tail(10**6), 60, "refusal logged")
        assert (worker.health() or {}).get("influx_pending_points", 0) > 0
        refusal = next(ln for ln in worker.log_tail(10**6).splitlines() if "delivery refused" in ln)
        assert "CITYOPS_INFLUX_USERNAME / CITYOPS_INFLUX_PASSWORD" in refusal and "w-pass-1" not in refusal
        admin_query(secure_influx, pki, "SET PASSWORD FOR \"writer\" = 'w-pass-1'")
        worker.wait(lambda: (worker.health() or {}).get("influx_pending_points", 1) == 0, 120, "sink drained")
        exp = {"traffic_ridership": expected(evs1 + evs2)["traffic_ridership"]}
        assert_kpis_equal(exp, secure_stored(secure_influx, pki))
    finally:
        worker.stop()
