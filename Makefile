# The README's commands on a fresh Debian/Ubuntu machine: `make demo` (the service) and `make test`.
# Python packages go into the project virtualenv .venv (Debian's own Python is externally managed);
# `make setup` creates it and is re-run by the others only when pyproject.toml or the script changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-py test-unit test-wheel wheel check-config bench nab

setup: $(VENV)/.cityops-setup

# (also when the example plugin changes: it is installed non-editable, so a change needs a reinstall)
PARKING_FILES := $(shell find examples/cityops-parking -type f -not -path '*/__pycache__/*' -not -path '*/tests/*' \
                   -not -path '*/build/*' -not -path '*.egg-info/*')

$(VENV)/.cityops-setup: pyproject.toml scripts/setup.sh $(PARKING_FILES)
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(VENV)/bin/cityops demo

# Everything CI runs: the whole suite against the checkout, then the wheel as users install it.
test: test-py test-wheel

test-py: setup
	$(PY) -m pytest -p no:cacheprovider -q

test-unit: setup
	$(PY) -m pytest -p no:cacheprovider -q tests/unit

# Builds the wheel as deploy/Dockerfile does (pip wheel --no-deps --wheel-dir DIR .), installs it
# non-editable into a fresh virtualenv and runs the end-to-end alert and food tests against that
# install, from a folder where the checkout's src/ is not importable.
test-wheel: setup
	VENV=$(VENV) bash scripts/test-wheel.sh

wheel: setup
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

check-config: setup
	$(VENV)/bin/cityops check-config

bench: setup
	$(PY) benchmarks/bench_kpi_path.py

nab: setup
	$(VENV)/bin/cityops nab-detect ../shared/data/nab/data /tmp/cityops-nab && \
	$(PY) ../shared/tools/nabscore.py --nab-dir ../shared/data/nab --detections /tmp/cityops-nab
