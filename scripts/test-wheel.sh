#!/usr/bin/env bash
# The package as users install it (run by `make test-wheel`, part of `make test` and CI):
#  1. build the wheel exactly as deploy/Dockerfile's builder stage does;
#  2. install it, non-editable, into a fresh virtualenv (with the test extras);
#  3. check that the installed cityops, not the checkout's src/, is what that interpreter imports, and
#     that `cityops check-config` finds every packaged data file;
#  4. run the end-to-end alert and food integration tests with that interpreter, from a temporary
#     folder (the worker processes the tests start inherit it), against real Tansu/InfluxDB/Alertmanager.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
unset PYTHONPATH  # an exported PYTHONPATH=src would put the checkout back on the path
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cityops-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

echo "test-wheel: building the wheel (pip wheel --no-deps --wheel-dir DIR ., as deploy/Dockerfile)"
"$VENV/bin/python" -m pip wheel -q --no-deps --wheel-dir "$WORK/wheels" .
WHEEL=$(ls "$WORK"/wheels/cityops-*.whl)

echo "test-wheel: installing $(basename "$WHEEL") into a fresh virtualenv"
# venv from a venv's interpreter makes a fresh venv on the same base Python.
"$VENV/bin/python" -m venv "$WORK/venv"
# First the wheel alone, with its runtime dependencies only (as the Dockerfile installs it): every module of
# the package must import, and check-config must pass, without the test extras.
# (grep drops pip's notes about find-links folders that do not exist on this machine)
"$WORK/venv/bin/python" -m pip install -q "$WHEEL" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

cd "$WORK"
"$WORK/venv/bin/python" - <<'PYEOF'
import importlib, pkgutil
import cityops
optional = {"cityops.localstack"}  # the embedded broker of `cityops demo`: the `local` extra
names = [m.name for m in pkgutil.walk_packages(cityops.__path__, "cityops.") if m.name not in optional]
for name in names:
    importlib.import_module(name)
print(f"test-wheel: {len(names)} modules import with the runtime dependencies alone")
PYEOF
# pytest puts the checkout's root (not src/) on sys.path for tests/: cityops must still come from the venv.
"$WORK/venv/bin/python" - "$ROOT" "$WORK/venv" <<'PYEOF'
import sys
root, venv = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import cityops
from cityops import resources
assert cityops.__file__.startswith(venv), f"cityops imported from {cityops.__file__}, not the wheel in {venv}"
assert str(resources.rules_dir()).startswith(venv) and not resources.missing_packaged_files()
print(f"test-wheel: cityops {cityops.__version__} from {cityops.__file__}")
PYEOF
env -i PATH="$PATH" HOME="${HOME:-/tmp}" CITYOPS_KAFKA_BOOTSTRAP=127.0.0.1:9 CITYOPS_INFLUX_URL=http://127.0.0.1:9 \
  CITYOPS_PSEUDONYM_KEY=wheel-test-key-0123456789 CITYOPS_DATA_DIR="$WORK/data" CITYOPS_SOURCE_REGISTRY=simulator \
  "$WORK/venv/bin/cityops" check-config >"$WORK/check-config.txt" || { cat "$WORK/check-config.txt"; exit 1; }
grep -E "^(rules|source registry|streams):" "$WORK/check-config.txt" | sed 's/^/test-wheel: check-config: /'
# The template of `cityops agent new` ships in the wheel: a scaffolded plugin passes `cityops agent test`.
"$WORK/venv/bin/cityops" agent new wheel-probe --dir "$WORK" >/dev/null
"$WORK/venv/bin/cityops" agent test "$WORK/cityops-wheel-probe" | sed 's/^/test-wheel: agent test: /'

echo "test-wheel: adding the test extras"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[dev]" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

echo "test-wheel: end-to-end alert and food tests against the installed wheel"
"$WORK/venv/bin/python" -m pytest -p no:cacheprovider -q --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
  "$ROOT/tests/integration/test_alerts_e2e.py" "$ROOT/tests/integration/test_food_pipeline.py"
echo "test-wheel: done in $(( $(date +%s) - t0 )) s"
