# The two commands: `make run` (the whole system locally) and `make test` (the test suite).
# Both create .venv with `python3 -m venv` if it is missing and install the project into it.

VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip --quiet --disable-pip-version-check

.PHONY: run test bench install

## run: PostgreSQL, Kafka (tansu), the ledger API with its relay and a demo tenant; Ctrl-C stops it
run: $(VENV)/.installed-test
	$(VENV)/bin/consent-ledger run

## test: the whole suite (pytest exits 5 when it collects no tests: that fails too)
test: $(VENV)/.installed-test
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)  # portal browser tests
	$(VENV)/bin/pytest -q

## bench: every benchmark in bench/ in --quick mode, RUNS times each (default 1), with medians
RUNS ?= 1
bench: $(VENV)/.installed-bench
	$(PYTHON) bench/medians.py --runs $(RUNS)

install: $(VENV)/.installed-test

$(PYTHON):
	python3 -m venv $(VENV)

# Reinstalled when pyproject.toml changes (new dependencies).
$(VENV)/.installed-test: pyproject.toml | $(PYTHON)
	$(PIP) install -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PYTHON)
	$(PIP) install -e '.[test,bench]'
	touch $@
