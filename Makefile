# Set-up and the everyday commands. `make run` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench bench-peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: the default experiment on the best backend available here.
run: setup
	$(VENV)/bin/trainbench

# The default test suite: everything but the tests marked slow (about a few minutes on 2 cores).
test: setup
	$(VENV)/bin/pytest -n 2 -m "not slow"

test-all: setup
	$(VENV)/bin/pytest -n 2

bench: setup
	$(PY) scripts/bench_reference.py

# Each backend against the loop a user would otherwise write; e.g. PEERS_ARGS="--seq 1024 --json x.json"
bench-peers: setup
	$(PY) scripts/bench_peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) results multirun outputs
