"""The final comparison table: ``python -m svt.table`` (the demo's last output).

    python -m svt.table --row random=R/metrics.json --row pretrained=P/metrics.json --out T.md

Rows are backbones (their probes' metrics.json), columns the slow, fast and slow-fast views
with linear and kNN top-1 in %. Prints the table and writes it to ``--out``; with
``--tracking-uri`` its metrics (``eval/<row>/<setting>/<probe>_<top1|top5>``) and the table go
to the workflow's parent run (svt.tracking.PARENT_ENV) or ``--run-id``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Mapping

from svt import tracking
from svt.config import parse_named
from svt.metrics import eval_metrics, ordered, pct


ROW_LABELS = {"random": "random init", "pretrained": "pretrained"}


def format_table(results: Mapping[str, Mapping]) -> str:
    """Compare runs: rows (e.g. random, pretrained) x columns (slow, fast, slow-fast; linear
    and kNN top-1, in %). ``results`` maps a row name to that run's metrics.json dict."""
    settings: list[str] = []
    for m in results.values():
        settings += [s for s in m if s not in settings]
    settings = ordered(settings)
    head = ["backbone"] + [f"{s.replace('_', '-')} {kind}" for s in settings
                           for kind in ("linear", "kNN")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row, m in results.items():
        cells = [ROW_LABELS.get(row, row)]
        for s in settings:
            r = m.get(s, {})
            cells += [pct(r.get("linear", {}).get("top1")), pct(r.get("knn", {}).get("top1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(top-1 accuracy, %)"


def log_table(rows: Mapping[str, Mapping], out: Path | None, a: argparse.Namespace) -> None:
    """The comparison's metrics on the workflow's parent run (or --run-id): the numbers users
    compare between workflow runs in the MLflow run list."""
    run_id = a.run_id or os.environ.get(tracking.PARENT_ENV)
    if not run_id:
        return
    t = tracking.stage_run(a, "evaluate", run_id=run_id)
    t.log_metrics({k: v for row, m in rows.items() for k, v in eval_metrics(m, row).items()},
                  step=0)
    if out:
        t.log_artifact(out, "eval")
    t.finish()  # its status put back: the workflow closes its parent run itself


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", required=True, metavar="NAME=metrics.json",
                    help="one backbone's probe metrics; repeat per row, in table order")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    tracking.add_arguments(ap)  # --run-id: log into that run instead of the workflow's
    a = ap.parse_args(argv)
    try:
        rows = {name: json.loads(Path(path).read_text())
                for name, path in parse_named(a.row, "--row").items()}
    except (OSError, ValueError) as err:
        print(f"svt.table: {err}", file=sys.stderr)
        return 2
    text = format_table(rows)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    log_table(rows, a.out, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
