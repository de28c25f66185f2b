"""One comparison of a sweep's variants: ``python -m svt.compare`` (rule sweep_table).

    python -m svt.compare --variant lr-0.00025=V1.json --variant lr-0.0005=V2.json \
        --devices 8 --out results/experiments/<name>/sweep.md [--tracking-uri URI ...]

Each ``V.json`` names one variant's overrides, its pretrained backbone's probe metrics per
evaluation dataset and its pretraining folder::

    {"overrides": {"optim.lr": 0.00025}, "metrics": {"ucf101": ".../metrics.json"},
     "pretrain": "results/pretrain/k400-<hash>"}

Rows are variants (per evaluation dataset), columns slow / fast / slow-fast x linear / kNN
top-1 in %, then the pretraining loss at the last logged step and the device-hours of
pretraining (the step times of its metrics.csv x ``--devices``). With a tracking URI, each
variant gets a child run of the workflow's parent run, tagged ``svt.variant`` and
``svt.overrides``, with its numbers; the table goes to the parent run as ``sweep/sweep.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from svt import tracking
from svt.config import parse_named
from svt.metrics import accuracy_cells, accuracy_head, accuracy_settings, eval_metrics


def pretrain_summary(folder: Path | str | None, devices: int) -> dict[str, float | None]:
    """Loss at the last logged step and device-hours, from the run's metrics.csv (None
    for both when the variant evaluated an imported backbone: no folder or no metrics.csv)."""
    path = Path(folder) / "metrics.csv" if folder else None
    if path is None or not path.is_file():
        return {"loss": None, "device_hours": None}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    seconds, previous = 0.0, 0
    for r in rows:
        step = int(r["step"])
        seconds += float(r["step_time"]) * (step - previous)
        previous = step
    return {"loss": float(rows[-1]["loss"]) if rows else None,
            "device_hours": seconds * devices / 3600}


def format_sweep(variants: dict[str, dict]) -> str:
    """The markdown table of ``variants`` (name -> {"metrics": {dataset: metrics dict},
    "loss": float, "device_hours": float})."""
    settings = accuracy_settings([m for v in variants.values() for m in v["metrics"].values()])
    several = len({d for v in variants.values() for d in v["metrics"]}) > 1
    head = ["variant"] + (["dataset"] if several else []) + accuracy_head(settings) + [
        "final loss", "device-h"]
    lines = ["| " + " | ".join(head) + " |",
             "|---" + ("|---" if several else "") + "|---:" * (len(head) - 1 - several) + "|"]
    for name, v in variants.items():
        for dataset, m in v["metrics"].items():
            cells = [name] + ([dataset] if several else []) + accuracy_cells(m, settings) + [
                "-" if v["loss"] is None else f"{v['loss']:.3f}",
                "-" if v["device_hours"] is None else f"{v['device_hours']:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(top-1 accuracy, %; loss at the last logged step; device-hours of pretraining)"


def log_sweep(variants: dict[str, dict], out: Path | None, a: argparse.Namespace) -> None:
    """A child run per variant under the workflow's parent run, and the table on the parent."""
    parent = a.run_id or os.environ.get(tracking.PARENT_ENV)
    if not parent:
        return
    for name, v in variants.items():
        t = tracking.stage_run(a, "sweep", run_id=None, run_name=f"variant/{name}",
                               tags={"svt.variant": name,
                                     "svt.overrides": json.dumps(v["overrides"], sort_keys=True)})
        numbers = {k: val for d, m in v["metrics"].items()
                   for k, val in eval_metrics(m, f"pretrained-{d}").items()}
        if v["loss"] is not None:
            numbers["pretrain/final_loss"] = v["loss"]
            numbers["pretrain/device_hours"] = v["device_hours"]
        t.log_params({k: str(val) for k, val in v["overrides"].items()})
        t.log_metrics(numbers, step=0)
        t.finish()
    if out:
        t = tracking.stage_run(a, "sweep", run_id=parent)
        t.log_artifact(out, "sweep")
        t.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=VARIANT.json",
                    help="one variant (see above); repeat, in table order")
    ap.add_argument("--devices", type=int, default=1, help="devices of each pretraining job")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    ap.add_argument("--variants-dir", type=Path,
                    help="the experiment's variants/ folder: records of variants no longer in the "
                         "sweep are removed (their outputs then show up in `make gc`)")
    tracking.add_arguments(ap)
    a = ap.parse_args(argv)
    variants = {}
    try:
        for name, path in parse_named(a.variant, "--variant").items():
            spec = json.loads(Path(path).read_text()) if not path.lstrip().startswith("{") else json.loads(path)
            metrics = {d: json.loads(Path(p).read_text()) for d, p in spec["metrics"].items()}
            summary = pretrain_summary(spec.get("pretrain"), a.devices)
            variants[name] = {"overrides": spec.get("overrides", {}), "metrics": metrics, **summary}
    except (OSError, ValueError, KeyError) as err:
        print(f"svt.compare: {err}", file=sys.stderr)
        return 2
    text = format_sweep(variants)
    print(text)
    if a.out:
        from svt.atomic import write_text_atomic

        write_text_atomic(a.out, text + "\n")
    if a.variants_dir and a.variants_dir.is_dir():
        prune_records(a.variants_dir, set(variants))
    log_sweep(variants, a.out, a)
    return 0


def prune_records(folder: Path, keep: set[str]) -> None:
    """The experiment folder describes the sweep as it is now: a variant taken out of the
    sweep loses its record (its shared outputs stay, for `make gc` to list)."""
    import shutil

    for record in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in keep):
        if (record / "latest.json").is_file():
            shutil.rmtree(record)
            print(f"removed the record of variant {record.name!r}, no longer in the sweep: {record}",
                  file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
