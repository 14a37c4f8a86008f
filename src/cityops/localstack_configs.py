"""Configuration files for servers the demo and integration tests run locally (no Docker)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["INFLUX_CONFIG_TEMPLATE", "render_influx_config"]

# Kept equal to deploy/influxdb/influxdb.conf by tests/unit/test_deploy_configs.py; it lives
# here too so a non-editable install (no deploy/ folder) can still render it.
# Placeholders: {data_dir} (absolute, forward slashes), {http_bind} (host:port of the
# HTTP API), {bind_address} (host:port of the backup/restore RPC service).
INFLUX_CONFIG_TEMPLATE = """\
# InfluxDB 1.x configuration for a local, throwaway influxd (cityops demo and tests).
# A template: cityops.localstack_configs.render_influx_config() fills the brace
# placeholders (data_dir, http_bind, bind_address). Docker compose does not use this file
# (the influxdb:1.8 image is configured through INFLUXDB_* variables).
reporting-disabled = true
bind-address = "{bind_address}"

[meta]
  dir = "{data_dir}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{data_dir}/data"
  wal-dir = "{data_dir}/wal"
  index-version = "inmem"
  # No fsync delay: tests read right after writing.
  wal-fsync-delay = "0s"
  query-log-enabled = false
  cache-max-memory-size = 268435456
  max-series-per-database = 1000000
  max-values-per-tag = 100000

[coordinator]
  write-timeout = "10s"
  query-timeout = "60s"
  log-queries-after = "0s"

[retention]
  enabled = false

[shard-precreation]
  enabled = true

[monitor]
  # No _internal database: less disk and no background writes in tests.
  store-enabled = false

[http]
  enabled = true
  bind-address = "{http_bind}"
  auth-enabled = false
  log-enabled = false
  write-tracing = false
  pprof-enabled = false
  https-enabled = false
  max-row-limit = 0
  max-body-size = 25000000

[logging]
  format = "logfmt"
  level = "warn"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""


def _toml_str(value: str) -> str:
    # Inside a TOML basic string, backslashes and quotes need escaping.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render_influx_config(
    data_dir: str | Path, http_port: int, bind_port: int, *, host: str = "127.0.0.1",
    auth_enabled: bool = False, https_cert: str | Path | None = None, https_key: str | Path | None = None,
) -> str:
    """The influxd 1.x config for a local server keeping its files under ``data_dir``.

    ``http_port`` is the HTTP API (``/write``, ``/query``, ``/ping``); ``bind_port`` the RPC
    service influxd always opens (backup/restore). Both listen on ``host`` only (default
    loopback). Write the result to a file and start ``influxd -config FILE``.
    ``auth_enabled``: ``[http] auth-enabled`` (users and passwords). ``https_cert``/``https_key``:
    PEM server certificate and key; with them the HTTP API is HTTPS only.
    """
    for name, port in (("http_port", http_port), ("bind_port", bind_port)):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{name}={port!r}: give a TCP port between 1 and 65535")
    if http_port == bind_port:
        raise ValueError(f"http_port and bind_port are both {http_port}: give two free ports")
    if (https_cert is None) != (https_key is None):
        raise ValueError("https_cert and https_key go together: give both or neither")
    directory = Path(data_dir).expanduser().resolve().as_posix()
    text = INFLUX_CONFIG_TEMPLATE.format(
        data_dir=_toml_str(directory),
        http_bind=_toml_str(f"{host}:{http_port}"),
        bind_address=_toml_str(f"{host}:{bind_port}"),
    )
    # The template (kept equal to deploy/) is the plain server; security is switched on line by line.
    if auth_enabled:
        text = text.replace("  auth-enabled = false\n", "  auth-enabled = true\n", 1)
    if https_cert is not None and https_key is not None:
        cert = _toml_str(Path(https_cert).resolve().as_posix())
        key = _toml_str(Path(https_key).resolve().as_posix())
        text = text.replace("  https-enabled = false\n", f'  https-enabled = true\n  https-certificate = "{cert}"\n'
                            f'  https-private-key = "{key}"\n', 1)
    return text
