"""HMDB51: one ``<class>_test_split<N>.txt`` per class and split N, lines '<video> <0|1|2>'."""

from __future__ import annotations

import re
from pathlib import Path

from svt.datasets import AnnotationError, DatasetError, Index, RowCollector, check_relpath, read_lines

_SPLIT_FILE = re.compile(r"(?P<cls>.+)_test_split(?P<fold>[123])\.txt")
_MARKERS = {"1": "train", "2": "test"}  # "0": not used in this split


def load(annotations: Path, fold: int) -> Index:
    files: dict[str, dict[int, Path]] = {}  # class -> fold -> split file
    for path in annotations.iterdir():
        match = _SPLIT_FILE.fullmatch(path.name)
        if match and path.is_file():
            files.setdefault(match["cls"], {})[int(match["fold"])] = path
    if not any(fold in folds for folds in files.values()):
        raise DatasetError(f"no HMDB51 split files '*_test_split{fold}.txt' in '{annotations}'")
    # A class with files for other splits but not this one would silently vanish.
    missing = sorted(cls for cls, folds in files.items() if fold not in folds)
    if missing:
        raise DatasetError(f"'{annotations}' lacks '<class>_test_split{fold}.txt' for classes: {', '.join(missing)}")

    classes = sorted(files)
    rows = RowCollector()
    for cls in classes:
        file = files[cls][fold]
        for line_no, line in read_lines(file):
            fields = line.split()
            if len(fields) != 2:
                raise AnnotationError(file, line_no, f"expected '<video> <0|1|2>', found {len(fields)} fields")
            video, marker = fields
            if marker not in ("0", "1", "2"):
                raise AnnotationError(file, line_no, f"split marker '{marker}' is not 0, 1 or 2")
            path = f"{cls}/{check_relpath(video, file, line_no)}"
            if marker in _MARKERS:
                rows.add(path, cls, _MARKERS[marker], file, line_no)
    return rows.index(classes)
