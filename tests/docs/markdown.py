"""The tutorial's command blocks, read from Markdown by the conventions of docs/README.md.

- A ```sh (or ```bash) fence is a command block: it runs.
- ``<!-- illustrative: reason -->`` on the line before a fence: not run, and
  the reason is reported.
- A ```text fence right after a command block (blank lines between at most)
  is that block's expected output.
- ``# → text`` at the end of a command line: that command's output contains
  ``text``; ``# → exit N``: that command exits with N (any other non-zero exit
  fails the block).

In expected output, spacing is ignored and ``…`` (or ``...``) stands for
whatever varies: ids, times, durations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Expectation", "blocks_of", "find_expected"]

COMMAND_LANGUAGES = {"sh", "bash", "shell"}
OUTPUT_LANGUAGE = "text"
ILLUSTRATIVE = re.compile(r"^<!--\s*illustrative:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>```+)\s*(?P<language>[\w-]*)\s*$")
ARROW = re.compile(r"\s#\s*→\s*(?P<expected>.*?)\s*$")
EXIT = re.compile(r"^exit\s+(?P<status>\d+)$")
WILDCARD = re.compile(r"…|\.\.\.")


@dataclass(frozen=True)
class Expectation:
    """``# → ...`` on ``line`` (0-based, within the block)."""

    line: int
    text: str

    @property
    def exit_status(self) -> int | None:
        match = EXIT.match(self.text)
        return int(match.group("status")) if match else None


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 0-based index of the closing fence's line
    language: str
    source: str
    illustrative: str | None = None  # the reason, if marked
    expected_output: str | None = None  # a following ```text block
    expectations: list[Expectation] = field(default_factory=list)

    @property
    def runs(self) -> bool:
        return self.language in COMMAND_LANGUAGES and self.illustrative is None

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def _fences(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        previous = lines[index - 1] if index else ""
        marker = ILLUSTRATIVE.match(previous)
        end = index + 1
        while end < len(lines) and lines[end].strip() != opening.group("fence"):
            end += 1
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                end=end,
                language=opening.group("language").lower(),
                source="\n".join(lines[index + 1 : end]),
                illustrative=marker.group("reason") if marker else None,
            )
        )
        index = end + 1
    return blocks


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, each command block with its expectations.

    Raises ValueError for output a reader would take as checked but is not:
    an unlabelled fence right after a command block must be ```text (checked)
    or marked illustrative.
    """
    fences = _fences(path)
    lines = path.read_text().splitlines()
    result: list[Block] = []
    for position, block in enumerate(fences):
        if block.language in COMMAND_LANGUAGES:
            block.expectations = [
                Expectation(number, match.group("expected"))
                for number, text in enumerate(block.source.splitlines())
                if (match := ARROW.search(text))
            ]
        if position and _directly_after(lines, fences[position - 1], block):
            command = fences[position - 1]
            if command.runs and block.illustrative is None:
                if block.language == OUTPUT_LANGUAGE:
                    command.expected_output = block.source
                elif block.language not in COMMAND_LANGUAGES:
                    raise ValueError(
                        f"{block.where}: output after a command block must be fenced "
                        "```text (checked) or marked <!-- illustrative: why -->"
                    )
        result.append(block)
    return result


def _directly_after(lines: list[str], first: Block, second: Block) -> bool:
    between = lines[first.end + 1 : second.line - 1]
    return all(not text.strip() for text in between)


def _pattern(expected: str) -> str:
    parts = WILDCARD.split(_squeeze(expected))
    return r"[^\n]*?".join(re.escape(part) for part in parts)


def _squeeze(text: str) -> str:
    return re.sub(r"[ \t\r]+", "", text)


def find_expected(expected: str, output: str) -> str | None:
    """None if every line of ``expected`` is in ``output`` in order; else the first missing."""
    haystack = _squeeze(output)
    position = 0
    for line in expected.splitlines():
        if not line.strip() or WILDCARD.fullmatch(line.strip()):
            continue
        match = re.compile(_pattern(line)).search(haystack, position)
        if match is None:
            return line
        position = match.end()
    return None
