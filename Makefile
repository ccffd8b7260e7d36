# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from the pinned
# requirements first (again whenever requirements.txt changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements.stamp
RUFF := $(BIN)/ruff

.PHONY: venv demo test lint format clean

$(STAMP): requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	cp requirements.txt $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python launch.py --demo --reset

test: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=20

lint: $(STAMP)
	$(RUFF) check .
	$(RUFF) format --check .

format: $(STAMP)
	$(RUFF) check --fix .
	$(RUFF) format .

clean:
	rm -rf $(VENV) .datasites
