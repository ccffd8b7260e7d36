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

# The live tests (real datasites over HTTP) leave about a third of two cores idle while
# they wait on the network, so the unit tests run alongside them and print once both end.
test: $(INSTALLED)
	@unit_log=$$(mktemp); \
	$(BIN)/python -m pytest -m "in_process or not (integration or security)" --durations=10 \
		> $$unit_log 2>&1 & unit=$$!; \
	trap 'kill $$unit 2>/dev/null; rm -f $$unit_log' INT TERM; \
	$(BIN)/python -m pytest -m "(integration or security) and not in_process" --durations=20; \
		live=$$?; \
	wait $$unit; units=$$?; \
	echo "---- unit tests (run alongside) ----"; cat $$unit_log; rm -f $$unit_log; \
	test $$live -eq 0 && test $$units -eq 0

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
