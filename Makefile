# The two commands a newcomer needs: `make serve` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint unit net interop reliability bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/postfach serve

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Fast pure tests first, then real sockets, then real mail programs, then server processes that
# are killed, traced and attacked (issue 6). One pytest run, in that order.
test: lint
	$(BIN)/pytest tests/unit tests/net tests/interop tests/reliability

unit: $(STAMP)
	$(BIN)/pytest tests/unit

net: $(STAMP)
	$(BIN)/pytest tests/net

reliability: $(STAMP)
	$(BIN)/pytest tests/reliability

interop: $(STAMP)
	$(BIN)/pytest tests/interop

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
