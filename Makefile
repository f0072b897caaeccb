# stillframe: `make run` serves the API on http://127.0.0.1:8000, `make test` runs every test.
# Everything installs into .venv, so a fresh machine with Python 3.11+ needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
MEDIA  ?= $(CURDIR)/demo-media

.PHONY: install run test lint typecheck openapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/stillframe demo-media $(MEDIA) >/dev/null
	STILLFRAME_MEDIA_ROOT=$${STILLFRAME_MEDIA_ROOT:-$(MEDIA)} $(BIN)/stillframe serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy app

openapi: $(STAMP)
	$(BIN)/stillframe openapi --out openapi/openapi.json

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-media .pytest_cache .ruff_cache .mypy_cache
