# The way in. `make run` and `make test` work on a fresh clone with only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export MONOLITH_PORT ?= 8001

.DEFAULT_GOAL := help
.PHONY: help install run migrate seed test docs-test lint boundaries fuzz clean diagrams

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)  ## create .venv and install the project

var:
	@mkdir -p var

migrate: install var  ## upgrade every database to the latest schema
	$(BIN)/alembic -n monolith upgrade heads
	$(BIN)/alembic -n billing_service upgrade heads
	$(BIN)/alembic -n proxy upgrade heads

run: migrate  ## start the system on 127.0.0.1 (monolith :8001)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

seed: migrate  ## fill the monolith with demo data (SIZE=invoices, default 2000)
	$(BIN)/flask --app monolith seed --invoices $(or $(SIZE),2000)

boundaries: install  ## print the module map (what extraction must carry)
	$(BIN)/flask --app monolith boundaries

lint: install  ## ruff and the import contracts
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint  ## lint, then every test, the tutorial's commands too (PostgreSQL ones skip only outside CI)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

docs-test: install  ## only the tutorial: every command block of README.md and docs/NN-*.md
	$(BIN)/pytest -p no:cacheprovider tests/docs $(PYTEST_ARGS)

fuzz: install  ## explore the monolith's API with random inputs (FUZZ_EXAMPLES per operation)
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),200) $(BIN)/pytest -q tests/integration/test_fuzz_never_500.py

diagrams: install  ## redraw the chapters' pictures (docs/img/NN-*.svg) from docs/diagrams.py
	$(BIN)/python docs/diagrams.py

clean:  ## remove the virtualenv and local databases
	rm -rf $(VENV) var

# --- the strangler proxy (docs/02-put-the-proxy-in-front.md) ---------------------
.PHONY: bench bench-proxy toggle browser demo-load demo
bench: install var  ## load: the monolith directly, through the proxy, nginx and a Python byte relay
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(MAKE) bench-data

bench-proxy: bench  ## the same as `make bench`

toggle: install  ## move a route: make toggle ROUTE=billing-invoices MODE=canary PERCENT=25
	@test -n "$(ROUTE)" -a -n "$(MODE)" || (echo "usage: make toggle ROUTE=... MODE=... [PERCENT=...] [REASON=...]"; exit 2)
	STRANGLER_TOKEN=$${STRANGLER_TOKEN:-admin-dev-token} $(BIN)/strangler set $(ROUTE) $(MODE) $(PERCENT) --reason "$(or $(REASON),make toggle)"
	@STRANGLER_TOKEN=$${STRANGLER_TOKEN:-admin-dev-token} $(BIN)/strangler routes

browser:  ## install Debian's chromium for the dashboard's browser tests (once)
	@test -x /usr/bin/chromium || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

demo-load: install  ## shoppers through the proxy while you watch the dashboard (DURATION=120)
	$(BIN)/python -m demo.loadgen --seconds $(or $(DURATION),120) $(LOAD_ARGS)

demo: install var  ## the whole journey under load, step by step (AUTO=1: straight through)
	$(BIN)/python -m demo $(if $(AUTO),--auto) $(DEMO_ARGS)

# --- the billing lists (keyset pagination) ----------------------------------------
.PHONY: bench-list
bench-list: install var  ## the invoice list at 100k invoices, before/after, SQLite and PostgreSQL
	@command -v wrk >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk)
	$(BIN)/python bench/list.py $(BENCH_ARGS)

# --- the journey under load (issue 8's proof) -----------------------------------
.PHONY: bench-journey
bench-journey: install var  ## the journey under load, longer (JOURNEY_SECONDS_PER_STEP=20)
	JOURNEY_BACKENDS=sqlite,postgres JOURNEY_SECONDS_PER_STEP=$(or $(JOURNEY_SECONDS_PER_STEP),20) JOURNEY_MAX_CYCLES=$(or $(JOURNEY_MAX_CYCLES),100000) \
		$(BIN)/pytest -s -p no:cacheprovider tests/datamover/test_journey.py

# --- the data mover (issue 7's Speed) ----------------------------------------------
.PHONY: bench-data
bench-data: install var  ## the mover vs plain copies on SQLite and PostgreSQL (DATA_ARGS="--invoices 100000")
	$(BIN)/python bench/data.py $(DATA_ARGS)
