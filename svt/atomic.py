"""The one way files are written in place: a temporary file beside the target, flushed to
disk, renamed over it. Readers, and a job killed at any moment, see the old file or the new
one, never half of one. No torch here: the data stages use it too."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (ffmpeg): renamed
    over ``path`` when the block ends, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)``: ``p`` appears complete when the block ends,
    and is left as it was when the block raises. Text modes write UTF-8."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
