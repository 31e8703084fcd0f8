# nestdnn: `make demo` runs the main job end to end, `make test` runs the test suite.
# Both create .venv if missing and install the project with every extra (idempotent): the
# device install (`pip install nestdnn`, serving only) plus train, tflite, export and the test
# tools, so that every path, the TFLite conversion included, is tested here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EXTRAS ?= dev

.PHONY: demo test lint data install fuzz chaos reproduce clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing and apt unusable: tests that need it will be skipped"; fi

test: install data
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: install data
	$(VENV)/bin/nestdnn demo

fuzz: install
	$(PY) benchmarks/fuzz_api.py

# kill -9, model files and state/token files damaged under a live daemon: nothing lost (~2 min)
chaos: install
	$(PY) benchmarks/chaos.py

# Triton's perf_analyzer in its own venv (never the project's): the tritonclient 2.40.0 wheel
# ships bin/perf_analyzer; it needs the CUDA runtime library (PyPI) and Debian's libb64.
# Run it with benchmarks/perf_analyzer.sh (sets LD_LIBRARY_PATH); see docs/api.md.
PERF_TOOLS := .perf-tools
.PHONY: perf-tools
perf-tools: $(PERF_TOOLS)/.installed

$(PERF_TOOLS)/.installed:
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq libb64-0d; \
		else echo "perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d"; exit 2; fi; \
	fi
	test -x $(PERF_TOOLS)/bin/python || $(PYTHON) -m venv $(PERF_TOOLS)
	$(PERF_TOOLS)/bin/python -m pip install -q "tritonclient==2.40.0" nvidia-cuda-runtime-cu12
	benchmarks/perf_analyzer.sh --version
	touch $@

# The paper's evaluation on three real apps -> docs/results.md (~3 h on 2 cores; resumable).
# TFLite profiles need the export extra (litert-torch), installed here if missing.
reproduce: install data
	$(PY) -m pip install -q -e ".[dev,export]"
	$(PY) benchmarks/reproduce.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
