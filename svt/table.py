"""The final comparison table: ``python -m svt.table`` (the demo's last output).

    python -m svt.table --row random=R/metrics.json --row pretrained=P/metrics.json --out T.md

Rows are backbones (their probes' metrics.json), columns the slow, fast and slow-fast views
with linear and kNN top-1 in %. Under the table, one verdict line per dataset (the pretrained
backbone's gain over random init, and the supervised bound's when it was evaluated), then
``--note``. Prints all of it and writes it to ``--out``; with ``--tracking-uri`` its metrics
(``eval/<row>/<setting>/<probe>_<top1|top5>``) and the table go to the workflow's parent run
(svt.tracking.PARENT_ENV) or ``--run-id``.
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
from svt.metrics import accuracy_cells, accuracy_head, accuracy_settings, eval_metrics, percent


ROW_LABELS = {"random": "random init", "pretrained": "pretrained"}


def format_table(results: Mapping[str, Mapping]) -> str:
    """Compare runs: rows (e.g. random, pretrained) x columns (slow, fast, slow-fast; linear
    and kNN top-1, in %). ``results`` maps a row name to that run's metrics.json dict."""
    settings = accuracy_settings(list(results.values()))
    head = ["backbone"] + accuracy_head(settings)
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row, m in results.items():
        cells = [ROW_LABELS.get(row, row)] + accuracy_cells(m, settings)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(top-1 accuracy, %)"


# Points over random init, in the slow and the slow-fast columns with both the linear probe and
# kNN, that count as pretraining clearly helping (the demo's bar).
CLEAR_GAIN = 10.0
VERDICT_SETTINGS = ("slow", "slow_fast")


def gains(m: Mapping, base: Mapping) -> dict[str, tuple]:
    """Top-1 points of ``m`` over ``base`` per setting: (linear, kNN); None where one lacks it."""
    out = {}
    for s in accuracy_settings([m]):
        pair = []
        for probe in ("linear", "knn"):
            a = m.get(s, {}).get(probe, {}).get("top1")
            b = base.get(s, {}).get(probe, {}).get("top1")
            # in percent as the table shows them (0.5 - 0.4 is 9.999... in fractions)
            pair.append(None if a is None or b is None else round(percent(a) - percent(b), 2))
        out[s] = tuple(pair)
    return out


def verdicts(results: Mapping[str, Mapping]) -> list[str]:
    """One line per dataset with a pretrained (or imported) row and a random-init row: the
    gain over random init per column, whether it clears CLEAR_GAIN in the slow and slow-fast
    columns, and the supervised bound's gain when that row is there (what the data and budget
    could show at most)."""

    def points(g: dict) -> str:
        return ", ".join(f"{s.replace('_', '-')} " + "/".join("-" if x is None else f"{x:+.1f}" for x in pair)
                         for s, pair in g.items())

    lines = []
    for row, m in results.items():
        kind, _, dataset = row.partition("-")
        base = results.get(f"random-{dataset}")
        if kind not in ("pretrained", "imported") or base is None:
            continue
        g = gains(m, base)
        checked = [x for s in VERDICT_SETTINGS for x in g.get(s, ())]
        clears = bool(checked) and all(x is not None and x >= CLEAR_GAIN for x in checked)
        line = (f"{kind} vs random init on {dataset}, top-1 points (linear/kNN): {points(g)}: "
                f"{'beats' if clears else 'does not beat'} random init by {CLEAR_GAIN:g} points in "
                f"the slow and slow-fast columns")
        bound = results.get(f"supervised-{dataset}")
        if bound is not None:
            line += f"; trained with labels (the bound): {points(gains(bound, base))}"
        lines.append(line)
    return lines


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
    ap.add_argument("--note", default="", help="a line printed under the table and its verdicts")
    tracking.add_arguments(ap)  # --run-id: log into that run instead of the workflow's
    a = ap.parse_args(argv)
    try:
        rows = {name: json.loads(Path(path).read_text())
                for name, path in parse_named(a.row, "--row").items()}
    except (OSError, ValueError) as err:
        print(f"svt.table: {err}", file=sys.stderr)
        return 2
    text = "\n\n".join([format_table(rows), *verdicts(rows), *([a.note] if a.note else [])])
    print(text)
    if a.out:
        from svt.atomic import write_text_atomic

        write_text_atomic(a.out, text + "\n")
    log_table(rows, a.out, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
