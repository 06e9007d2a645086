# The two commands: `make run` (the whole system locally) and `make test` (the test suite).
# Both create .venv with `python3 -m venv` if it is missing and install the project into it,
# every dependency at the version pinned in constraints.txt (`make lock` refreshes it).

VENV   := .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip --quiet --disable-pip-version-check

.PHONY: run test bench install lock

## run: PostgreSQL, Kafka (tansu), the ledger API with its relay and a demo tenant; Ctrl-C stops it
run: $(VENV)/.installed-test
	$(VENV)/bin/consent-ledger run

## test: the whole suite (pytest exits 5 when it collects no tests: that fails too)
## PYTEST_ARGS: extra pytest arguments, e.g. `make test PYTEST_ARGS='-m "not browser"'` skips the
## browser tests (and the chromium install they need: apt, as root).
PYTEST_ARGS ?=
test: $(VENV)/.installed-test
	case '$(PYTEST_ARGS)' in *'not browser'*) ;; *) test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) ;; esac
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

## bench: every benchmark in bench/ in --quick mode, RUNS times each (default 1), with medians
RUNS ?= 1
bench: $(VENV)/.installed-bench
	$(PYTHON) bench/medians.py --runs $(RUNS)

install: $(VENV)/.installed-test

$(PYTHON):
	python3 -m venv $(VENV)

# Reinstalled when pyproject.toml or the pins change. `-c constraints.txt`: every package, the
# transitive ones too, at the version CI tested (a fresh install once got msgspec 0.23 where
# 0.22 had been tested, and the exported schemas differed).
$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PYTHON)
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml constraints.txt | $(PYTHON)
	$(PIP) install -c constraints.txt -e '.[test,bench]'
	touch $@

## lock: pin what pyproject.toml asks for into constraints.txt with pip-tools, keeping every pin
## that still fits (a new dependency gets its newest version); `make lock UPGRADE=1` re-resolves
## everything to the newest allowed versions. Review the diff, run `make test`, commit both.
PIP_TOOLS := pip-tools==7.7.0
UPGRADE ?=
lock: | $(PYTHON)
	$(PIP) install '$(PIP_TOOLS)'
	$(VENV)/bin/pip-compile --quiet $(if $(UPGRADE),--upgrade) --all-extras --strip-extras --no-emit-index-url \
	    --no-emit-find-links --output-file constraints.txt pyproject.toml
