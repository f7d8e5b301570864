# The front door: every target does exactly what CI does.  `make run` and `make test` create
# the virtual environment themselves when it is missing, each with only what it needs:
# `make run` the service and Label Studio's client; `make test` adds the test tools, PyTorch
# (the classifier tests) and Chromium (the browser test; installed when run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOOKFIRST := $(VENV)/bin/lookfirst
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
export ORT_DISABLE_TELEMETRY := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test test-slow test-fast lint bench clean venv venv-test venv-torch browser

# what running needs: the service, the CLI and Label Studio's client
$(VENV)/.installed-run: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24,<27"
	$(PIP) -e ".[labelstudio]"
	@touch $@

# what the tests need on top: test tools and PyTorch (a CUDA build; it runs on the CPU)
$(VENV)/.installed-test: $(VENV)/.installed-run
	$(PIP) -e ".[labelstudio,torch,cluster,fast,dev]"
	@touch $@

# training your own classifier needs PyTorch only
$(VENV)/.installed-torch: $(VENV)/.installed-run
	$(PIP) -e ".[labelstudio,torch]"
	@touch $@

venv: $(VENV)/.installed-run
venv-test: $(VENV)/.installed-test
venv-torch: $(VENV)/.installed-torch

browser:
	@bash scripts/ensure-chromium.sh

## make run: set everything up and run the main job on the bundled sample images
run: venv
	@bash scripts/run.sh

## make test: set up and pass the tests (what CI runs)
test: venv-test browser
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: venv-test
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## make test-slow: the long property-based runs
test-slow: venv-test browser
	LOOKFIRST_HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q -p no:cacheprovider

## make lint: ruff, mypy strict, and the import contracts (the packages' arrows, in pyproject.toml)
lint: venv-test
	$(VENV)/bin/ruff check pipeline models review tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: venv-test
	$(PY) -m bench

clean:
	rm -rf var test-artifacts .pytest_cache .import_linter_cache
