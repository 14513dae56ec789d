"""Progress bars that read well in a terminal and in a log file.

tqdm redraws its bar in place with carriage returns; written to a file (``vitkit train > log 2>&1``,
CI, nohup) those redraws pile up on one line. Off a terminal each update becomes a line of its own,
at most every 30 seconds.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"  # no bar drawn


class _Lines:
    """A stream that writes each of tqdm's redraws as a line; the blank redraw that clears a bar is dropped."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr: redrawn in place on a terminal, a line every 30 s otherwise."""
    if sys.stderr.isatty():
        return tqdm(iterable, **{"file": sys.stderr, "mininterval": 0.5, **kwargs})
    every = {"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S}  # tqdm's monitor redraws at maxinterval
    return tqdm(iterable, **{"file": _Lines(sys.stderr), "bar_format": LOG_FORMAT, **every, **kwargs})
