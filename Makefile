# Everything a user or contributor runs: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# target 7: ROOT's own loader lives in a separate venv (the PyPI package `root`, ROOT 6.40, ~250 MB)
ROOT_VENV := .venv-root
ROOT_STAMP := $(ROOT_VENV)/.installed
ROOT_PKG ?= root

BACKENDS_STAMP := $(VENV)/.backends-installed

.PHONY: setup system-deps demo test test-backends lint bench bench-root docs clean

setup: $(STAMP)

# An editable install: the tests and the demo run the package in mlaas4hep/ as installed in .venv.
# test: what `make test` needs; dev: the pinned ruff and mypy of `make lint`, and pre-commit.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/mlaas4hep demo --directory demo_data

# The XRootD server that the remote-reading tests start (Debian/Ubuntu, as root). Without it those
# tests skip, or fail when CI is set.
system-deps:
	@command -v xrootd >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "installing xrootd-server with apt-get" \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xrootd-server >/dev/null 2>&1 \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xrootd-server >/dev/null 2>&1; }; }; } \
	  || echo "note: no xrootd server; run 'apt-get install xrootd-server' as root to run the XRootD tests"

test: setup system-deps
	cd tests && ../$(BIN)/python -m pytest -c ../pyproject.toml --rootdir .. $(PYTEST_ARGS) .

# The core tests (exactly once through model.fit, shards, splits, the batch contract, the notebook's
# training, a fit killed and resumed) on Keras' JAX and PyTorch backends too; `make test` runs everything on TensorFlow.
CORE_TESTS := test_exactly_once.py test_sharding.py test_sequence.py test_notebook.py test_resume.py
test-backends: setup $(BACKENDS_STAMP)
	@for backend in jax torch; do \
	  echo "KERAS_BACKEND=$$backend"; \
	  (cd tests && KERAS_BACKEND=$$backend ../$(BIN)/python -m pytest -c ../pyproject.toml --rootdir .. \
	    $(PYTEST_ARGS) $(CORE_TESTS)) || exit 1; \
	done

$(BACKENDS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,dev,backends]"
	touch $(BACKENDS_STAMP)

# The gate every commit passes: ruff (lint and format), mypy --strict on the package, and the size limits.
# .pre-commit-config.yaml runs the same four checks; `$(BIN)/pre-commit install` makes every commit run them.
lint: setup
	$(BIN)/pre-commit validate-config .pre-commit-config.yaml
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python .ci/sizes.py mlaas4hep

docs: setup
	$(BIN)/python -m mkdocs build --strict -f docs/mkdocs.yml

bench: setup
	$(BIN)/python benchmarks/run.py

# Target 7: RootSequence against ROOT's RDataLoader, each in a fresh process of its own venv.
# ROOT_PKG may name a local wheel of the `root` package instead of fetching it from PyPI.
bench-root: setup $(ROOT_STAMP)
	$(BIN)/python benchmarks/vs_root.py --root-python $(ROOT_VENV)/bin/python $(BENCH_ARGS)

$(ROOT_STAMP):
	test -x $(ROOT_VENV)/bin/python || $(PYTHON) -m venv $(ROOT_VENV)
	$(ROOT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ROOT_VENV)/bin/python -m pip install --quiet "$(ROOT_PKG)" numpy
	touch $(ROOT_STAMP)

clean:
	rm -rf $(VENV) $(ROOT_VENV) demo_data build *.egg-info .pytest_cache
