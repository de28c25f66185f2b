"""The data stage's report: ``python -m svt.data_report``.

    python -m svt.data_report --shards S1.csv S2.csv ... --rejects rejects.csv --summary summary.json
        [--tracking-uri URI --experiment NAME --run-name data/NAME --tag K=V ...]

Merges the decode shards' reject tables into one ``rejects.csv`` and writes ``summary.json``
(videos kept per split, rejects per reason, frames, hours); with ``--tracking-uri`` the same
numbers, the summary and the rejects go to the data stage's MLflow run. Nothing reads these
files back: editing this module reruns the report alone, never a decode shard or a manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from svt import tracking
from svt.manifest import RejectRow, shard_summary, write_rows


def report(shards: list[Path], rejects_out: Path, summary_out: Path) -> dict:
    """Merge shard tables into one rejects file and a summary (counts per split and reason)."""
    _, rejected, summary = shard_summary(shards)
    write_rows(rejects_out, rejected, RejectRow)
    summary_out.parent.mkdir(parents=True, exist_ok=True)
    summary_out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def log_report(stats: dict, rejects: Path, summary: Path, a: argparse.Namespace) -> None:
    """The data stage's MLflow run: counts per split and per reject reason, the summary and the
    list of rejected videos. Tracking trouble only warns (svt.tracking.Tracker)."""
    if not a.tracking_uri:
        return
    t = tracking.stage_run(a, "data")
    metrics = {k: stats[k] for k in ("videos", "kept", "rejected", "reject_fraction", "frames", "hours")}
    metrics.update({f"kept/{k}": v for k, v in stats["kept_per_split"].items()})
    metrics.update({f"rejected/{k}": v for k, v in stats["rejected_per_reason"].items()})
    t.log_metrics(metrics, step=0)
    t.log_artifact(summary, "data")
    t.log_artifact(rejects, "data")
    t.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.data_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, nargs="+", required=True, help="shard manifest CSVs")
    ap.add_argument("--rejects", type=Path, required=True, help="merged rejects CSV to write")
    ap.add_argument("--summary", type=Path, required=True, help="summary JSON to write")
    tracking.add_arguments(ap, experiment="svt-data", run_name="data")
    a = ap.parse_args(argv)
    stats = report(a.shards, a.rejects, a.summary)
    print(json.dumps(stats), file=sys.stderr)
    log_report(stats, a.rejects, a.summary, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
