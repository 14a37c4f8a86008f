"""Secured-connection settings and the client configuration built from them (issue 8 item 5).

No network here: what the real servers say is in tests/integration/test_secured_connections.py. These
tests hold the settings' checks (exit 2 naming the setting) and that every Kafka client cityops builds gets
the same SASL/TLS configuration, since the bundled broker cannot accept a SASL login (see README).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cityops.connections import (alertmanager_http, faust_broker_credentials, influx_http, kafka_client_security,
                                 kafka_ssl_context)
from cityops.errors import ConfigError
from cityops.settings import load_kafka_settings, load_settings
from tests.pki import CLIENT_KEY_PASSWORD, Pki

GOOD = {"CITYOPS_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "CITYOPS_INFLUX_URL": "http://127.0.0.1:8086",
        "CITYOPS_PSEUDONYM_KEY": "0123456789abcdef", "CITYOPS_DATA_DIR": "/tmp/cityops-test"}


def sasl_ssl(pki: Pki, **extra: str) -> dict[str, str]:
    return dict(GOOD, CITYOPS_KAFKA_SECURITY_PROTOCOL="SASL_SSL", CITYOPS_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                CITYOPS_KAFKA_SASL_USERNAME="cityops", CITYOPS_KAFKA_SASL_PASSWORD="kafka-secret",
                CITYOPS_KAFKA_SSL_CAFILE=str(pki.ca), CITYOPS_KAFKA_SSL_CERTFILE=str(pki.client_cert),
                CITYOPS_KAFKA_SSL_KEYFILE=str(pki.client_key),
                CITYOPS_KAFKA_SSL_KEY_PASSWORD=CLIENT_KEY_PASSWORD) | extra


def _ca_subjects(ctx: ssl.SSLContext) -> list[str]:
    return [dict(x[0] for x in c["subject"])["commonName"] for c in ctx.get_ca_certs()]


# -- Kafka ------------------------------------------------------------------------------------------------
def test_plaintext_by_default() -> None:
    s = load_settings(GOOD)
    assert kafka_client_security(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(s) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanism_and_credentials_reach_the_client_arguments(mechanism: str) -> None:
    s = load_settings(dict(GOOD, CITYOPS_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                           CITYOPS_KAFKA_SASL_MECHANISM=mechanism, CITYOPS_KAFKA_SASL_USERNAME="cityops",
                           CITYOPS_KAFKA_SASL_PASSWORD="kafka-secret"))
    assert kafka_client_security(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                                        "sasl_plain_username": "cityops", "sasl_plain_password": "kafka-secret"}
    creds = faust_broker_credentials(s)
    assert (type(creds).__name__, creds.mechanism.value, creds.username, creds.password, creds.protocol.value) == (
        "SASLCredentials", mechanism, "cityops", "kafka-secret", "SASL_PLAINTEXT")


def test_ssl_context_loads_the_ca_and_the_encrypted_client_key(pki: Pki) -> None:
    s = load_settings(sasl_ssl(pki))
    ctx = kafka_ssl_context(s)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert _ca_subjects(ctx) == ["cityops test CA"]
    sec = kafka_client_security(s, ctx)
    assert sec["security_protocol"] == "SASL_SSL" and sec["ssl_context"] is ctx
    creds = faust_broker_credentials(s, ctx)
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is ctx
    tls_only = load_settings({k: v for k, v in sasl_ssl(pki).items() if "SASL" not in k}
                             | {"CITYOPS_KAFKA_SECURITY_PROTOCOL": "SSL"})
    creds = faust_broker_credentials(tls_only)
    assert type(creds).__name__ == "SSLCredentials" and _ca_subjects(creds.context) == ["cityops test CA"]
    assert load_settings(sasl_ssl(pki, CITYOPS_KAFKA_SSL_CHECK_HOSTNAME="false")) is not None
    assert not kafka_ssl_context(load_settings(sasl_ssl(pki, CITYOPS_KAFKA_SSL_CHECK_HOSTNAME="false"))).check_hostname


async def test_every_kafka_client_of_the_worker_gets_the_same_security(pki: Pki, tmp_path: Path) -> None:
    """The Faust app's consumer and producer (built by faust-streaming's aiokafka driver) and the runtime's
    own aiokafka producer (dead letters, alert transitions) carry the settings' SASL mechanism, user and
    TLS context. Constructed only: nothing is started or connected."""
    from aiokafka import AIOKafkaProducer

    from cityops.agents.app import create_app

    s = load_settings(sasl_ssl(pki, CITYOPS_DATA_DIR=str(tmp_path), CITYOPS_RULES_DIR="none",
                                CITYOPS_SOURCE_REGISTRY="none"))
    app, runtime = create_app(s)
    try:
        def sec(client: Any) -> tuple[Any, ...]:
            c = getattr(client, "client", None) or client._client  # producer: .client, consumer: ._client
            return (c._security_protocol, c._sasl_mechanism, c._sasl_plain_username, c._sasl_plain_password,
                    _ca_subjects(c._ssl_context))

        want = ("SASL_SSL", "SCRAM-SHA-512", "cityops", "kafka-secret", ["cityops test CA"])
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        producer = app.producer._new_producer()
        ours = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, **kafka_client_security(s))
        try:
            assert sec(consumer) == sec(producer) == sec(ours) == want
        finally:
            for client in (consumer, producer, ours):
                await client.stop()  # never started: releases what the constructors hold
    finally:
        runtime.store.close()


def test_kafka_python_clients_take_the_same_arguments(pki: Pki) -> None:
    """kafka-python (topics admin, simulator producer, evaluate-alerts consumer) accepts every key."""
    from kafka.admin import KafkaAdminClient
    from kafka.consumer import KafkaConsumer
    from kafka.producer import KafkaProducer

    sec = kafka_client_security(load_settings(sasl_ssl(pki)))
    for cls in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
        assert set(sec) <= set(cls.DEFAULT_CONFIG), cls


def test_every_kafka_client_in_the_source_takes_the_security_arguments() -> None:
    """A guard for clients added later: every aiokafka / kafka-python client constructed in src/cityops
    passes ``**`` security arguments (kafka_client_security). A plaintext client would fail only against a
    secured cluster, in production."""
    import ast

    import cityops

    clients = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaClient", "AIOKafkaAdminClient", "KafkaProducer",
               "KafkaConsumer", "KafkaAdminClient", "KafkaClient"}
    found, plain = 0, []
    for path in Path(cityops.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in clients:
                    found += 1
                    if not any(k.arg is None for k in node.keywords):
                        plain.append(f"{path.name}:{node.lineno} {name}")
    assert found >= 5 and plain == [], plain


def test_kafka_only_settings_for_commands_without_the_worker_settings(pki: Pki) -> None:
    env = {k: v for k, v in sasl_ssl(pki).items() if k.startswith("CITYOPS_KAFKA_")}
    s = load_kafka_settings(env)
    assert kafka_client_security(s)["sasl_mechanism"] == "SCRAM-SHA-512"
    assert load_kafka_settings(env, kafka_bootstrap="10.0.0.1:9093").kafka_bootstrap == "10.0.0.1:9093"


@pytest.mark.parametrize("change,names", [
    ({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "TLS"}, "CITYOPS_KAFKA_SECURITY_PROTOCOL"),
    ({"CITYOPS_KAFKA_SASL_MECHANISM": "GSSAPI"}, "CITYOPS_KAFKA_SASL_MECHANISM"),
    ({"CITYOPS_KAFKA_SASL_PASSWORD": ""}, "CITYOPS_KAFKA_SASL_PASSWORD"),
    ({"CITYOPS_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "CITYOPS_KAFKA_SSL_CAFILE"),
    ({"CITYOPS_KAFKA_SSL_CERTFILE": "/nonexistent/client.pem"}, "CITYOPS_KAFKA_SSL_CERTFILE"),
    ({"CITYOPS_KAFKA_SSL_KEY_PASSWORD": "wrong"}, "CITYOPS_KAFKA_SSL_KEY_PASSWORD"),
    ({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "CITYOPS_KAFKA_SSL_CAFILE"),
    ({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "SSL"}, "CITYOPS_KAFKA_SASL_MECHANISM"),
])
def test_bad_kafka_security_names_the_setting(pki: Pki, change: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(sasl_ssl(pki, **change) if "CITYOPS_KAFKA_SASL_PASSWORD" not in change
                      else {k: v for k, v in sasl_ssl(pki).items() if k != "CITYOPS_KAFKA_SASL_PASSWORD"})
    assert names in str(err.value)


def test_a_ca_file_that_is_not_pem_is_named(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    for env, name in ((sasl_ssl(pki, CITYOPS_KAFKA_SSL_CAFILE=str(junk)), "CITYOPS_KAFKA_SSL_CAFILE"),
                      (dict(GOOD, CITYOPS_INFLUX_URL="https://influx:8086", CITYOPS_INFLUX_CA_FILE=str(junk)),
                       "CITYOPS_INFLUX_CA_FILE"),
                      (dict(GOOD, CITYOPS_ALERTMANAGER_URL="https://am:9093", CITYOPS_ALERTMANAGER_CA_FILE=str(junk)),
                       "CITYOPS_ALERTMANAGER_CA_FILE")):
        with pytest.raises(ConfigError, match=name):
            load_settings(env)


def test_password_files_are_read_once_and_never_shown(pki: Pki, tmp_path: Path) -> None:
    pw = tmp_path / "kafka-password"
    pw.write_text("from-a-file\n")  # `echo secret > file` adds a newline: not part of the secret
    env = {k: v for k, v in sasl_ssl(pki).items() if k != "CITYOPS_KAFKA_SASL_PASSWORD"}
    s = load_settings(dict(env, CITYOPS_KAFKA_SASL_PASSWORD_FILE=str(pw)))
    assert kafka_client_security(s)["sasl_plain_password"] == "from-a-file"
    assert "from-a-file" not in repr(s) and "kafka-secret" not in repr(load_settings(sasl_ssl(pki)))
    with pytest.raises(ConfigError, match="CITYOPS_KAFKA_SASL_PASSWORD and CITYOPS_KAFKA_SASL_PASSWORD_FILE"):
        load_settings(sasl_ssl(pki, CITYOPS_KAFKA_SASL_PASSWORD_FILE=str(pw)))
    with pytest.raises(ConfigError, match="CITYOPS_INFLUX_PASSWORD_FILE"):
        load_settings(dict(GOOD, CITYOPS_INFLUX_USERNAME="u", CITYOPS_INFLUX_PASSWORD_FILE=str(tmp_path / "none")))


# -- InfluxDB and Alertmanager ----------------------------------------------------------------------------
def test_influx_user_password_token_and_tls(pki: Pki, tmp_path: Path) -> None:
    s = load_settings(dict(GOOD, CITYOPS_INFLUX_URL="https://influx:8086", CITYOPS_INFLUX_USERNAME="writer",
                           CITYOPS_INFLUX_PASSWORD="pw", CITYOPS_INFLUX_CA_FILE=str(pki.ca)))
    h = influx_http(s)
    assert h.headers == {"Authorization": "Basic d3JpdGVyOnB3"}  # base64("writer:pw")
    assert isinstance(h.ssl, ssl.SSLContext) and _ca_subjects(h.ssl) == ["cityops test CA"]
    assert "pw" not in repr(h)
    token_file = tmp_path / "token"
    token_file.write_text("tok-2x\n")
    t = influx_http(load_settings(dict(GOOD, CITYOPS_INFLUX_TOKEN_FILE=str(token_file))))
    assert t.headers == {"Authorization": "Token tok-2x"} and t.ssl is True
    assert influx_http(load_settings(dict(GOOD, CITYOPS_INFLUX_URL="https://i:1",
                                          CITYOPS_INFLUX_VERIFY_TLS="false"))).ssl is False


def test_alertmanager_basic_auth_or_bearer(pki: Pki) -> None:
    base = dict(GOOD, CITYOPS_ALERTMANAGER_URL="https://am:9093", CITYOPS_ALERTMANAGER_CA_FILE=str(pki.ca))
    b = alertmanager_http(load_settings(dict(base, CITYOPS_ALERTMANAGER_USERNAME="cityops",
                                             CITYOPS_ALERTMANAGER_PASSWORD="pw")))
    assert b.headers == {"Authorization": "Basic Y2l0eW9wczpwdw=="} and _ca_subjects(b.ssl) == ["cityops test CA"]
    t = alertmanager_http(load_settings(dict(base, CITYOPS_ALERTMANAGER_TOKEN="tok")))
    assert t.headers == {"Authorization": "Bearer tok"}


@pytest.mark.parametrize("change,names", [
    ({"CITYOPS_INFLUX_USERNAME": "u"}, "CITYOPS_INFLUX_USERNAME is set without CITYOPS_INFLUX_PASSWORD"),
    ({"CITYOPS_INFLUX_PASSWORD": "p"}, "CITYOPS_INFLUX_PASSWORD is set without CITYOPS_INFLUX_USERNAME"),
    ({"CITYOPS_INFLUX_USERNAME": "u", "CITYOPS_INFLUX_PASSWORD": "p", "CITYOPS_INFLUX_TOKEN": "t"},
     "CITYOPS_INFLUX_USERNAME and CITYOPS_INFLUX_TOKEN"),
    ({"CITYOPS_INFLUX_CA_FILE": "/nonexistent/ca.pem"}, "CITYOPS_INFLUX_CA_FILE"),
    ({"CITYOPS_ALERTMANAGER_URL": "https://am:9093", "CITYOPS_ALERTMANAGER_CA_FILE": "/nonexistent/ca.pem"},
     "CITYOPS_ALERTMANAGER_CA_FILE"),
    ({"CITYOPS_ALERTMANAGER_URL": "http://am:9093", "CITYOPS_ALERTMANAGER_TOKEN": "t",
      "CITYOPS_ALERTMANAGER_USERNAME": "u", "CITYOPS_ALERTMANAGER_PASSWORD": "p"}, "CITYOPS_ALERTMANAGER_TOKEN"),
])
def test_bad_http_security_names_the_setting(change: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(dict(GOOD, **change))
    assert names in str(err.value)


def test_security_summary_names_no_secret(pki: Pki) -> None:
    from cityops.connections import describe_security

    s = load_settings(sasl_ssl(pki, CITYOPS_INFLUX_URL="https://influx:8086", CITYOPS_INFLUX_USERNAME="writer",
                               CITYOPS_INFLUX_PASSWORD="influx-secret", CITYOPS_ALERTMANAGER_URL="https://am:9093",
                               CITYOPS_ALERTMANAGER_TOKEN="am-token"))
    text = describe_security(s)
    assert text == ("kafka=SASL_SSL/SCRAM-SHA-512 user=cityops client-certificate "
                    "influxdb=https basic-auth user=writer alertmanager=https token")
    assert describe_security(load_settings(GOOD)) == "kafka=PLAINTEXT influxdb=http no-auth alertmanager=off"


def test_empty_values_mean_unset() -> None:
    """An env file listing the optional settings with no value (as .env templates do) changes nothing."""
    names = ["CITYOPS_KAFKA_SASL_MECHANISM", "CITYOPS_KAFKA_SASL_USERNAME", "CITYOPS_KAFKA_SASL_PASSWORD",
             "CITYOPS_KAFKA_SASL_PASSWORD_FILE", "CITYOPS_KAFKA_SSL_CAFILE", "CITYOPS_KAFKA_SSL_CERTFILE",
             "CITYOPS_KAFKA_SSL_KEYFILE", "CITYOPS_KAFKA_SSL_KEY_PASSWORD", "CITYOPS_KAFKA_SSL_KEY_PASSWORD_FILE",
             "CITYOPS_INFLUX_TOKEN", "CITYOPS_INFLUX_TOKEN_FILE", "CITYOPS_INFLUX_USERNAME",
             "CITYOPS_INFLUX_PASSWORD", "CITYOPS_INFLUX_PASSWORD_FILE", "CITYOPS_INFLUX_CA_FILE",
             "CITYOPS_ALERTMANAGER_USERNAME", "CITYOPS_ALERTMANAGER_PASSWORD", "CITYOPS_ALERTMANAGER_PASSWORD_FILE",
             "CITYOPS_ALERTMANAGER_TOKEN", "CITYOPS_ALERTMANAGER_TOKEN_FILE", "CITYOPS_ALERTMANAGER_CA_FILE"]
    s = load_settings(dict(GOOD, **{n: "" for n in names}))
    assert kafka_client_security(s) == {"security_protocol": "PLAINTEXT"}
    assert influx_http(s).headers == {} and alertmanager_http(s).headers == {}


def test_ca_file_on_a_plain_http_url_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="CITYOPS_INFLUX_CA_FILE is set but CITYOPS_INFLUX_URL is not https"):
        load_settings(dict(GOOD, CITYOPS_INFLUX_CA_FILE=str(pki.ca)))


@pytest.mark.parametrize("name", ["CITYOPS_KAFKA_SSL_CAFILE", "CITYOPS_INFLUX_CA_FILE",
                                  "CITYOPS_ALERTMANAGER_CA_FILE"])
def test_worker_exits_2_naming_a_missing_ca_file(tmp_path: Path, name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(GOOD, CITYOPS_DATA_DIR=str(tmp_path), CITYOPS_INFLUX_URL="https://127.0.0.1:1",
               CITYOPS_ALERTMANAGER_URL="https://127.0.0.1:2", CITYOPS_KAFKA_SECURITY_PROTOCOL="SSL")
    env[name] = str(tmp_path / "missing-ca.pem")
    r = subprocess.run([sys.executable, "-m", "cityops.cli", "worker"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert name in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_simulate_and_topics_read_the_kafka_security_settings(tmp_path: Path) -> None:
    """`cityops simulate` / `topics` / `evaluate-alerts` take --bootstrap but the security from settings:
    a bad one stops them with exit 2 naming it, before any connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    env.update(CITYOPS_KAFKA_SECURITY_PROTOCOL="SASL_SSL", CITYOPS_KAFKA_SASL_MECHANISM="SCRAM-SHA-256")
    for args in (["simulate", "--duration", "1m", "--quiet"], ["topics"]):
        r = subprocess.run([sys.executable, "-m", "cityops.cli", *args, "--bootstrap", "127.0.0.1:1"], env=env,
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "CITYOPS_KAFKA_SASL_USERNAME" in r.stderr and "CITYOPS_KAFKA_SASL_PASSWORD" in r.stderr

