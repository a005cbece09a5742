# headcast — set up, serve, test.
#
#   make serve   create .venv, install headcast, start the server (puppet engine, CPU)
#   make test    the same install plus the test extra, Debian Chromium, coturn and Prometheus,
#                then the suite
#
# Idempotent: stamp files in .venv/ skip work already done; a second run goes straight to
# the command.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
CONFIG ?= configs/cpu-demo.yaml

# The CPU wheel of torch 2.13.0 lies on this kind of machine (pip's find-links). Any other
# torch spec pulls gigabytes of CUDA wheels, so torch goes in first and a constraint file
# stops every later install from moving it.
CONSTRAINTS := $(VENV)/constraints.txt
PIP := $(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

WEB := clients/web

.PHONY: help install install-test serve test browser web test-tools lint loadtest soak clean

help:
	@echo "make serve     install and start the server on $(CONFIG) (http://127.0.0.1:8000/)"
	@echo "make test      install everything (incl. Debian chromium) and run the test suite"
	@echo "make lint      ruff, mypy (strict) and the import contract (server -> streaming -> pipeline)"
	@echo "make loadtest  open sessions against a running server and report fps / RTF"
	@echo "make soak      keep a running server at capacity for SOAK_DURATION and judge its resources"
	@echo "make clean     remove .venv and build leftovers"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	echo "$(TORCH)" > $(CONSTRAINTS)
	$(PIP) $(TORCH)
	touch $@

$(VENV)/.install: pyproject.toml $(VENV)/.torch
	$(PIP) -e .
	touch $@

# optimum-quanto compiles its C++ kernels (int4 unpacking) on first use, about 30 s on two
# cores: the last line builds them with the install instead of inside the first test that
# quantises to int4.
$(VENV)/.install-test: pyproject.toml $(VENV)/.torch
	$(PIP) -e ".[test]"
	$(BIN)/python -c "import torch; from optimum.quanto import freeze, qint4, quantize; \
		m = torch.nn.Sequential(torch.nn.Linear(128, 128)); quantize(m, weights=qint4); \
		freeze(m); m(torch.randn(1, 128))"
	touch $@

install: $(VENV)/.install

install-test: $(VENV)/.install-test

serve: install
	$(BIN)/headcast serve --config $(CONFIG)

# Debian's Chromium and ChromeDriver for the browser test; never a downloaded browser.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing Debian chromium and chromium-driver for the browser test"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# Node and npm (Debian's, when missing) and the web package's dev tools from the npm registry
# (tsc for the type-check, a WHEP player for the WHEP browser test) in clients/web/node_modules.
web: $(WEB)/node_modules/.package-lock.json

$(WEB)/node_modules/.package-lock.json: $(WEB)/package.json $(WEB)/package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "installing Debian nodejs and npm for the web package tests"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	fi
	npm ci --prefix $(WEB) --no-audit --no-fund

# Debian's coturn (turnserver) and Prometheus (prometheus, promtool) for the TURN and the
# metrics tests, which start them on loopback themselves. policy-rc.d-less hosts may start
# the packages' own services; the tests use free ports of their own either way.
test-tools:
	@if ! command -v turnserver >/dev/null || ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
		echo "installing Debian coturn and prometheus for the TURN and metrics tests"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends coturn prometheus; \
	fi

test: install-test browser web test-tools
	$(BIN)/python -m pytest -q

# ruff (lint and format), mypy strict on the three packages, the import contract.
TYPECHECK := build/typecheck
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/headcast
	for package in server pipeline streaming; do ln -s "$(CURDIR)/$$package" $(TYPECHECK)/headcast/$$package; done
	$(BIN)/mypy -p headcast.server -p headcast.pipeline -p headcast.streaming
	$(BIN)/lint-imports --no-cache

URL ?= http://127.0.0.1:8000
SESSIONS ?= 2
DURATION ?= 20
loadtest: install-test
	$(BIN)/python -m loadtests --url $(URL) --sessions $(SESSIONS) --duration $(DURATION)

SOAK_DURATION ?= 1h
soak: install-test
	$(BIN)/python -m loadtests --url $(URL) --soak $(SOAK_DURATION) --out artifacts/soak

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache artifacts $(WEB)/node_modules
