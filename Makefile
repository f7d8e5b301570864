# The front door: every target does exactly what CI does.  `make run` and `make test`
# create the virtual environment themselves when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOOKFIRST := $(VENV)/bin/lookfirst
export ORT_DISABLE_TELEMETRY := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-slow test-fast lint bench clean venv

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24,<27"
	$(PY) -m pip install --quiet -e ".[dev,labelstudio,torch]"
	@touch $@

venv: $(VENV)/.installed

## make run: set everything up and run the main job on the bundled sample images
run: venv
	@bash scripts/run.sh

## make test: set up and pass the tests (what CI runs)
test: venv
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## make test-slow: the long property-based runs
test-slow: venv
	LOOKFIRST_HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q -p no:cacheprovider

lint: venv
	$(VENV)/bin/ruff check pipeline models review tests
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m bench

clean:
	rm -rf var test-artifacts .pytest_cache
