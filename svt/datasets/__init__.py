"""Dataset adapters: every supported annotation format becomes the same list of IndexRow.

``load_index(fmt, root, ...)`` is the single entry point. It is called twice on purpose:
by the Snakefile while it plans (so a missing root or a malformed annotation line stops the
workflow before any job starts) and by ``python -m svt.index`` inside the index rule.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from svt.manifest import SPLITS, IndexRow


class DatasetError(ValueError):
    """A dataset cannot be indexed. The message names the file (and line) and the reason."""


class AnnotationError(DatasetError):
    """A malformed annotation line: ``<file>:<line>: <reason>``."""

    def __init__(self, file: str | Path, line: int | None, reason: str):
        self.file, self.line, self.reason = str(file), line, reason
        where = f"{file}:{line}" if line is not None else f"{file}"
        super().__init__(f"{where}: {reason}")


@dataclass
class Index:
    classes: list[str]  # label index -> class name
    rows: list[IndexRow]

    def splits(self) -> list[str]:
        order = ("train", "val", "test")
        present = {r.split for r in self.rows}
        return [s for s in order if s in present]


# --------------------------------------------------------------------------------------
# Entry point

FORMATS = ("ucf101", "hmdb51", "kinetics", "ssv2", "csv", "folder")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def load_index(
    fmt: str,
    root: str | Path,
    annotations: str | Path | None = None,
    fold: int = 1,
    path_template: str | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> Index:
    """Index the raw videos of a dataset.

    ``root`` holds the videos; ``annotations`` is a folder or file depending on ``fmt``
    (relative paths are taken relative to the working directory, not to ``root``).
    Video files are not checked for existence (except by ``folder``, which lists the tree):
    the decode stage reports missing files as rejects.
    """
    from svt.datasets import csv_list, folder, hmdb51, kinetics, ssv2, ucf101

    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format '{fmt}' (expected one of: {', '.join(FORMATS)})")
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root '{root}' does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset root '{root}' is not a directory")
    if fmt in ("ucf101", "hmdb51") and (isinstance(fold, bool) or fold not in (1, 2, 3)):
        raise DatasetError(f"{fmt} fold must be 1, 2 or 3, not {fold!r}")
    fold = int(fold)  # 1.0 or numpy.int64(1) name the same files as 1

    if fmt == "folder":
        index = folder.load(root, extensions)
    elif fmt in ("ucf101", "hmdb51", "ssv2"):
        # These ship a folder of annotation files; people often unpack it next to the videos.
        ann = require_dir(root if annotations is None else annotations)
        if fmt == "ucf101":
            index = ucf101.load(ann, fold)
        elif fmt == "hmdb51":
            index = hmdb51.load(ann, fold)
        else:
            index = ssv2.load(ann)
    else:
        if annotations is None:
            what = "a CSV file or a folder of CSV files" if fmt == "kinetics" else "a CSV file"
            raise DatasetError(f"format '{fmt}' needs annotations ({what})")
        ann = Path(annotations)
        if not ann.exists():
            raise DatasetError(f"annotations file or folder '{ann}' does not exist")
        index = kinetics.load(ann, path_template) if fmt == "kinetics" else csv_list.load(ann)

    if not index.rows:
        raise DatasetError(f"{fmt} dataset at '{root}' lists no videos")
    return index


# --------------------------------------------------------------------------------------
# Helpers shared by the adapters

_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:/")
SPLIT_ALIASES = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}


def require_file(path: str | Path, what: str = "annotation file") -> Path:
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise DatasetError(f"{what} '{path}' {state}")
    return path


def require_dir(path: str | Path, what: str = "annotations folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DatasetError(f"{what} '{path}' {state}")
    return path


def read_text(file: Path) -> str:
    """The file as text; invalid UTF-8 is reported with its line number, a BOM is dropped."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AnnotationError(file, data.count(b"\n", 0, e.start) + 1, "not valid UTF-8") from None
    return text.removeprefix("\ufeff")


