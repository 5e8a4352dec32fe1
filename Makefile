# pvgate: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test lint bench demo clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pvgate needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Installing compiles the data plane's hot modules (setup.py, metering/build.py): again
# whenever one of their sources changes.
BUILD_INPUTS := pyproject.toml setup.py metering/build.py $(shell sed -n "s/^    \"\(.*\.py\)\",$$/\1/p" metering/build.py)

$(VENV)/.test-installed: $(BUILD_INPUTS) | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.dev-installed: $(BUILD_INPUTS) | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.test-installed $(VENV)/.installed

$(VENV)/.installed: $(BUILD_INPUTS) | $(PY)
	$(PY) -m pip install -q -e '.[all]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pvgate demo

test: $(VENV)/.test-installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(VENV)/.dev-installed
	$(PY) -m benchmarks.meter --quick
	$(PY) -m benchmarks.proxy --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info build *.so gateway/engine/*.so
