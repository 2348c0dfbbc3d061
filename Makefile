# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv and install everything they need first (target `install`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench loadtest mutate clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# bqemulator's DuckDB would download the spatial extension at start; install it from the wheel instead.
	$(BIN)/python -c 'import duckdb_extensions; duckdb_extensions.import_extension("spatial")'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/predaudit demo

# Alertmanager and Chromium (Debian packages) for the alerting and report tests; a no-op when present.
test: install
	sh tools/system_deps.sh
	$(BIN)/python -m pytest

# checkov pins packages that clash with the project's (and ships its own hcl2): own virtualenv
CHECKOV := $(VENV)/checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q --disable-pip-version-check checkov==3.3.30

lint: install $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_infra.py

bench: install
	$(BIN)/python -m tests.bench.run_bench

# The serving sidecar at 5,000 events/s for 60 s into the Pub/Sub emulator (about 3 minutes).
loadtest: install
	$(BIN)/python -m tests.bench.loadtest

# Mutation testing (mutmut) of the critical modules against their fast tests; not in CI.
# Prints the kill rate per module; survivors' diffs go to build/mutate/survivors.txt.
# One module: make mutate MODULES=transforms/dedup.py
MODULES ?=
mutate: install
	$(BIN)/python tools/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
