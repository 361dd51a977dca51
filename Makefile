# The two commands a newcomer needs: `make serve` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint unit net interop reliability bench bench-prepare bench-all clean

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

# The final side-by-side set against Postfix and Dovecot (docs/benchmarks.md, "Running them"):
# delivery + POP3 (run.py), then IMAP (imap.py: 10 and 50 clients, 5,000 idle connections, the
# 100,000-message mailbox). About 15-20 minutes on 2 cores once `make bench-prepare` has built
# the prepared IMAP data directory (that takes ~5 minutes and need not run on a quiet machine).
# BENCH_WORKERS=N sets postfach's worker processes (POSTFACH_WORKERS); unset: its default.
BENCH_WORKERS ?=
BENCH_WORKERS_ARG := $(if $(BENCH_WORKERS),--workers $(BENCH_WORKERS))

bench-prepare: $(STAMP)
	$(BIN)/python benchmarks/imap.py --prepare-only

bench-all: $(STAMP)
	@status=0; \
	$(BIN)/python benchmarks/run.py $(BENCH_WORKERS_ARG) || status=1; \
	$(BIN)/python benchmarks/imap.py $(BENCH_WORKERS_ARG) || status=1; \
	echo; echo "Results (JSON and Markdown):"; \
	ls -l benchmarks/results/last-run.md benchmarks/results/last-run.json \
	  benchmarks/results/imap-last-run.md benchmarks/results/imap-last-run.json; \
	exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
