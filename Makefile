# convlens — two commands do everything:  make run  |  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.convlens-installed
PORT   ?= 8501

.PHONY: run test bench chromium postgresql clean

# Create .venv if missing and install requirements.txt + this project (editable) into it.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/streamlit run dashboard/server.py --server.address localhost --server.port $(PORT) --server.headless true

# Debian's Chromium drives the browser test (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser test..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Debian's PostgreSQL server binaries: the audit tests start a throwaway server of their own
# (tests/pg_server.py) to check the DATABASE_URL path; nothing is configured system-wide.
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "Installing Debian's postgresql for the audit tests..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; }

# make test installs PostgreSQL, so its tests must run here, never skip.
test: $(STAMP) chromium postgresql
	$(VENV)/bin/ruff check .
	CONVLENS_REQUIRE_POSTGRES=1 $(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/forward.py

clean:
	rm -rf $(VENV) test-output .pytest_cache
