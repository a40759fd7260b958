"""What a person sees in the terminal: crysray's own lines, a progress line, nothing of Ray's.

``quiet_stderr`` sends everything written to file descriptor 2 (Ray's start-up lines, progress
blocks, warnings, the C++ core's state dumps, from any thread or library) to a log file, and
gives crysray a stream to the real terminal for its progress and its one-line messages.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def quiet_stderr(log_file: Path | None, verbose: bool = False) -> Iterator[TextIO]:
    """Redirect fd 2 to ``log_file`` (appending) for the block; yield the terminal's stderr.

    With ``verbose`` (or no log file) nothing is redirected: Ray's output stays visible.
    """
    if verbose or log_file is None:
        yield sys.stderr
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(log_file, "a") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield terminal
    except BaseException:
        traceback.print_exc()  # the details go to the log; the command prints one line
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


class Progress:
    """``label  done/total unit  percent  rate/s  ETA h:mm:ss``, redrawn in place on a terminal,
    a plain line every ``every`` seconds elsewhere (a job's log, a pipe).

    The rate counts only what this invocation did (``initial`` was done before), so a resumed
    run's ETA is not flattered by the units it skipped.
    """

    def __init__(self, label: str, total: int, initial: int = 0, unit: str = "crystals",
                 stream: TextIO | None = None, every: float = 30.0):  # fmt: skip
        self.label, self.total, self.initial, self.unit = label, total, initial, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.start, self.done = every, time.monotonic(), initial
        self.last_shown = -float("inf")
        self.extra = ""
        self.shown = None

    def update_to(self, done: int, extra: str = "") -> None:
        self.done, self.extra = min(max(done, self.done), self.total), extra
        now = time.monotonic()
        if now - self.last_shown >= (0.5 if self.tty else self.every) or self.done == self.total:
            self.last_shown = now
            self._show()

    def line(self) -> str:
        seconds = time.monotonic() - self.start
        rate = (self.done - self.initial) / seconds if seconds > 0 else 0.0
        left = self.total - self.done
        eta = _clock(left / rate) if rate > 0 else "--:--"
        share = self.done / self.total if self.total else 1.0
        text = (f"{self.label}  {self.done}/{self.total} {self.unit}  {share:.0%}  "
                f"{rate:.1f}/s  ETA {eta}")  # fmt: skip
        return text + (f"  {self.extra}" if self.extra else "")

    def close(self) -> None:
        if self.shown != self.line_state():
            self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line_state(self) -> tuple:
        return self.done, self.extra

    def _show(self) -> None:
        self.shown = self.line_state()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
