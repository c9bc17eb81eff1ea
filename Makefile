PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# With no OPENAI_API_KEY, `make run` uses the built-in emulator as OpenAI.
run: $(STAMP)
	$(BIN)/sorahook serve --host 127.0.0.1 --port 8000 $(if $(OPENAI_API_KEY),,--emulator)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy
	@if command -v promtool >/dev/null; then \
		promtool check rules deploy/prometheus/alerts.yml && \
		promtool check config deploy/prometheus/prometheus.yml && \
		promtool test rules deploy/prometheus/alerts_test.yml; \
	else echo "promtool not installed (apt-get install prometheus); skipping rule checks"; fi

bench: $(STAMP)
	$(BIN)/python -m bench

# A bounded run of mixed traffic against a real service process (default 3 minutes).
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# A 1280x800 PNG of each console page into docs/screenshots/ (needs Chromium: apt-get install chromium).
.PHONY: screenshots
screenshots: $(STAMP)
	$(BIN)/python -m bench.screenshots

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
