"""Manifest files: the one table format every stage reads and writes.

A manifest is a CSV (RFC 4180 quoting, UTF-8) so labels and paths with commas, quotes,
spaces or non-ASCII characters survive unchanged. Paths are POSIX, relative to the folder
named by the stage that wrote the file.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

from svt.atomic import atomic_write

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
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(cls))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


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


# ---- the decode stage's shard tables (svt.decode writes them; report and manifest read them)


def shard_rejects_path(shard_csv: str | os.PathLike) -> Path:
    """The rejects table that goes with a shard's manifest table."""
    shard_csv = Path(shard_csv)
    return shard_csv.with_name(shard_csv.stem + ".rejects.csv")


def reason_kind(reason: str) -> str:
    """"unreadable: moov atom not found" -> "unreadable": the counted part of a reason."""
    return reason.split(":", 1)[0]


def shard_summary(shards: Iterable[str | os.PathLike]) -> tuple[list, list, dict]:
    """Kept rows, rejected rows (sorted by split and source) and the counts of a dataset's
    shard tables: videos, kept, rejected, reject_fraction, per split, per reason, frames, hours."""
    shards = list(shards)
    kept = [row for s in shards for row in read_rows(s, ManifestRow)]
    rejected = sorted((row for s in shards for row in read_rows(shard_rejects_path(s), RejectRow)),
                      key=lambda r: (r.split, r.source))
    total = len(kept) + len(rejected)
    summary = {
        "videos": total,
        "kept": len(kept),
        "rejected": len(rejected),
        "reject_fraction": len(rejected) / total if total else 0.0,
        "kept_per_split": dict(sorted(Counter(r.split for r in kept).items())),
        "rejected_per_reason": dict(sorted(Counter(reason_kind(r.reason) for r in rejected).items())),
        "frames": sum(r.frames for r in kept),
        "hours": round(sum(r.duration for r in kept) / 3600, 4),
    }
    return kept, rejected, summary
