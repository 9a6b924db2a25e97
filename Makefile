# capo-operator: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit test-emulator test-integration test-real-rehearsal lint format bench bench-informer bench-delete bench-scale bench-release soak soak-ci clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

## demo: start the API emulator and the operator, run a small stateful workload, narrate what happens
demo: $(STAMP)
	$(BIN)/python -m demo

## test: every test suite (unit, emulator, component, delivery, integration); kind e2e tests skip without Docker
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-emulator: $(STAMP)
	$(BIN)/python -m pytest -q tests/emulator

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

## test-real-rehearsal: the integration suite in real-cluster mode, twice in a row on one API server
test-real-rehearsal: $(STAMP)
	$(BIN)/python hack/rehearse_real_cluster.py

## lint: ruff, mypy (strict) and the layering contracts (import-linter, pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check capo_operator kube_emulator capo_testkit bench demo tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format capo_operator kube_emulator capo_testkit bench demo tests
	$(BIN)/ruff check --fix .

## bench: webhook throughput and latency (prints JSON and a table)
bench: $(STAMP)
	$(BIN)/python bench/webhook.py

## bench-informer: informer decoders, watch events/s, initial sync/CPU/RSS with 5k/10k/20k pods (~10 min)
bench-informer: $(STAMP)
	$(BIN)/python bench/informer.py --json bench/results/informer.json

## bench-delete: pod-delete latency with no webhook, a zero-work webhook and the operator, at 2 and 5 ms per write
bench-delete: $(STAMP)
	$(BIN)/python bench/delete_path.py --json bench/results/delete-path.json

## soak: 10-minute chaos soak (3 replicas, >= 2000 operations, faults), judged by an independent checker
soak: $(STAMP)
	$(BIN)/python bench/soak.py --duration 600 --ops 2000 --json bench/results/soak.json

## soak-ci: the same soak for about 2 minutes (under 3 minutes with start-up and settling)
soak-ci: $(STAMP)
	$(BIN)/python bench/soak.py --duration 100 --ops 300 --kill-every 40 --chaos-every 3 --settle 15

## bench-release: the leader's release pass in-process at 20k pods / 10k records: nothing due, a change, 1,000 expiries (~3 min)
bench-release: $(STAMP)
	$(BIN)/python bench/release_pass.py --json bench/results/release-pass.json

## bench-scale: the operator process with 5k/10k/20k pods (10k records at 20k): ready time, RSS, CPU, events/s (~15 min)
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py --json bench/results/scale.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info

-include hack/delivery.mk