def read_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line; CRLF is tolerated."""
    for number, line in enumerate(read_text(file).split("\n"), 1):
        line = line.strip()
        if line:
            yield number, line


def read_csv(file: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped value}) for each data record of a headed CSV file.

    Column names are matched case-insensitively; extra columns are kept. The line number is
    where the record starts (a quoted field may span lines).
    """
    reader = csv.reader(io.StringIO(read_text(file), newline=""))
    header: list[str] | None = None
    end_of_previous = 0
    try:
        for fields in reader:
            line, end_of_previous = end_of_previous + 1, reader.line_num
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if header is None:
                header = [f.lower() for f in fields]
                duplicated = sorted({h for h in header if header.count(h) > 1})
                missing = [c for c in required if c not in header]
                if duplicated or missing:
                    problem = f"duplicate column(s) {duplicated}" if duplicated else f"missing column(s) {missing}"
                    raise AnnotationError(file, line, f"{problem} in header {fields} (required: {list(required)})")
                continue
            if len(fields) != len(header):
                raise AnnotationError(
                    file, line, f"expected {len(header)} columns ({','.join(header)}), found {len(fields)}"
                )
            yield line, dict(zip(header, fields))
    except csv.Error as e:
        raise AnnotationError(file, reader.line_num, f"CSV syntax error: {e}") from None
    if header is None:
        raise AnnotationError(file, 1, f"empty file; expected a header with columns {list(required)}")


def read_json(file: Path):
    try:
        return json.loads(read_text(file))
    except json.JSONDecodeError as e:
        raise AnnotationError(file, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


def parse_int(text: str, file: Path, line: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(file, line, f"{what} '{text}' is not an integer") from None


def parse_split(text: str, file: Path, line: int) -> str:
    split = SPLIT_ALIASES.get(text.lower())
    if split is None:
        raise AnnotationError(file, line, f"unknown split '{text}' (expected one of: {', '.join(SPLIT_ALIASES)})")
    return split


def check_relpath(text: str, file: Path, line: int | None) -> str:
    """Normalise an annotated video path to POSIX form, refusing paths that leave the root."""
    path = text.strip().replace("\\", "/")  # lists written on Windows use backslashes
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        raise AnnotationError(file, line, f"absolute path '{text}' (paths must be relative to the dataset root)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AnnotationError(file, line, f"path '{text}' escapes the dataset root ('..')")
    if not parts:
        raise AnnotationError(file, line, "empty video path")
    return "/".join(parts)


class RowCollector:
    """Gathers rows, refuses a path listed twice in one split, and sorts the result."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str], tuple[str, int | None]] = {}
        self._rows: list[tuple[str, str, str]] = []  # (split, path, label name)

    def add(self, path: str, label_name: str, split: str, file: Path, line: int | None, unit: str = "line") -> None:
        key = (split, path)
        if key in self._first:
            first_file, first_line = self._first[key]
            where = f"{unit} {first_line}" if first_file == str(file) else f"{first_file}:{first_line}"
            prefix = f"entry {line}: " if unit == "entry" else ""
            raise AnnotationError(file, line, f"{prefix}duplicate {split} video '{path}' (first listed at {where})")
        self._first[key] = (str(file), line)
        self._rows.append((split, path, label_name))

    def label_names(self) -> list[str]:
        return sorted({name for _, _, name in self._rows if name})

    def index(self, classes: list[str]) -> Index:
        """Rows sorted by split order then path; an empty label name means unlabelled (-1)."""
        for name in classes:
            if "\n" in name or "\r" in name or not name:
                raise DatasetError(f"class name {name!r} is empty or contains a line break")
        label_of = {name: i for i, name in enumerate(classes)}
        split_order = {split: i for i, split in enumerate(SPLITS)}
        rows = [
            IndexRow(path=path, label=label_of[name] if name else -1, label_name=name, split=split)
            for split, path, name in sorted(self._rows, key=lambda r: (split_order[r[0]], r[1]))
        ]
        return Index(classes=list(classes), rows=rows)
