# The way in. `make run` and `make test` work on a fresh clone with only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export MONOLITH_PORT ?= 8001

.DEFAULT_GOAL := help
.PHONY: help install run migrate seed test lint boundaries bench clean

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

test: lint  ## lint, then every test (PostgreSQL ones skip only outside CI)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

clean:  ## remove the virtualenv and local databases
	rm -rf $(VENV) var
