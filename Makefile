# Two commands for a fresh machine (Python 3.11+, make): `make up` and `make test`.
# Both install what they need into .venv on first use; `make install` does only that step.
PY ?= python3
UV_VERSION ?= 0.13.9
UV := .tools/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed

export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: install up test test-fast lint bench clean

$(UV):
	$(PY) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	# Compile the numba decision kernels into the on-disk cache once, so the first `make up` or test run
	# does not spend its first cycle compiling (aura/warmup.py).
	$(VENV)/bin/python -m aura.warmup
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/aura up

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow and not container" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(UV) sync --frozen --group bench
	$(VENV)/bin/python bench/cycle_latency.py
	$(VENV)/bin/python bench/backtest_speed.py
	$(VENV)/bin/python bench/ingest_speed.py
	$(VENV)/bin/python bench/executor_speed.py
	$(VENV)/bin/python bench/crash_trials.py

clean:
	rm -rf $(VENV) .tools var
