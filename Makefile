# Set-up and the everyday commands. `make run` and `make test` do all set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench bench-peers browser gpu-wheels gpu-campaign-dry-run clean

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

# Debian's headless Chromium, for the slow browser test of `trainbench report --html`
# (tests/test_report_html.py); does nothing when chromium is already installed. Needs root.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The GPU campaign (README "Measuring on a GPU"): fetch, for the GPU machine's Python 3.12, the
# wheels it lacks and build trainbench's own, into .whl/.
gpu-wheels: setup
	$(PY) scripts/gpu_wheels.py

# Print the campaign's plan and check that every command it would run parses.
gpu-campaign-dry-run: setup
	$(PY) scripts/gpu_campaign.py --dry-run

# Each backend against the loop a user would otherwise write; e.g. PEERS_ARGS="--seq 1024 --json x.json"
bench-peers: setup
	$(PY) scripts/bench_peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) results multirun outputs
