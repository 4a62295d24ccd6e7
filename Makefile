# Goblet for mitmproxy. On a Debian 12 machine with make:
#   make run    set everything up, start the proxy on 127.0.0.1:8080
#   make test   set everything up, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8080
CACHE_DIR ?= cache
CERTS_DIR ?= certs
HOSTS ?= github.com,gitlab.com,bitbucket.org
MITMDUMP_ARGS ?=
PYTEST_ARGS ?= -n auto --dist loadscope
BIN := $(VENV)/bin

.PHONY: run test test-tools lint typecheck deps clean help fleet loadtest

help:
	@echo "make run   - start goblet on $(HOST):$(PORT) (cache in ./$(CACHE_DIR), CA in ./$(CERTS_DIR))"
	@echo "make test  - install the test tools, run the test suite"
	@echo "make lint  - ruff + mypy --strict"
	@echo "make fleet - 3 instances behind HAProxy + Prometheus on loopback (FLEET_HOSTS=...)"
	@echo "make loadtest - drive a running instance or fleet (LOADTEST_ARGS=...)"

# System prerequisites: git and a Python 3.11 with venv. Installed with apt-get
# when missing and we are root (or have sudo); otherwise we say what is missing.
deps:
	@missing=""; \
	command -v git >/dev/null || missing="$$missing git"; \
	$(PYTHON) -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' \
	  2>/dev/null || missing="$$missing python3 python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "missing:$$missing (install them, then retry)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# MITMDUMP_ARGS adds any other mitmdump option, e.g.
# MITMDUMP_ARGS="--set ssl_verify_upstream_trusted_ca=certs/upstream-cas.pem".
run: $(BIN)/.installed
	$(BIN)/mitmdump -s addon/goblet_addon.py \
	  --listen-host $(HOST) -p $(PORT) \
	  --set confdir=$(CERTS_DIR) \
	  --set goblet_cache_dir=$(CACHE_DIR) \
	  --set goblet_hosts=$(HOSTS) \
	  --set http2=false \
	  --set flow_detail=0 $(MITMDUMP_ARGS)

# What the tests run besides git and Python (haproxy, prometheus, node, redis-server,
# git-lfs): installed from Debian's packages like `deps`, services left stopped.
test-tools:
	@bash .ci/install-test-tools

test: $(BIN)/.installed-test test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed-test
	$(BIN)/ruff check addon tests bench loadtest loadtest/run-local loadtest/demo-upstream
	$(BIN)/mypy

# A local fleet: 3 instances behind HAProxy (sharded by repo) and Prometheus.
fleet: $(BIN)/.installed
	loadtest/run-local --mitmdump $(BIN)/mitmdump $(if $(FLEET_HOSTS),--hosts $(FLEET_HOSTS))

loadtest: $(BIN)/.installed
	$(BIN)/python loadtest/loadtest.py $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (docs/benchmarks.md). BENCH_ARGS passes options to `python -m bench.run`,
# e.g. BENCH_ARGS="--runs 9 --latency-ms 30". py-spy names the proxy's hot spots (it needs
# ptrace: root, or kernel.yama.ptrace_scope=0; without it the profiles are skipped).
.PHONY: bench bench-quick
BENCH_ARGS ?=

bench: $(BIN)/.installed-test
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/pip install -q 'py-spy>=0.3.14' || echo "py-spy could not be installed: the profiles are skipped"
	$(BIN)/python -m bench.run --write-docs $(BENCH_ARGS)
	$(BIN)/python -m bench.lfs

bench-quick: $(BIN)/.installed-test
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)
