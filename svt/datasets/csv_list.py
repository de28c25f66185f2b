"""A plain CSV list: header with ``path,label`` and optionally ``split`` (default train)."""

from __future__ import annotations

from pathlib import Path

from svt.datasets import AnnotationError, Index, RowCollector, check_relpath, parse_split, read_csv, require_file


def load(annotations: Path) -> Index:
    file = require_file(annotations)
    rows = RowCollector()
    for line_no, record in read_csv(file, ("path", "label")):
        path = check_relpath(record["path"], file, line_no)
        split = parse_split(record.get("split") or "train", file, line_no)
        label = record["label"]
        if not label and split != "test":  # unlabelled videos only make sense for testing
            raise AnnotationError(file, line_no, f"{split} row without a label")
        rows.add(path, label, split, file, line_no)
    return rows.index(rows.label_names())
