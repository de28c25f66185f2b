"""UCF101: ``classInd.txt`` plus ``trainlist0N.txt`` / ``testlist0N.txt`` for split N (1-3)."""

from __future__ import annotations

from pathlib import Path

from svt.datasets import AnnotationError, Index, RowCollector, check_relpath, parse_int, read_lines, require_file


def load(annotations: Path, fold: int) -> Index:
    classes = _read_class_index(require_file(annotations / "classInd.txt"))
    known = set(classes)
    rows = RowCollector()
    for split, name in (("train", f"trainlist0{fold}.txt"), ("test", f"testlist0{fold}.txt")):
        file = require_file(annotations / name)
        for line_no, line in read_lines(file):
            fields = line.split()
            # The test lists carry no label; a labelled test list is accepted and checked.
            if len(fields) != 2 and not (split == "test" and len(fields) == 1):
                expected = "'<class>/<video> <label>'" if split == "train" else "'<class>/<video>'"
                raise AnnotationError(file, line_no, f"expected {expected}, found {len(fields)} fields")
            path = check_relpath(fields[0], file, line_no)
            if "/" not in path:
                raise AnnotationError(file, line_no, f"path '{path}' has no class folder (expected <class>/<video>)")
            folder = path.split("/", 1)[0]
            if folder not in known:
                raise AnnotationError(file, line_no, f"unknown class '{folder}' (not in classInd.txt)")
            if len(fields) == 2:
                label = parse_int(fields[1], file, line_no, "label")
                if not 1 <= label <= len(classes):
                    raise AnnotationError(file, line_no, f"label {label} outside classInd.txt range 1..{len(classes)}")
                if classes[label - 1] != folder:
                    named = classes[label - 1]
                    reason = f"label {label} is '{named}' in classInd.txt but the folder is '{folder}'"
                    raise AnnotationError(file, line_no, reason)
            rows.add(path, folder, split, file, line_no)
    return rows.index(classes)


def _read_class_index(file: Path) -> list[str]:
    """Class names in label order from lines '<1-based index> <name>'."""
    by_index: dict[int, str] = {}
    seen: dict[str, int] = {}
    for line_no, line in read_lines(file):
        fields = line.split()
        if len(fields) != 2:
            raise AnnotationError(file, line_no, f"expected '<index> <class>', found {len(fields)} fields")
        index = parse_int(fields[0], file, line_no, "class index")
        name = fields[1]
        if index in by_index:
            raise AnnotationError(file, line_no, f"class index {index} already used for '{by_index[index]}'")
        if name in seen:
            raise AnnotationError(file, line_no, f"class '{name}' already listed at line {seen[name]}")
        by_index[index], seen[name] = name, line_no
    # Labels are positions in this list, so the indices must be exactly 1..N.
    missing = sorted(set(range(1, len(by_index) + 1)) - set(by_index))
    if missing or not by_index:
        raise AnnotationError(file, None, f"class indices must run 1..{len(by_index)} without gaps (missing {missing})")
    return [by_index[i] for i in range(1, len(by_index) + 1)]
