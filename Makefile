# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   the whole system on embedded defaults (virtual hall, embedded broker);
#               pass options as ARGS="--duration 10 --nodes 5"
#   make test   the test suite (installs Debian's mosquitto and chromium when missing, and
#               PostgreSQL when none answers on 127.0.0.1:5432)
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-dev
SUDO    = $(if $(filter 0,$(shell id -u)),,sudo)
APT     = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test bench fuzz system-deps ui-deps postgres-deps demo-deps bench-deps clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { $(APT) update -q && $(APT) install -y -q python3.11 python3.11-venv; }
	@# Debian ships venv's ensurepip separately (python3.11-venv)
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(APT) update -q && $(APT) install -y -q python3.11-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages the tests drive for real: the Mosquitto broker and headless Chromium.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT) update -q && $(APT) install -y -q $$missing; \
	fi

# The handset app's window tests (tests/test_handset_ui.py, marked `ui`) run Kivy in a
# real X window on Xvfb. Kivy's wheel carries SDL2 but loads the X11 client libraries,
# Mesa's GL (llvmpipe renders under Xvfb) and libmtdev at run time: each Debian package
# missing is installed.
UI_PACKAGES = xvfb xauth libmtdev1 libgl1 libgl1-mesa-dri libegl1 libx11-6 libxext6 \
	libxcursor1 libxi6 libxrandr2 libxrender1 libxss1
ui-deps:
	@missing=""; \
	for package in $(UI_PACKAGES); do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the app's window tests:$$missing"; \
	  $(APT) update -q && $(APT) install -y -q $$missing; \
	fi

# PostgreSQL for the storage and ingest tests, which run on SQLite and on PostgreSQL
# (hall/testing/postgres.py): when nothing answers on 127.0.0.1:5432, install Debian's
# postgresql, start its clusters and give the postgres role the password the tests use
# (a server with trust authentication, as on a developer's box, ignores it). Point
# TAPCAST_TEST_POSTGRES at another server to use that one instead.
postgres-deps: $(STAMP)
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5432), 3).close()" \
	  2>/dev/null || [ -n "$$TAPCAST_TEST_POSTGRES" ] || { \
	  echo "no PostgreSQL on 127.0.0.1:5432: installing and starting Debian's postgresql"; \
	  command -v pg_lsclusters >/dev/null || { $(APT) update -q && $(APT) install -y -q postgresql; }; \
	  pg_lsclusters -h | while read -r version cluster rest; do \
	    $(SUDO) pg_ctlcluster "$$version" "$$cluster" start || true; done; \
	  $(SUDO) runuser -u postgres -- psql -q -c "ALTER ROLE postgres PASSWORD 'tapcast'"; }

# The demo runs a real Mosquitto when one is installed (amqtt is only its fallback).
demo-deps:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing Debian's mosquitto for the demo"; \
	  $(APT) update -q && $(APT) install -y -q mosquitto; }

demo: $(STAMP) demo-deps
	$(BIN)/tapcast demo $(ARGS)

test: $(STAMP) system-deps ui-deps postgres-deps
	$(BIN)/pytest -q

# The ingest floor is fed by C publishers (mosquitto_pub from mosquitto-clients).
bench-deps:
	@command -v mosquitto_pub >/dev/null || { \
	  echo "installing Debian's mosquitto-clients for the benchmarks"; \
	  $(APT) update -q && $(APT) install -y -q mosquitto-clients; }

bench: $(STAMP) system-deps ui-deps bench-deps
	$(BIN)/python -m benchmarks.run $(ARGS)

# The parser fuzzer's long run: the properties `make test` runs with 200 examples each
# (tests/test_fuzz_parsers.py), here with FUZZ_EXAMPLES each and a fresh random seed.
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	TAPCAST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q --timeout=0 \
	  --hypothesis-show-statistics tests/test_fuzz_parsers.py $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
