"""The tutorial is tested: every command block of README.md and docs/NN-*.md runs.

The README runs on a fresh ``make run`` of its own (a newcomer's first five
minutes); the chapters run in order, each in one bash session, on one
``make run`` that they take from the monolith to wherever the last chapter
leaves it. Both use ports other than the defaults. The conventions
(illustrative blocks, expected output) are in docs/README.md; each block left
out by them is reported below as a skipped test with its reason.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.docs.markdown import COMMAND_LANGUAGES, blocks_of
from tests.docs.runner import run_document
from tests.docs.shell import Shell
from tests.docs.system import System, copy_of_repository, running_system
from tests.support import postgres
from tests.support.processes import ROOT

README = ROOT / "README.md"
CHAPTERS = sorted((ROOT / "docs").glob("[0-9][0-9]-*.md"))
DOCUMENTS = [README, *CHAPTERS]


def _illustrative() -> list[object]:
    params: list[object] = []
    for path in DOCUMENTS:
        with contextlib.suppress(ValueError):  # test_every_document_is_readable says why
            params += [
                pytest.param(f"{block.where}: {block.illustrative}", id=block.where)
                for block in blocks_of(path)
                if block.illustrative is not None and block.language in COMMAND_LANGUAGES
            ]
    return params


@pytest.mark.parametrize("path", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_every_document_is_readable(path: Path) -> None:
    """No output that a reader would take for checked goes unchecked."""
    blocks_of(path)


def test_the_other_documents_have_no_command_to_run() -> None:
    """Commands live in the README and the chapters, where they are run."""
    others = sorted(set((ROOT / "docs").glob("*.md")) - set(CHAPTERS))
    runnable = [block.where for path in others for block in blocks_of(path) if block.runs]
    assert not runnable, f"command blocks outside README.md and docs/NN-*.md: {runnable}"


@pytest.mark.parametrize("reason", _illustrative())
def test_an_illustrative_block_is_skipped_by_rule(reason: str) -> None:
    pytest.skip(f"illustrative {reason}")


#: The PostgreSQL database chapter 3 creates and migrates (its `createdb`).
CHAPTER_3_DATABASE = "strangler_billing"


def _run(path: Path, system: System, scripts: Path) -> str | None:
    """Run ``path``'s blocks in one bash session; its failure, if any."""
    shell = Shell(system.repository, system.env, scripts)
    try:
        report = run_document(path, shell, still_up=lambda: _died(system))
    finally:
        shell.close()
    print(report.summary())  # shown with -s, and on failure
    return report.failure


def _died(system: System) -> str | None:
    if system.alive():
        return None
    return f"make run exited (a process died and honcho stopped the others):\n{system.log_tail()}"


@pytest.mark.e2e
def test_the_readme_gets_a_newcomer_to_a_route_move(tmp_path: Path) -> None:
    repository = copy_of_repository(tmp_path / "strangler")
    (tmp_path / "logs").mkdir()
    with running_system(repository, tmp_path / "logs") as system:
        failure = _run(README, system, tmp_path / "scripts")
    if failure:
        pytest.fail(failure, pytrace=False)


@pytest.mark.e2e
def test_the_chapters_run_as_written_in_order(tmp_path: Path) -> None:
    """One test, not one per chapter: each chapter starts where the one before
    left the system, so they must run in order on one process (a test
    distributor may not split them)."""
    postgres.require_postgres()  # chapter 3 migrates a PostgreSQL database
    repository = copy_of_repository(tmp_path / "strangler")
    (tmp_path / "logs").mkdir()
    try:
        with running_system(repository, tmp_path / "logs") as system:
            for chapter in CHAPTERS:
                failure = _run(chapter, system, tmp_path / "scripts" / chapter.stem)
                if failure:
                    pytest.fail(f"{chapter.name}: {failure}", pytrace=False)
    finally:
        # A reader keeps it (the chapter drops it on the next try); a test run does not.
        postgres.drop_database(postgres.ADMIN_URL.rsplit("/", 1)[0] + f"/{CHAPTER_3_DATABASE}")


def test_the_database_the_chapters_test_drops_is_the_one_chapter_3_creates() -> None:
    chapter_3 = next(c for c in CHAPTERS if c.name.startswith("03-"))
    assert f"createdb -h 127.0.0.1 -U postgres {CHAPTER_3_DATABASE}\n" in chapter_3.read_text()
