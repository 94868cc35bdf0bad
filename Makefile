# Two commands matter: `make run` (the service) and `make test` (everything CI checks).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint-rules clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ccsvi-cds serve --reload-rules

test: $(STAMP)
	$(BIN)/ccsvi-cds rules lint rules
	$(BIN)/ccsvi-cds rules test rules
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint-rules: $(STAMP)
	$(BIN)/ccsvi-cds rules lint rules

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
