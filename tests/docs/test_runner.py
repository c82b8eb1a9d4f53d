"""The docs runner fails when a document does: each fault planted in a small chapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.markdown import blocks_of
from tests.docs.runner import Report, run_document
from tests.docs.shell import Shell

FENCE = "```"


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    """A bash session in an empty directory."""
    session = Shell(tmp_path, {"PATH": "/usr/bin:/bin"}, tmp_path / "scripts")
    yield session
    session.close()


def chapter(tmp_path: Path, *parts: str) -> Path:
    path = tmp_path / "01-a-chapter.md"
    path.write_text("# 1. A chapter\n\n" + "\n\n".join(parts) + "\n")
    return path


def block(source: str, language: str = "sh", marker: str | None = None) -> str:
    fenced = f"{FENCE}{language}\n{source}\n{FENCE}"
    return f"{marker}\n{fenced}" if marker else fenced


def run(tmp_path: Path, shell: Shell, *parts: str) -> Report:
    return run_document(chapter(tmp_path, *parts), shell)


def test_a_chapter_that_does_what_it_says_passes(tmp_path: Path, shell: Shell) -> None:
    report = run(
        tmp_path,
        shell,
        block("GREETING=hello"),
        block('echo "$GREETING, world"   # → hello, world\nfalse   # → exit 1'),
        block("printf 'status  ok\\nid 7f3a\\n'"),
        block("status ok\nid …", language="text"),
    )
    assert report.failure is None, report.failure
    assert len(report.ran) == 3


def test_a_command_that_fails_fails_the_chapter(tmp_path: Path, shell: Shell) -> None:
    report = run(tmp_path, shell, block("echo one\ncurl :8001/health\necho never"))
    assert report.failure is not None
    assert "01-a-chapter.md:3: a command failed" in report.failure
    assert "never" not in report.failure.split("--- its output")[1]


def test_output_other_than_shown_fails_the_chapter(tmp_path: Path, shell: Shell) -> None:
    report = run(tmp_path, shell, block("echo 'status: failed'"), block("status: ok", "text"))
    assert report.failure is not None
    assert "'status: ok'" in report.failure


def test_an_arrow_the_command_does_not_print_fails_the_chapter(
    tmp_path: Path, shell: Shell
) -> None:
    report = run(tmp_path, shell, block("echo 200   # → 404\necho 404"))
    assert report.failure is not None
    assert "did not print '404'" in report.failure


def test_a_command_expected_to_fail_must_fail(tmp_path: Path, shell: Shell) -> None:
    report = run(tmp_path, shell, block("true   # → exit 1"))
    assert report.failure is not None
    assert "expected exit 1, got 0" in report.failure


def test_an_illustrative_block_is_skipped_and_reported(tmp_path: Path, shell: Shell) -> None:
    report = run(tmp_path, shell, block("exit 3", marker="<!-- illustrative: runs for an hour -->"))
    assert report.failure is None
    assert report.ran == []
    assert report.skipped == ["01-a-chapter.md:4: runs for an hour"]


def test_unchecked_output_after_a_command_is_refused(tmp_path: Path) -> None:
    path = chapter(tmp_path, block("echo hi"), block("hi", language=""))
    with pytest.raises(ValueError, match=r"01-a-chapter.md:7: output after a command block"):
        blocks_of(path)
