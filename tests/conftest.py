"""Shared fixtures: real Kafka-API broker (Tansu) and InfluxDB started on free ports, and a worker process.

A missing server binary makes these fixtures fail (LocalProcessError), never skip: CI must install them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cityops.localproc import ManagedProcess, free_port
from cityops.localstack import start_influxdb, start_kafka
from cityops.topics import ensure_topics, topic_specs

PSEUDONYM_KEY = "test-pseudonym-key-0123456789"


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A fresh Tansu broker (memory storage) with cityops' topics, per test: isolation for free."""
    proc = start_kafka(tmp_path / "kafka")
    ensure_topics(proc.url, topic_specs(4))
    yield proc
    proc.stop()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_influxdb(tmp_path / "influxdb")
    yield proc
    proc.stop()


class Worker:
    """`cityops worker` as a child process, configured only through CITYOPS_* variables."""

    def __init__(self, tmp_path: Path, kafka: ManagedProcess, influx: ManagedProcess, **env: str) -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "worker-data"
        self.env = dict(
            os.environ,
            CITYOPS_KAFKA_BOOTSTRAP=kafka.url,
            CITYOPS_INFLUX_URL=influx.url,
            CITYOPS_INFLUX_DATABASE="cityops",
            CITYOPS_PSEUDONYM_KEY=PSEUDONYM_KEY,
            CITYOPS_DATA_DIR=str(self.data_dir),
            CITYOPS_WEB_PORT=str(self.port),
            CITYOPS_CONSUMER_SESSION_TIMEOUT_S="6",
            CITYOPS_TOPIC_PARTITIONS="4",
            # The tests feed the simulated city: its source registry, as the demo and compose configure it.
            CITYOPS_SOURCE_REGISTRY="simulator",
        )
        self.env.update(env)
        self.log_path = tmp_path / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "Worker":
        self.starts += 1
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cityops.cli", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def counted(self, stream: str | None = None) -> int:
        """Events this run has decided on (any outcome), from /healthz."""
        h = self.health()
        if not h:
            return 0
        return sum(n for k, n in h["events"].items() if stream is None or k.startswith(stream + "/"))

    def wait(self, predicate: Any, timeout_s: float = 90.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if predicate():
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; health={self.health()}\n{self.log_tail()}")

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def worker_factory(tmp_path: Path, kafka: ManagedProcess, influx: ManagedProcess) -> Iterator[Any]:
    made: list[Worker] = []

    def make(**env: str) -> Worker:
        w = Worker(tmp_path, kafka, influx, **env)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def influx_query(influx: ManagedProcess, q: str, db: str = "cityops") -> list[dict[str, Any]]:
    """Series of the first statement of ``q`` (epoch seconds)."""
    params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "s"})
    with urllib.request.urlopen(f"{influx.url}/query?{params}", timeout=30) as r:
        data = json.loads(r.read())
    res = data["results"][0]
    if "database not found" in res.get("error", ""):
        return []  # not created yet: the worker creates it at start
    if "error" in res:
        raise AssertionError(f"InfluxQL error for {q!r}: {res['error']}")
    return res.get("series", [])


def influx_rows(influx: ManagedProcess, measurement: str) -> list[dict[str, Any]]:
    """Every point of a measurement as a dict of tags and fields (time in epoch seconds)."""
    out = []
    for s in influx_query(influx, f'SELECT * FROM "{measurement}"'):
        for values in s["values"]:
            out.append(dict(zip(s["columns"], values)))
    return out


def influx_write(influx: ManagedProcess, lines: list[str], db: str = "cityops", precision: str = "s") -> None:
    """Create `db` and write line-protocol `lines` to it, as another writer (or the past) would have.

    InfluxDB 1.6 was seen answering a write with 404 "database not found" right after acknowledging the
    CREATE DATABASE (the database was in meta.db): a 404 of that kind is retried for up to 10 s, as
    cityops's own sink does (InfluxSink: create, then write again). Any other refusal fails the test."""
    import urllib.error

    with urllib.request.urlopen(f"{influx.url}/query?" + urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}),
                                data=b"", timeout=10) as r:
        answer = json.loads(r.read() or b"{}")
    assert not any("error" in res for res in answer.get("results", [])), answer
    url = f"{influx.url}/write?" + urllib.parse.urlencode({"db": db, "precision": precision})
    deadline = time.monotonic() + 10.0
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data="\n".join(lines).encode()), timeout=10):
                return
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if exc.code != 404 or "database not found" not in body or time.monotonic() > deadline:
                raise AssertionError(f"InfluxDB refused the write: HTTP {exc.code} {body}") from exc
        time.sleep(0.2)


def produce(bootstrap: str, messages: list[tuple[str, bytes]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, batch_size=1 << 20,
                      max_request_size=8 << 20)
    for topic, raw in messages:
        p.send(topic, raw)
    p.flush()
    p.close()


# ============================================================================ secured servers (issue 8) ====
INFLUX_ADMIN = ("cityops", "influx-pass-1")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A test CA with server and client certificates (tests/pki.py)."""
    from tests.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure_influx(tmp_path: Path, pki: Any) -> Iterator[ManagedProcess]:
    """influxd with ``[http] auth-enabled = true`` (admin INFLUX_ADMIN) and ``https-enabled`` (test CA)."""
    proc = start_influxdb(tmp_path / "influxdb-secure", admin=INFLUX_ADMIN, https=(pki.server_cert, pki.server_key),
                          client_ssl=pki.client_context())
    yield proc
    proc.stop()
