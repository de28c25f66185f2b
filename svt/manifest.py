"""Manifest files: the one table format every stage reads and writes.

A manifest is a CSV (RFC 4180 quoting, UTF-8) so labels and paths with commas, quotes,
spaces or non-ASCII characters survive unchanged. Paths are POSIX, relative to the folder
named by the stage that wrote the file.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class IndexRow:
    """One annotated raw video, as an adapter reports it (before decoding)."""

    path: str  # relative to the dataset root, POSIX separators
    label: int  # index into the dataset's class list; -1 when unlabelled
    label_name: str
    split: str  # one of SPLITS


@dataclass(frozen=True)
class ManifestRow:
    """One decoded video, ready for training or evaluation."""

    path: str  # relative to the processed-videos folder
    label: int
    label_name: str
    split: str
    frames: int
    fps: float
    duration: float
    width: int
    height: int
    source: str  # the raw video, relative to the dataset root


@dataclass(frozen=True)
class RejectRow:
    """A raw video the decode stage could not use, and why."""

    source: str
    split: str
    label_name: str
    reason: str


def _columns(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def write_rows(path: str | os.PathLike, rows: Iterable, cls) -> None:
    """Write dataclass rows to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(cls))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    os.replace(tmp, path)


def read_rows(path: str | os.PathLike, cls) -> list:
    """Read rows written by :func:`write_rows`, converting each column to its field type."""
    return list(iter_rows(path, cls))


def iter_rows(path: str | os.PathLike, cls) -> Iterator:
    types = {f.name: f.type for f in fields(cls)}
    casts = {"int": int, "float": float, "str": str}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(types) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (expected {list(types)})")
        for row in reader:
            yield cls(**{k: casts[types[k]](row[k]) for k in types})
