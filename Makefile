# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Every package at the version the recorded numbers come from (pip constraints): see the file's header.
LOCK := requirements.lock
ARGS ?=

.PHONY: run test test-fast lint install clean bench canary lock docs

# `make run` installs what a run needs (core + the sweep plugins); `make test` adds the test tools.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip setuptools wheel
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[sweep]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[sweep,test]"
	touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m kdprune +experiment=yolo11n_mcu $(ARGS)

# the full suite (what CI runs), after the linter
test: lint
	$(BIN)/python -m pytest -n auto --dist loadfile $(ARGS)

# the unit tests alone (no training, conversion or export): a few minutes, for changing code
test-fast: lint
	$(BIN)/python -m pytest -n auto --dist loadfile -m "not slow" $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check kdprune tests bench

# docs/configuration.md, the reference of every config key, from conf/'s YAML files and their comments
# (tests/test_config_reference.py fails while it is stale)
docs: $(STAMP)
	$(BIN)/python -m kdprune.confref > docs/configuration.md

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.train_throughput

# The accuracy canary at the default scale (hours on 2 cores): absolute mAP50-95 against bench/results/canary/recorded.json's band.
# Run it before changing requirements.lock, the data pipeline, the training step or a default.
canary: $(TEST_STAMP)
	$(BIN)/python -m bench.canary

# Re-resolve pyproject.toml's dependencies from the registry (no constraints) in a scratch venv and write the lock.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install -q ".[sweep,test]"
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/python -m pip freeze --all | grep -v '^kdprune'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock

clean:
	rm -rf $(VENV) outputs/* .pytest_cache
