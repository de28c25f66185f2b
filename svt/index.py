"""Index a raw dataset: ``python -m svt.index --format F --root R [...] --out-dir D``.

Writes ``D/index.csv`` (one IndexRow per video) and ``D/classes.txt`` (one class per line,
in label order). A missing or malformed dataset exits with status 2 and the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svt.atomic import write_text_atomic
from svt.datasets import FORMATS, VIDEO_EXTENSIONS, DatasetError, load_index
from svt.manifest import IndexRow, write_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svt.index", description="Index a raw video dataset into index.csv and classes.txt."
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--root", required=True, help="folder holding the raw videos")
    parser.add_argument("--annotations", help="annotation file or folder (format-specific)")
    parser.add_argument("--fold", type=int, default=1, help="UCF101/HMDB51 split, 1-3")
    parser.add_argument("--path-template", help="Kinetics file name template")
    parser.add_argument("--extensions", nargs="+", default=list(VIDEO_EXTENSIONS), help="folder format only")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)

    try:
        index = load_index(args.format, args.root, args.annotations, args.fold, args.path_template, args.extensions)
    except DatasetError as e:
        print(f"svt.index: error: {e}", file=sys.stderr)
        return 2

    out = Path(args.out_dir)
    write_rows(out / "index.csv", index.rows, IndexRow)
    write_text_atomic(out / "classes.txt", "".join(f"{name}\n" for name in index.classes))
    counts = ", ".join(f"{s}: {sum(r.split == s for r in index.rows)}" for s in index.splits())
    print(f"indexed {len(index.rows)} videos in {len(index.classes)} classes ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
