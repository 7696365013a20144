# Two commands on a fresh machine: `make demo` (train NeuMF offline) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

# A new run folder per demo; the run's summary ends with its path.
DEMO_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	@echo "recforge train --config quickstart --output-dir $(DEMO_RUN)"
	@$(BIN)/recforge train --config quickstart --output-dir $(DEMO_RUN)

# Two test processes: most tests run one torch thread (and wait on subprocesses), so two keep
# both cores busy.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist load

# The inner loop: lint and every unit-level test (not slow: no process started, no model trained
# or exported; the tiers are applied in tests/conftest.py).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist load -m "not slow"

clean:
	rm -rf $(VENV) runs
