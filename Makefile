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

# The paper's evaluation on three real apps -> docs/results.md (~3 h on 2 cores; resumable).
# TFLite profiles need the export extra (litert-torch), installed here if missing.
reproduce: install data
	$(PY) -m pip install -q -e ".[dev,export]"
	$(PY) benchmarks/reproduce.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
