"""A live one-line progress bar where the user is looking.

Rules send a step's output to its log file, so stderr is not a terminal under Snakemake. In a
local run the job still shares the user's controlling terminal: the bar goes there
(``/dev/tty``) while the full lines go on to the log. Under SLURM (a batch job) or without a
terminal (CI), there is no bar: the lines in the job's log are the progress.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm


def terminal() -> TextIO | None:
    """stderr when it is a terminal, else the controlling terminal of a local run, else None."""
    if sys.stderr.isatty():
        return sys.stderr
    if os.environ.get("SLURM_JOB_ID") or os.environ.get("SVT_NO_PROGRESS"):
        return None
    try:
        return open("/dev/tty", "w", buffering=1)  # noqa: SIM115 - lives as long as the bar
    except OSError:  # no controlling terminal
        return None


def bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm | None:
    """A tqdm bar on the terminal (step/total, rate, ETA; add a postfix for the rest), or None."""
    stream = terminal()
    if stream is None:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, mininterval=1.0)


def on_stderr(b: tqdm | None) -> bool:
    """Whether the bar is on stderr itself (then full progress lines there would only clutter)."""
    return b is not None and b.fp is sys.stderr
