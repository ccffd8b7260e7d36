# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from the pinned
# requirements first (again whenever requirements.txt changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements.stamp
INSTALLED := $(VENV)/.project.stamp
RUFF := $(BIN)/ruff

.PHONY: venv demo test lint format clean

$(STAMP): requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	cp requirements.txt $(STAMP)

# This project itself, editable and without dependencies (they are pinned above), so that
# `python -m datasites` finds its packages from any directory with no PYTHONPATH.
$(INSTALLED): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

venv: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python launch.py --demo --reset

test: $(INSTALLED)
	$(BIN)/python -m pytest --durations=20

# ruff, then the import rules between the rooms (pyproject.toml, ARCHITECTURE.md).
lint: $(INSTALLED)
	$(RUFF) check .
	$(RUFF) format --check .
	$(BIN)/lint-imports --no-cache

format: $(INSTALLED)
	$(RUFF) check --fix .
	$(RUFF) format .

clean:
	rm -rf $(VENV) .datasites
