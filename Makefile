# The two commands of the README: `make run` and `make test`. Both create the
# virtualenv and install the pinned dependencies first, when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint install chromium

run: install
	$(BIN)/python -m devtools.run

test: install lint chromium
	$(BIN)/python -m pytest

# The browser tests (tests/browser) drive Debian's Chromium: installed here when we are
# root, otherwise the one command to run.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 \
		&& apt-get update && apt-get install -y chromium; } \
		|| { echo "Chromium is missing: run 'sudo apt-get install -y chromium', then make test"; exit 1; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt nameko-redis-transport/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ./nameko-redis-transport -e '.[embedded,test]'
	touch $@
