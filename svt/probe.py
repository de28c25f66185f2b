"""Linear probe and kNN on a frozen backbone: ``python -m svt.probe``.

Cached features (fast; the default)::

    python -m svt.probe --train slow=train_slow.pt --train fast=train_fast.pt \
        --test slow=test_slow.pt --test fast=test_fast.pt --classes classes.txt --out-dir DIR

evaluates every geometry alone and all of them combined (``slow_fast``: the mean of the CLS
features, ``--combine concat`` to concatenate): a linear probe (Linear(dim, classes), N(0, 0.01)
init, SGD momentum, lr x batch/256, cosine, cross-entropy) and a weighted kNN
(L2-normalised, exp(sim / T) votes of the k nearest). Writes ``metrics.json``,
``confusion_<setting>.png`` and ``results.md``, prints the table and, with ``--tracking-uri``,
logs all of it under ``eval/<prefix>/`` to a run of its own (``probe/<prefix>``, a child of the
workflow's parent run when there is one). That run is tagged ``svt.backbone_run_id`` with the
backbone's pretraining run (``--run-id``, else the one recorded with the backbone), which itself
gets no evaluation metrics: its charts stay its training curves.

Online (the paper protocol: heads trained on freshly augmented views through the frozen
backbone; slow, so not the default)::

    python -m svt.probe --online --backbone adapted.pth --geometry slow --geometry fast \
        --train-manifest train.csv --test-manifest test.csv --videos-root V --classes ... --out-dir DIR

Comparison table (the demo's final output)::

    python -m svt.probe --table random=R/metrics.json --table pretrained=P/metrics.json --table-out T.md

With ``--tracking-uri``, the table's metrics (``eval/<row>/<setting>/<probe>_<top1|top5>``) and
the table itself go to the workflow's parent run (svt.tracking.PARENT_ENV) or ``--run-id``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from svt import evaluate as ev
from svt import tracking
from svt.loader import BACKENDS


def _load_split(named: dict[str, str], split: str) -> tuple[dict, object, str | None]:
    """Features per geometry, their labels, and the backbone's recorded MLflow run id."""
    feats, first = {}, None
    for name, path in named.items():
        d = ev.load_features(path)
        if first is None:
            first = d
        elif d["paths"] != first["paths"] or not (d["labels"] == first["labels"]).all():
            raise ValueError(f"{split} features {name!r} ({path}) cover other videos than "
                             f"{next(iter(named))!r}: extract them from the same manifest")
        elif d["backbone"]["sha256"] != first["backbone"]["sha256"]:
            raise ValueError(f"{split} features {name!r} ({path}) come from another backbone")
        feats[name] = d["features"]
    return feats, first["labels"], first.get("mlflow_run_id")


def run_cached(a, cfg: ev.ProbeConfig, classes: list[str]) -> tuple[dict, str | None]:
    train, test = ev.parse_named(a.train, "--train"), ev.parse_named(a.test, "--test")
    if not train or list(train) != list(test):
        raise ValueError(f"--train and --test must name the same geometries in the same order, "
                         f"got {list(train)} and {list(test)}")
    tr, tr_y, run_id = _load_split(train, "train")
    te, te_y, _ = _load_split(test, "test")
    results = ev.evaluate_settings(tr, tr_y, te, te_y, classes, cfg, a.combine, a.knn_k,
                                   a.knn_temperature, ev.resolve_device(a.device))
    return results, run_id


