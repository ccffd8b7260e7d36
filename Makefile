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

# The live tests (real datasites over HTTP) mostly wait: on the network, on datasites that
# start, restart or time out. So four runs share the two cores, each with datasites of its
# own on its own ports (tests/conftest.py marks `session`): the live tests of the session
# federation (printed as they run), the other live tests of tests/security (the guarded
# federation, launches of their own), those of tests/integration (launches of their own),
# and the unit tests. The three run alongside print once all four end.
LIVE := not in_process and not session
test: $(INSTALLED)
	@logs=$$(mktemp -d); \
	$(BIN)/python -m pytest -m "in_process or not (integration or security)" --durations=10 \
		> $$logs/unit 2>&1 & unit=$$!; \
	$(BIN)/python -m pytest -m "security and $(LIVE)" --durations=20 \
		> $$logs/security 2>&1 & security=$$!; \
	$(BIN)/python -m pytest -m "integration and $(LIVE)" --durations=20 \
		> $$logs/launches 2>&1 & launches=$$!; \
	trap 'kill $$unit $$security $$launches 2>/dev/null; rm -rf $$logs' INT TERM; \
	$(BIN)/python -m pytest -m "session and not in_process" --durations=20; session=$$?; \
	wait $$security; security=$$?; wait $$launches; launches=$$?; wait $$unit; unit=$$?; \
	for name in security launches unit; do \
		echo "---- $$name (run alongside) ----"; cat $$logs/$$name; done; \
	rm -rf $$logs; test $$(( session + security + launches + unit )) -eq 0

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
