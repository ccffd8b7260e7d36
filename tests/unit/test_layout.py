"""The rooms and their import rules (ARCHITECTURE.md): checked by lint, and by these tests
that the checks bite and that the light entry points stay light."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def imported_modules(*args: str) -> set[str]:
    """Top-level packages Python imported while running `python -X importtime *args`."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", result.stderr, re.M)
    assert names, "no -X importtime lines"
    return {name.split(".")[0] for name in names}


def test_the_scientists_library_loads_neither_syft_nor_opacus() -> None:
    loaded = imported_modules(
        "-c", "import scientist; from scientist import Federation, Study, StudyConfig"
    )
    assert "scientist" in loaded
    assert not loaded & {"syft", "opacus"}


def test_the_operators_help_loads_no_torch() -> None:
    loaded = imported_modules("-m", "datasites", "requests", "--help")
    assert "datasites" in loaded
    assert not loaded & {"torch", "syft", "opacus"}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def copied_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and the rules, copied so a violation can be planted in them."""
    tree = tmp_path_factory.mktemp("layout")
    for package in ("datasites", "scientist", "synthetic"):
        shutil.copytree(
            REPO / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tree / "pyproject.toml")
    return tree


VIOLATIONS = {
    "the runtime imports syft": (
        "datasites/runtime/cache.py",
        "import syft",
        "the runtime, the privacy maths and the site never import syft",
    ),
    "governance imports the runtime": (
        "datasites/governance/watch.py",
        "from datasites.runtime import execute",
        "governance reads plans, it never runs them",
    ),
    "the scientist imports the ledger": (
        "scientist/result.py",
        "from datasites.privacy.ledger import Ledger",
        "the scientist imports only the contract and the client of datasites",
    ),
    "the contract imports a room": (
        "datasites/contract/plan.py",
        "from datasites.site.policy import Policy",
        "the contract imports no other room",
    ),
    "the client imports the site": (
        "datasites/client/connection.py",
        "from datasites.site.paths import HospitalConfig",
        "the client imports only the contract of datasites",
    ),
    "a lower room imports a higher one": (
        "datasites/privacy/ledger.py",
        "from datasites.cli import report",
        "datasites is layered",
    ),
}


def test_the_rules_pass_on_the_tree_as_it_is(copied_tree: Path) -> None:
    result = lint_imports(copied_tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_planted_violation_fails_lint(copied_tree: Path, case: str) -> None:
    path, line, contract = VIOLATIONS[case]
    target = copied_tree / path
    original = target.read_text()
    target.write_text(original + f"\n{line}  # planted by the test\n")
    try:
        result = lint_imports(copied_tree)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout[-3000:]


def test_no_module_imports_itself_through_others() -> None:
    """No import cycles among our modules (import-linter 2.5 has no acyclic contract, so
    the check is here): a cycle is where a change to one module breaks another's import."""
    import grimp

    graph = grimp.build_graph("datasites", "scientist", "synthetic")
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []
