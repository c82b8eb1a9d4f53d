"""Run one document's command blocks in a shell and check what they print."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.markdown import Block, blocks_of, find_expected
from tests.docs.shell import Outcome, Shell

__all__ = ["BLOCK_TIMEOUT", "Report", "run_document"]

#: The longest a block may take (the slowest, `strangler data start --wait`, takes seconds).
BLOCK_TIMEOUT = 120.0
#: How much of a failing block's output a report shows.
OUTPUT_SHOWN = 4000


@dataclass
class Report:
    """What happened to a document's blocks, in order."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failure: str | None = None

    def summary(self) -> str:
        return "\n".join(
            [f"{len(self.ran)} blocks ran, {len(self.skipped)} illustrative"]
            + self.ran
            + [f"skipped {line}" for line in self.skipped]
        )


def run_document(
    path: Path, shell: Shell, *, still_up: Callable[[], str | None] = lambda: None
) -> Report:
    """Run ``path``'s command blocks in ``shell`` in order; stop at the first problem.

    ``still_up`` names what died, if anything, after each block (the system
    the commands talk to).
    """
    report = Report()
    for block in blocks_of(path):
        if block.illustrative is not None and block.language in {"sh", "bash", "shell"}:
            report.skipped.append(f"{block.where}: {block.illustrative}")
            continue
        if not block.runs:
            continue
        started = time.monotonic()
        outcome = shell.run(block, BLOCK_TIMEOUT)
        report.ran.append(f"ran {block.where} in {time.monotonic() - started:.1f}s")
        problem = _problem(block, outcome) or still_up()
        if problem:
            report.failure = _explain(block, outcome, problem)
            break
    return report


def _problem(block: Block, outcome: Outcome) -> str | None:
    if outcome.failure:
        return outcome.failure
    for expectation in block.expectations:
        if expectation.exit_status is not None:
            continue
        line = block.source.splitlines()[expectation.line].strip()
        segment = outcome.segments.get(expectation.line, "")
        if find_expected(expectation.text, segment) is not None:
            return f"`{line}` did not print {expectation.text!r}; it printed:\n{segment}"
    if block.expected_output is not None:
        missing = find_expected(block.expected_output, outcome.output)
        if missing is not None:
            return f"the output shown after the block lacks (in order) the line {missing!r}"
    return None


def _explain(block: Block, outcome: Outcome, problem: str) -> str:
    return (
        f"{block.where}: {problem}\n"
        f"--- the block\n{block.source}\n"
        f"--- its output\n{outcome.output[-OUTPUT_SHOWN:]}"
    )
