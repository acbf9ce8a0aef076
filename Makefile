# The two commands a newcomer needs: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: run test test-debug lint redis-server browser-deps bench bench-ci bench-sweep clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77'

# The Python SDK is its own distribution (sdk/python); the tests use it against the relay.
$(STAMP): $(BIN)/python pyproject.toml setup.py relay/_fast.pyx relay/_fast.pxd sdk/python/pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]' -e ./sdk/python
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/presence-relay serve --host $(HOST) --port $(PORT)

# The Redis tests start their own redis-server on a free port; this only makes sure the
# binary exists (CI machines may not have it).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The browser SDK's tests run in a headless Chromium (Debian's package, driven over the
# DevTools protocol by tests/test_browser_sdk.py) and its codec's unit tests under Node.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing nodejs and npm via apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# The browser SDK's dev dependencies (TypeScript for its declarations, the real CodeMirror 6
# and ProseMirror packages for the adapters' tests, esbuild to bundle those test pages), from
# the lock file. The package itself has no runtime dependency.
NODE_DEPS := sdk/browser/node_modules/.installed
$(NODE_DEPS): sdk/browser/package.json sdk/browser/package-lock.json
	cd sdk/browser && npm ci --no-audit --no-fund
	touch $(NODE_DEPS)

# The suite runs twice: the compiled twin (relay/_fast.pyx) on uvloop, as in production,
# then the pure twin on the stock asyncio loop.
test: $(STAMP) redis-server browser-deps $(NODE_DEPS)
	$(BIN)/ruff check relay tests bench sdk/python
	$(BIN)/ruff format --check relay tests bench sdk/python
	$(BIN)/mypy
	sdk/browser/node_modules/.bin/tsc -p sdk/browser/tsconfig.json
	node --test sdk/browser/test/msgpack.test.mjs sdk/browser/test/presence.test.mjs
	$(BIN)/python -m pytest -q
	RELAY_NO_EXTENSIONS=1 RELAY_TEST_LOOP=asyncio $(BIN)/python -m pytest -q -p no:cacheprovider

# Benchmarks: the hot-path micro-benchmarks (fast/pure pairs) and every load scenario.
# Results (JSON, PNG, relay logs) go to bench/results/. A missed target is reported, and
# `make bench` carries on to the next scenario.
SCENARIOS ?= smoke reference many-docs big-room low-latency
bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python -m pytest -q bench/test_hot_path.py --benchmark-only \
	  --benchmark-columns=median,rounds --benchmark-sort=name \
	  --benchmark-json=bench/results/hot_path.json
	for s in $(SCENARIOS); do $(BIN)/python -m bench.load --scenario $$s \
	  --json bench/results/$$s.json || echo "scenario $$s: target missed or run invalid"; done

# Capacity (issue 4): the highest document count at 20 users x 20 Hz with p99 <= 75 ms,
# compiled then pure twin (about 5 minutes each; reports in bench/results/sweep-*.json).
bench-sweep: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python -m bench.sweep --start 180 --json bench/results/sweep-compiled.json
	$(BIN)/python -m bench.sweep --start 140 --pure --json bench/results/sweep-pure.json

# What CI runs after the tests: the micro-benchmarks in a short mode, and the `smoke`
# scenario, enforced. A shared machine can disturb one run: a miss is re-run once, and two
# misses in a row fail.
bench-ci: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python -m pytest -q bench/test_hot_path.py --benchmark-only \
	  --benchmark-min-rounds=3 --benchmark-max-time=0.05 --benchmark-columns=median,rounds
	$(BIN)/python -m bench.load --scenario smoke --json bench/results/smoke.json --quiet || \
	  $(BIN)/python -m bench.load --scenario smoke --json bench/results/smoke-retry.json

# Parity tests against a debug build (bounds checks, line tracing); restores the release build.
test-debug: $(STAMP)
	RELAY_DEBUG_BUILD=1 $(BIN)/pip install -q -e .
	$(BIN)/python -m pytest -q tests/test_twins.py tests/test_wire.py tests/test_document.py
	$(BIN)/pip install -q -e .

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench sdk/python
	$(BIN)/ruff format --check relay tests bench sdk/python
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info relay/*.so relay/_fast.c sdk/browser/node_modules
