# The README's commands. `make setup` once on a fresh machine; then `make demo` or `make test`.
PY ?= python3

.PHONY: setup demo test test-unit bench nab

setup:
	bash scripts/setup.sh

demo: setup
	cityops demo

test: setup
	$(PY) -m pytest -p no:cacheprovider -q

test-unit:
	$(PY) -m pytest -q tests/unit

bench:
	$(PY) benchmarks/bench_kpi_path.py

nab:
	cityops nab-detect ../shared/data/nab/data /tmp/cityops-nab && \
	$(PY) ../shared/tools/nabscore.py --nab-dir ../shared/data/nab --detections /tmp/cityops-nab
