# Two commands matter: `make run` (the service) and `make test` (everything CI checks).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test bench lint-rules clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `make run` needs only what serving needs (the package's own dependencies): no Spark, browser, linters.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# `make test` adds the test extras (pytest, Playwright, PySpark) and the linters (ruff, mypy).
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/ccsvi-cds serve --reload-rules

test: $(TEST_STAMP)
	$(BIN)/ccsvi-cds rules lint rules
	$(BIN)/ccsvi-cds rules test rules
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint-rules: $(RUN_STAMP)
	$(BIN)/ccsvi-cds rules lint rules

bench: $(TEST_STAMP)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
