# Two commands: `make run` and `make test`. `make setup` is the idempotent set-up both use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
FRONTEND_STAMP := frontend/node_modules/.installed-stamp
FRONTEND_SOURCES := $(shell find frontend/src frontend/index.html frontend/vite.config.* frontend/tsconfig*.json -type f 2>/dev/null)

.PHONY: setup run test test-python test-frontend test-browser lint bench bench-tools schema lock clean

setup: $(STAMP) frontend/dist/index.html

# The exact versions of requirements.lock, then this project itself on top of them.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# requirements.lock afresh: the newest versions pyproject.toml allows, in a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	{ echo "# Exact versions for make setup; regenerate with make lock (pyproject.toml has the ranges)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^iotcloud[= @]'; } > requirements.lock
	rm -rf .lock-venv

$(FRONTEND_STAMP): frontend/package.json frontend/package-lock.json
	npm ci --prefix frontend --no-audit --no-fund
	touch $(FRONTEND_STAMP)

frontend/dist/index.html: $(FRONTEND_STAMP) $(FRONTEND_SOURCES)
	npm run build --prefix frontend

run: setup
	IOTCLOUD_DEV=1 $(BIN)/iotcloud up --demo

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

test-python: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/integration

test-frontend: $(FRONTEND_STAMP)
	npm test --prefix frontend

test-browser: setup
	$(BIN)/pytest -q tests/browser

test: setup lint test-python test-frontend test-browser

bench: setup bench-tools
	$(BIN)/python bench/run_all.py

# py-spy (profiles) from PyPI; wrk (the HTTP load generator) from the system's packages.
bench-tools: $(BENCH_STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "make bench needs wrk: sudo apt-get install wrk (macOS: brew install wrk)"; exit 1; fi; }

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# db/schema.sql from the migrations (on $DATABASE_URL's server, or the embedded one).
schema: $(STAMP)
	$(BIN)/python -m iotcloud.schema_snapshot

clean:
	rm -rf $(VENV) frontend/node_modules frontend/dist
