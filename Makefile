# The two commands of the README:
#   make bench  set up a virtual environment and run the quick benchmark suite (the embedded default)
#   make test   set up the same environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine install the CUDA build of your choice first.
TORCH ?= torch==2.13.0

.PHONY: setup bench demo test throughput

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,lm,report]'
	touch $@

setup: $(VENV)/.installed

bench: setup
	$(BIN)/hybridrl bench quick

demo: setup
	$(BIN)/hybridrl demo

test: setup
	$(BIN)/python -m pytest -q

throughput: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/hybridrl bench throughput
