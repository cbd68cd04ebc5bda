# Two commands for a fresh machine (Python 3.11+, make): `make up` and `make test`.
# Both install what they need into .venv on first use; `make install` does only that step.
PY ?= python3
UV_VERSION ?= 0.13.9
UV := .tools/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed

export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: install browser bytecode up test test-fast lint bench clean

$(UV):
	$(PY) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock Makefile | $(UV)
	# --compile-bytecode: every process the system and the tests start (services, CLI calls, workers) then
	# loads its libraries' bytecode instead of compiling them again, which matters where PYTHONDONTWRITEBYTECODE
	# is set (about 2 s less per process start here).
	$(UV) sync --frozen --compile-bytecode
	# Compile the numba decision kernels into the on-disk cache once, so the first `make up` or test run
	# does not spend its first cycle compiling (aura/warmup.py).
	$(VENV)/bin/python -m aura.warmup
	touch $(STAMP)

# The console's browser tests drive Debian's chromium through its chromedriver (packages chromium and
# chromium-driver; nothing downloads a browser of its own). Installed here when missing and running as root
# (CI, this project's machines); otherwise the tests skip saying how to install them (in CI they fail instead).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; } || echo "could not install chromium; the browser tests will say so"; \
	else echo "note: the browser tests need chromium and chromium-driver (sudo apt-get install chromium chromium-driver)"; fi

install: $(STAMP) browser

# The project's own modules, compiled the same way (only what changed since the last time).
bytecode: $(STAMP)
	@$(VENV)/bin/python -m compileall -q -j 0 aura services shared || echo "note: bytecode not written (read-only tree?); processes compile at start instead"

up: $(STAMP) bytecode
	$(VENV)/bin/aura up

# Two workers (pytest-xdist): most tests wait on real processes (nats-server, services, the simulator), so two
# run side by side on two cores in about 18 minutes instead of 33.  --dist loadfile keeps a file's tests on one
# worker, so a module's running system (tests/security) starts once.  PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: $(STAMP) browser bytecode
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) bytecode
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow and not container" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(UV) sync --frozen --compile-bytecode --group bench
	$(VENV)/bin/python bench/cycle_latency.py
	$(VENV)/bin/python bench/backtest_speed.py
	$(VENV)/bin/python bench/ingest_speed.py
	$(VENV)/bin/python bench/executor_speed.py
	$(VENV)/bin/python bench/crash_trials.py
	$(VENV)/bin/python bench/live_cycle.py
	$(VENV)/bin/python bench/optimize_speed.py

clean:
	rm -rf $(VENV) .tools var
