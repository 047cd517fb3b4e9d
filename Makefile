# Everything a user or contributor runs: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test bench docs clean

setup: $(STAMP)

# An editable install: the tests and the demo run the package in mlaas4hep/ as installed in .venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
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

docs: setup
	$(BIN)/python -m mkdocs build --strict -f docs/mkdocs.yml

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo_data build *.egg-info .pytest_cache
