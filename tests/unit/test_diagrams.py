"""The chapters' pictures are drawn by docs/diagrams.py: a committed SVG that
differs from what it draws is stale (`make diagrams` redraws them)."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def diagrams() -> ModuleType:
    """docs/diagrams.py, loaded from its path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("docs_diagrams", DOCS / "diagrams.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


DRAWN = diagrams().drawn()


@pytest.mark.parametrize("path", sorted(DRAWN), ids=lambda p: p.name)
def test_each_committed_picture_is_what_the_source_draws(path: Path) -> None:
    assert path.exists(), f"{path.name} is missing: run `make diagrams`"
    assert path.read_text() == DRAWN[path], f"{path.name} is stale: run `make diagrams`"
    ET.fromstring(DRAWN[path])  # well-formed, so GitHub shows it


@pytest.mark.parametrize("path", sorted(DRAWN), ids=lambda p: p.name)
def test_each_chapter_opens_with_its_picture(path: Path) -> None:
    chapters = sorted(DOCS.glob(f"{path.name[:2]}-*.md"))
    if not chapters:
        pytest.skip(f"no chapter {path.name[:2]} yet")
    lines = chapters[0].read_text().splitlines()
    assert lines[0].startswith("# ")
    opening = [line for line in lines[1:4] if line.strip()]
    assert opening and opening[0].startswith("![") and f"(img/{path.name})" in opening[0], (
        f"{chapters[0].name} should open with ![...](img/{path.name}) under its title"
    )
