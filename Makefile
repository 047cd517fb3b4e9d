# Everything a user or contributor runs: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml $(wildcard mlaas4hep/*.py)

.PHONY: setup demo test bench docs clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/mlaas4hep demo --directory demo_data

test: setup
	cd tests && ../$(BIN)/python -m pytest -c ../pyproject.toml --rootdir .. $(PYTEST_ARGS) .

docs: setup
	$(BIN)/python -m mkdocs build --strict -f docs/mkdocs.yml

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo_data build *.egg-info .pytest_cache
