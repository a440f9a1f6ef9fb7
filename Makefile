# Every target sets itself up on a fresh machine: the venv and node_modules are built on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints/dev.txt
PKGS := podstream worker relay
# s3rver (npm): the second S3 server of the cluster tests, next to moto (tests/relay/storage/cluster/conftest.py).
S3RVER := tests/s3rver/node_modules/.installed
# pytest on several processes (pytest-xdist; tests/conftest.py keeps the users of a shared fixture on one).
# Most tests wait on real processes and sockets, so more workers than cores pays; `make test PYTEST_N=0` runs
# one process.
PYTEST_N ?= 4
# Compiled modules (pytest's assertion rewriting of the tests costs seconds in each process) are kept between
# runs under .venv even where PYTHONDONTWRITEBYTECODE is set, and never written into the source tree.
PYTEST := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache $(PY) -m pytest \
	-n $(PYTEST_N) --dist loadgroup

.PHONY: help venv js static s3rver test test-py test-js lint bench bench-full chaos demo locks clean

help:
	@echo "make demo   - run the whole system on this machine (emulator + tiny CPU worker + relay)"
	@echo "make static - rebuild relay/static/ (the demo page, the bundled client) and client_js/types from client_js/"
	@echo "make test   - every test suite (Python and client_js)"
	@echo "make lint   - ruff, mypy --strict, hadolint"
	@echo "make bench  - benchmarks, short forms; writes docs/benchmarks.md and docs/bench/*.png"
	@echo "make bench-full - the same at the full sizes (about an hour, GBs of disk); writes docs/benchmarks-full.md"
	@echo "make chaos  - relay kills, RunPod faults, connection floods and fuzz at once; one table (a few minutes)"
	@echo "make locks  - regenerate deploy/requirements/*.txt (the images' locked dependencies) with uv"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pinned CPU build, so nothing else can pull a CUDA build.
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[worker,relay,dev]"
	touch $@

venv: $(STAMP)

client_js/node_modules/.installed: client_js/package.json
	if [ -f client_js/package-lock.json ]; then cd client_js && npm ci --no-audit --no-fund; \
	else cd client_js && npm install --no-audit --no-fund; fi
	touch $@

js:
	@if [ -f client_js/package.json ]; then $(MAKE) --no-print-directory client_js/node_modules/.installed; fi

# relay/static/ is built from client_js/ (demo/ and src/, by client_js/scripts/build.mjs) and committed, so the
# Python package serves the page without Node. `make demo` rebuilds it (the page you see is your sources);
# `make test` does not: its client_js/test/build.test.js fails when the committed files differ from a build.
static: js
	cd client_js && npm run build

$(S3RVER): tests/s3rver/package.json tests/s3rver/package-lock.json
	cd tests/s3rver && npm ci --no-audit --no-fund
	touch $@

s3rver: $(S3RVER)

test: venv js $(S3RVER)
	$(PYTEST)
	@if [ -f client_js/package.json ]; then cd client_js && npm test; fi

test-js: js
	cd client_js && npm test

test-py: venv $(S3RVER)
	$(PYTEST)

lint: venv
	$(VENV)/bin/ruff check $(PKGS) tests bench
	$(VENV)/bin/ruff format --check $(PKGS) tests bench
	$(VENV)/bin/mypy $(PKGS) tests bench
	@if [ -f Dockerfile ]; then $(VENV)/bin/hadolint Dockerfile; fi

bench: venv
	$(PY) -m bench --report docs

bench-full: venv
	$(PY) -m bench --full --report docs

chaos: venv
	$(PY) -m bench.chaos --items 60 --kills 5 --probes 600 --flood 300

demo: venv js static
	$(VENV)/bin/podstream demo

# uv resolves for the images' platform (Linux x86_64, CPython 3.12) from any machine; it is installed into the
# venv here, so the script finds it first on PATH.
locks: venv
	$(PY) -m pip install --quiet "uv>=0.4"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" deploy/update-locks.sh

clean:
	rm -rf $(VENV) client_js/node_modules tests/s3rver/node_modules .pytest_cache .mypy_cache .ruff_cache
