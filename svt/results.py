"""Where a workflow run's results are: ``python -m svt.results`` (``make results``).

The workflow's ``onsuccess`` writes ``<results_dir>/<experiment>/latest.json`` (what the last
successful invocation produced and where); this prints that run's evaluation table and the
paths of its outputs, logs and tracking store. It runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LATEST = "latest.json"


def write_latest(path: Path, outputs: dict[str, list[str] | str], tracking_uri: str,
                 config_files: list[str]) -> dict:
    """Record the outputs of a finished invocation (atomically: a reader never sees half)."""
    from svt.atomic import write_text_atomic

    record = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "config_files": config_files,
              "tracking_uri": tracking_uri, "outputs": outputs}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return record


def describe(record: dict) -> str:
    """The table (when the run evaluated) and the list of where things are."""
    out = record["outputs"]
    lines = []
    tables = [Path(p) for p in out.get("table", [])]
    for table in tables:
        if table.is_file():
            lines += [f"Evaluation table ({table}):", "", table.read_text().rstrip(), ""]
    lines.append(f"Latest finished run: {record['finished']} "
                 f"(config: {' '.join(record['config_files']) or 'config.yaml'})")
    labels = {"data": "decoded videos, manifests, rejects", "curate": "curation report and plots",
              "pretrain": "pretrained teacher backbone, curves, metrics.csv",
              "evaluate": "features, probes, confusion matrices", "logs": "per-rule logs"}
    for key, label in labels.items():
        for p in out.get(key, []):
            lines.append(f"  {label + ':':<52} {p}")
    lines.append(f"  {'MLflow tracking store (make dashboard):':<52} {record['tracking_uri']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results"))
    ap.add_argument("--experiment", default="demo", help="the config's experiment name")
    a = ap.parse_args(argv)
    path = a.results_dir / a.experiment / LATEST
    if not path.is_file():
        print(f"svt.results: no finished run of experiment {a.experiment!r} under {a.results_dir}/ "
              f"({path} is missing). Run the workflow first, e.g. `make demo`.", file=sys.stderr)
        return 1
    print(describe(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
