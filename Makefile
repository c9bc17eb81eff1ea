PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two install stamps: `make run` needs only the runtime; `make test` (and lint, bench, soak) add the dev extras.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: test-postgres run test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV_STAMP) $(RUN_STAMP)

# With no OPENAI_API_KEY, `make run` uses the built-in emulator as OpenAI. It listens where SORAHOOK_HOST and
# SORAHOOK_PORT say (127.0.0.1:8000 by default); `make run PORT=8001 HOST=0.0.0.0` overrides them. Only
# HOST/PORT given on make's command line count: a PORT or HOST exported for something else does not.
run: $(RUN_STAMP)
	$(BIN)/sorahook serve $(strip $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	$(if $(filter command line,$(origin PORT)),--port $(PORT)) $(if $(OPENAI_API_KEY),,--emulator))

test: $(DEV_STAMP)
	$(BIN)/pytest

# The whole suite with every service on PostgreSQL: needs SORAHOOK_TEST_POSTGRES_URL (a cluster to make schemas in).
test-postgres: $(DEV_STAMP)
	@test -n "$$SORAHOOK_TEST_POSTGRES_URL" || { echo "make test-postgres: set SORAHOOK_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/DB (bash .ci/run starts one)"; exit 2; }
	SORAHOOK_TEST_STORE=postgresql $(BIN)/pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy
	@if command -v promtool >/dev/null; then \
		promtool check rules deploy/prometheus/alerts.yml && \
		promtool check config deploy/prometheus/prometheus.yml && \
		promtool test rules deploy/prometheus/alerts_test.yml; \
	else echo "promtool not installed (apt-get install prometheus); skipping rule checks"; fi

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

# A bounded run of mixed traffic against a real service process (default 3 minutes).
soak: $(DEV_STAMP)
	$(BIN)/python -m bench.soak

# A 1280x800 PNG of each console page into docs/screenshots/ (needs Chromium: apt-get install chromium).
.PHONY: screenshots
screenshots: $(DEV_STAMP)
	$(BIN)/python -m bench.screenshots

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
