"""Where an experiment's results are: ``python -m svt.results`` (``make results``).

Stage outputs are shared between experiments (``<results_dir>/data/<dataset>-<hash>/``,
``curate/``, ``pretrain/``, ``evaluate/``: named by what they depend on). The workflow's rule
``experiment`` writes the experiment's own folder, ``<results_dir>/experiments/<experiment>/``
(``--write``): ``config.yaml`` (the resolved config), ``latest.json`` (the outputs it used,
with their paths) and ``table.md`` (its evaluation table). Without ``--write`` this prints
that table and the paths; it runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LATEST = "latest.json"


def experiment_dir(results_dir: str | Path, experiment: str) -> Path:
    return Path(results_dir, "experiments", experiment)


def write_record(path: Path, record_json: str, tracking_uri: str) -> dict:
    """Write an experiment's folder (each file atomically: a reader never sees half):
    ``latest.json`` at ``path``, ``config.yaml`` and ``table.md`` beside it."""
    import yaml

    from svt.atomic import write_text_atomic

    given = json.loads(record_json)
    folder = Path(path).parent
    record = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              "config_files": [str(folder / "config.yaml")],
              "tracking_uri": tracking_uri, "outputs": given["outputs"]}
    header = ("# The experiment's config as resolved by the workflow (config.yaml, presets and\n"
              "# --config; a sweep variant's overrides applied); the runtime sections (pretrain,\n"
              "# cluster, tracking) change no result and are not recorded here, nor is the sweep.\n")
    write_text_atomic(folder / "config.yaml", header + yaml.safe_dump(given["config"], sort_keys=False))
    tables = [Path(t) for t in given["outputs"].get("table", []) if Path(t).is_file()]
    write_text_atomic(folder / "table.md", tables[0].read_text() if tables else
                      "(this experiment evaluated nothing)\n")
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
            if key == "evaluate" and Path(p).name.startswith("supervised-"):
                label = "supervised bound: backbone, curves, probes"
            lines.append(f"  {label + ':':<52} {p}")
    lines.append(f"  {'MLflow tracking store (make dashboard):':<52} {record['tracking_uri']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.results", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results"))
    ap.add_argument("--experiment", default="demo", help="the config's experiment name")
    ap.add_argument("--write", type=Path, metavar="LATEST_JSON",
                    help="write an experiment record there instead (rule experiment)")
    ap.add_argument("--record-json", help="with --write: config, config files and outputs (JSON)")
    ap.add_argument("--tracking-uri", default="", help="with --write: the MLflow store")
    a = ap.parse_args(argv)
    if a.write:
        if not a.record_json:
            ap.error("--write needs --record-json")
        record = write_record(a.write, a.record_json, a.tracking_uri)
        print(f"experiment record {a.write}: {sum(map(len, record['outputs'].values()))} outputs")
        return 0
    folder = experiment_dir(a.results_dir, a.experiment)
    path, sweep = folder / LATEST, folder / "sweep.md"
    if sweep.is_file():  # a sweep: each variant's record, then the comparison
        for record in sorted((folder / "variants").glob(f"*/{LATEST}")):
            print(f"Variant {record.parent.name}:\n{describe(json.loads(record.read_text()))}\n")
        print(f"Sweep {a.experiment} ({sweep}):\n\n{sweep.read_text().rstrip()}")
        return 0
    if not path.is_file():
        print(f"svt.results: no finished run of experiment {a.experiment!r} under {a.results_dir}/ "
              f"({path} is missing). Run the workflow first, e.g. `make demo`.", file=sys.stderr)
        return 1
    print(describe(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
