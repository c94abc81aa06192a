# The two commands of the README:
#   make demo   set up a virtual environment and run the demo (dataset from MuJoCo rollouts, BC and CQL, scores)
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine install the CUDA build of your choice first.
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,lm]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/hybridrl demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python benchmarks/throughput.py
