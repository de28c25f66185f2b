"""One split's manifest from the decode shards: ``python -m svt.data_manifest``.

    python -m svt.data_manifest --shards S1.csv S2.csv ... --split train \
        --max-reject-fraction 0.05 --out manifest/train.csv

Refuses (exit 1, the reasons counted, the shard reject tables named) when more of the dataset
than ``--max-reject-fraction`` was rejected; it counts from the shard tables itself, so it
does not wait for (or rerun after) the data report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from svt.manifest import ManifestRow, shard_rejects_path, shard_summary, write_rows


def write_manifest(shards: list[Path], split: str, max_reject_fraction: float, out: Path) -> int:
    """Write the manifest of one split; refuse when too many videos were rejected."""
    kept, _, stats = shard_summary(shards)
    if stats["reject_fraction"] > max_reject_fraction:
        tables = sorted({str(shard_rejects_path(s).parent) for s in shards})
        raise SystemExit(
            f"decode: {stats['rejected']} of {stats['videos']} videos were rejected "
            f"({100 * stats['reject_fraction']:.1f}%), above decode.max_reject_fraction="
            f"{max_reject_fraction}. Reasons: {stats['rejected_per_reason']}. The list is in "
            f"{', '.join(tables)}/*.rejects.csv (merged into rejects.csv by the data report); "
            f"fix or remove those videos, or raise the threshold, and rerun (finished videos "
            f"are not decoded again).")
    rows = sorted((r for r in kept if r.split == split), key=lambda r: r.path)
    write_rows(out, rows, ManifestRow)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.data_manifest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, nargs="+", required=True, help="shard manifest CSVs")
    ap.add_argument("--split", required=True)
    ap.add_argument("--max-reject-fraction", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    n = write_manifest(a.shards, a.split, a.max_reject_fraction, a.out)
    print(f"{a.out}: {n} videos", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
