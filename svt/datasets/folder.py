"""Folder per class: ``root/<class>/...`` or ``root/<split>/<class>/...`` for split in train/val/test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from svt.datasets import DatasetError, Index, RowCollector
from svt.manifest import SPLITS


def load(root: Path, extensions: Sequence[str]) -> Index:
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    split_dirs = [(split, root / split) for split in SPLITS if (root / split).is_dir()]
    if not split_dirs:
        split_dirs = [("train", root)]

    def fail(error: OSError) -> None:  # os.walk skips unreadable folders silently otherwise
        raise DatasetError(f"cannot list '{error.filename}': {error.strerror}")

    rows = RowCollector()
    for split, base in split_dirs:
        # Hidden entries (.git, ._foo.mp4 from macOS) are never videos or classes.
        class_dirs = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for class_dir in class_dirs:
            for folder, subdirs, names in os.walk(class_dir, onerror=fail):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                for name in names:
                    if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                        continue
                    path = Path(folder, name).relative_to(root).as_posix()
                    try:
                        path.encode("utf-8")
                    except UnicodeEncodeError:
                        raise DatasetError(f"file name is not valid UTF-8: {os.fsencode(path)!r}") from None
                    rows.add(path, class_dir.name, split, root, None)

    # Classes are the folders that hold at least one video (an empty or stray folder is not a class).
    classes = rows.label_names()
    if not classes:
        where = ", ".join(f"'{d}'" for _, d in split_dirs)
        raise DatasetError(f"no videos ({' '.join(sorted(exts))}) in class folders under {where}")
    return rows.index(classes)
