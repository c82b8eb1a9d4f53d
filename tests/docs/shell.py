"""A bash session that runs a chapter's command blocks in turn, as a reader pastes them.

Variables set by one block are there for the next. Each block runs with
``set -eo pipefail``: the first command that fails (other than one whose
``# → exit N`` expects it) fails the block, and the session with it, as it
would leave a reader stuck.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.docs.markdown import Block

__all__ = ["Outcome", "Shell"]

DONE = "<<<strangler-docs done {}>>>"
MARK = "<<<strangler-docs mark {}>>>"
PRELUDE = """\
set -eo pipefail
trap 'printf "\\n<<<failed with exit %s: %s>>>\\n" "$?" "$BASH_COMMAND"' ERR
"""


@dataclass
class Outcome:
    """What one block printed, and why it failed if it did."""

    output: str
    #: The output of each ``# → ...`` line (since the one before), by its line in the block.
    segments: dict[int, str]
    failure: str | None


def script_of(block: Block) -> str:
    """The block as bash runs it: a mark after each ``# →`` line, exits checked."""
    expectations = {e.line: e for e in block.expectations}
    lines: list[str] = []
    for number, line in enumerate(block.source.splitlines()):
        expectation = expectations.get(number)
        if expectation is None:
            lines.append(line)
            continue
        status = expectation.exit_status
        if status is not None:
            command = line[: line.rindex("#")].rstrip()
            lines.append(f"{command} && __status=0 || __status=$?")
            lines.append(
                f'[ "$__status" = {status} ] || '
                f'{{ echo "expected exit {status}, got $__status"; false; }}'
            )
        else:
            lines.append(line)
        lines.append(f"printf '\\n{MARK.format(number)}\\n'")
    return "\n".join(lines) + "\n"


class Shell:
    """One ``bash`` in ``cwd``, fed blocks one at a time; stopped by its process group."""

    def __init__(self, cwd: Path, env: Mapping[str, str], scripts: Path) -> None:
        self.scripts = scripts
        self.scripts.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self.popen = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # background jobs of a block die with the session
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send(PRELUDE)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def _send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    def run(self, block: Block, timeout: float) -> Outcome:
        self._count += 1
        path = self.scripts / f"{self._count:03d}-{block.path.stem}-{block.line}.sh"
        path.write_text(script_of(block))
        done = DONE.format(self._count)
        try:
            # Commands read /dev/null, not the rest of the session's script.
            self._send(f"source {path} < /dev/null\nprintf '\\n{done}\\n'\n")
        except BrokenPipeError:
            return Outcome("", {}, "the shell had already exited")
        output: list[str] = []
        since_mark = 0
        segments: dict[int, str] = {}
        failure: str | None = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                failure = f"still running after {timeout:.0f}s"
                self.close()
                break
            if line is None:
                failure = "a command failed (the shell exited)"
                break
            if line.strip() == done:
                break
            if line.startswith("<<<strangler-docs mark "):
                segments[int(line.split()[2].rstrip(">"))] = "".join(output[since_mark:])
                since_mark = len(output)
                continue
            output.append(line)
        text = "".join(output)
        return Outcome(text, segments, failure)

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Background jobs a block left behind share the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
