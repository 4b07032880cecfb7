# Two commands: `make run` and `make test`. `make setup` is the idempotent set-up both use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
FRONTEND_STAMP := frontend/node_modules/.installed-stamp
FRONTEND_SOURCES := $(shell find frontend/src frontend/index.html frontend/vite.config.* frontend/tsconfig*.json -type f 2>/dev/null)


.PHONY: broker-plugin setup run test test-deploy test-python test-frontend test-browser test-chaos soak lint bench bench-tools schema lock clean

setup: $(STAMP) frontend/dist/index.html broker-plugin

# The broker's auth plugin (broker/iotcloud_auth.c): needs a C compiler and the headers of
# Mosquitto, libpq and OpenSSL. Installed from Debian's packages when root on apt; elsewhere
# `iotcloud up` falls back to the in-process broker, which keeps the same rules.
PLUGIN := build/iotcloud_auth.so
PLUGIN_HEADERS := /usr/include/mosquitto_broker.h /usr/include/mosquitto.h
broker-plugin:
	@if [ -f $(PLUGIN) ] && [ $(PLUGIN) -nt broker/iotcloud_auth.c ]; then exit 0; fi; \
	missing=""; \
	[ -f /usr/include/mosquitto_broker.h ] || missing="$$missing mosquitto-dev"; \
	[ -f /usr/include/mosquitto.h ] || missing="$$missing libmosquitto-dev"; \
	command -v pg_config >/dev/null 2>&1 && [ -f "$$(pg_config --includedir)/libpq-fe.h" ] || missing="$$missing libpq-dev"; \
	[ -f /usr/include/openssl/evp.h ] || missing="$$missing libssl-dev"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing (to build the broker plugin)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing gcc >/dev/null && missing=""; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "broker plugin not built (missing:$$missing): the embedded broker will be the in-process one"; exit 0; fi; \
	mkdir -p build && $${CC:-cc} -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -Wall -Wextra -Werror -fPIC -shared \
	  -I"$$(pg_config --includedir)" -o $(PLUGIN) broker/iotcloud_auth.c -lpq -lcrypto && echo "built $(PLUGIN)"

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

# A short chaos soak with a fixed seed (tests/chaos/test_soak.py).
test-chaos: setup
	$(BIN)/pytest -q tests/chaos

# 30 minutes of faults under load; writes its report to docs/reliability.md.
soak: setup
	$(BIN)/python -m tests.chaos.soak --duration 1800 --devices 30 --report docs/reliability.md

test: setup lint test-python test-chaos test-frontend test-browser

# The deployment (deploy/compose.yaml) built and run with Podman: the seed's steps 1-8 through
# docker exec, a TLS device, backup and restore, start-up errors; tests/deploy/run_deployment.py.
# Podman, runc and debootstrap come from Debian's packages (installed when root on apt),
# podman-compose from requirements.lock.
test-deploy: setup
	@missing=""; \
	for tool in podman:podman runc:runc debootstrap:debootstrap mosquitto_sub:mosquitto-clients curl:curl openssl:openssl; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${tool%%:*} ] || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing (for the deployment test)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null && missing=""; \
	fi; \
	if [ -n "$$missing" ]; then echo "make test-deploy needs:$$missing"; exit 1; fi
	PATH="$$PATH:/usr/sbin:/sbin" $(BIN)/python tests/deploy/run_deployment.py

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
	rm -rf $(VENV) frontend/node_modules frontend/dist build