def run_online(a, cfg: ev.ProbeConfig, classes: list[str]) -> tuple[dict, str | None]:
    if not (a.backbone and a.geometry and a.train_manifest and a.test_manifest and a.videos_root):
        raise ValueError("--online needs --backbone, --geometry, --train-manifest, "
                         "--test-manifest and --videos-root")
    adapted = ev.load_adapted(a.backbone)
    results = ev.train_online(adapted, a.geometry, a.train_manifest, a.test_manifest,
                              a.videos_root, classes, cfg, a.combine, a.clips, a.crops, a.hflip,
                              (a.crop_scale, 1.0), a.num_workers, a.decoder, a.device,
                              a.test_videos_root)
    return results, adapted.get("mlflow_run_id")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    io = ap.add_argument_group("cached features")
    io.add_argument("--train", action="append", metavar="NAME=FEATURES.pt", help="repeat per geometry")
    io.add_argument("--test", action="append", metavar="NAME=FEATURES.pt", help="repeat per geometry")
    ap.add_argument("--classes", type=Path, help="class names, one a line, in label order")
    ap.add_argument("--out-dir", type=Path, help="metrics.json, confusion_*.png, results.md")
    p = ap.add_argument_group("probe")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.001, help="for batch 256; scaled by batch/256")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--combine", choices=("mean", "concat"), default="mean",
                   help="slow-fast feature: mean of the CLS features or their concatenation")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-temperature", type=float, default=0.07)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default; the probe is small) | auto | cuda")
    on = ap.add_argument_group("online probe (--online)")
    on.add_argument("--online", action="store_true", help="train on augmented views, not cached features")
    on.add_argument("--backbone", type=Path, help="adapted backbone (svt.adapt)")
    on.add_argument("--geometry", action="append", help="recorded geometry name; repeat")
    on.add_argument("--train-manifest", type=Path)
    on.add_argument("--test-manifest", type=Path)
    on.add_argument("--videos-root", type=Path)
    on.add_argument("--test-videos-root", type=Path, help="default: --videos-root")
    on.add_argument("--clips", type=int, default=1, help="test clips")
    on.add_argument("--crops", type=int, default=3, help="test crops")
    on.add_argument("--hflip", type=float, default=0.5, help="flip probability (0: direction matters)")
    on.add_argument("--crop-scale", type=float, default=0.4, help="smallest random-crop area")
    on.add_argument("--num-workers", type=int, default=0)
    on.add_argument("--decoder", default="torchcodec", choices=BACKENDS)
    tr = ap.add_argument_group("MLflow")
    tr.add_argument("--tracking-uri", default=None)
    tr.add_argument("--experiment", default="svt")
    tr.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="tag of the probe's own MLflow run; repeat")
    tr.add_argument("--run-id", default=None, help="the backbone's pretraining run, tagged on the "
                    "probe's run (default: the one recorded with the backbone); with --table: "
                    "the run that gets the table")
    tr.add_argument("--run-json", type=Path, default=None,
                    help="run.json written by svt.pretrain: the pretraining run it names")
    tr.add_argument("--prefix", default="pretrained", help="metric prefix, e.g. random | pretrained")
    tb = ap.add_argument_group("comparison table (--table)")
    tb.add_argument("--table", action="append", metavar="ROW=metrics.json",
                    help="print the comparison of these runs and exit; repeat per row")
    tb.add_argument("--table-out", type=Path, help="also write the table (markdown) here")
    a = ap.parse_args(argv)

    if a.table:
        rows = {name: json.loads(Path(path).read_text())
                for name, path in ev.parse_named(a.table, "--table").items()}
        text = ev.format_table(rows)
        print(text)
        if a.table_out:
            a.table_out.parent.mkdir(parents=True, exist_ok=True)
            a.table_out.write_text(text + "\n")
        log_table(rows, a)
        return 0

    if not a.classes or not a.out_dir:
        ap.error("--classes and --out-dir are required")
    classes = ev.read_classes(a.classes)
    cfg = ev.ProbeConfig(a.epochs, a.lr, a.batch_size, a.momentum, a.weight_decay, a.seed)
    try:
        results, recorded_run = (run_online if a.online else run_cached)(a, cfg, classes)
    except ValueError as err:
        print(f"svt.probe: {err}", file=sys.stderr)
        return 2
    metrics = ev.write_outputs(results, classes, a.out_dir)
    table = ev.format_results(metrics)
    (a.out_dir / "results.md").write_text(table + "\n")
    print(table)
    if a.run_json and not a.run_id:
        a.run_id = json.loads(a.run_json.read_text()).get("mlflow_run_id")
    run_id = a.run_id or recorded_run
    tags = tracking.parse_tags(a.tag)
    if run_id:
        tags["svt.backbone_run_id"] = run_id
    ev.log_to_mlflow(metrics, a.out_dir, a.tracking_uri, a.experiment, a.prefix, tags)
    return 0


def log_table(rows: dict, a: argparse.Namespace) -> None:
    """The comparison's metrics on the workflow's parent run (or --run-id): the numbers users
    compare between workflow runs in the MLflow run list."""
    run_id = a.run_id or os.environ.get(tracking.PARENT_ENV)
    if not a.tracking_uri or not run_id:
        return
    t = tracking.Tracker(a.tracking_uri, a.experiment, run_id=run_id)
    t.log_metrics({k: v for row, m in rows.items() for k, v in ev.eval_metrics(m, row).items()},
                  step=0)
    if a.table_out:
        t.log_artifact(a.table_out, "eval")
    if a.run_id:  # a run named by hand is closed again; the parent is closed by the workflow
        t.finish()


if __name__ == "__main__":
    sys.exit(main())
