"""The import rules, enforced by import-linter — and proof that they bite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
FACADE_RULE = "Monolith modules talk to each other only through their api and events"
DOMAIN_RULE = "Domain rules import neither Flask nor SQLAlchemy"
DEPLOYABLE_RULE = "Each deployable imports only itself and servicekit"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_project_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The packages and the contracts, copied so that a test can break them."""
    for package in ("servicekit", "monolith", "extracted", "strangler_proxy"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(
    ("file", "line", "rule"),
    [
        (
            "monolith/billing/repository.py",
            "from monolith.notifications import services",
            FACADE_RULE,
        ),
        ("monolith/notifications/handlers.py", "import monolith.users.repository", FACADE_RULE),
        ("monolith/billing/domain.py", "import sqlalchemy", DOMAIN_RULE),
        ("monolith/users/services.py", "import strangler_proxy", DEPLOYABLE_RULE),
    ],
)
def test_crossing_a_boundary_fails_and_names_the_rule(project_copy, file, line, rule):
    add_line(project_copy / file, line)

    result = lint_imports(project_copy)

    assert result.returncode != 0
    assert f"{rule} BROKEN" in result.stdout, result.stdout
