"""svt.sweep (the config's sweep: section into named variants) and svt.compare (the one
comparison table of a sweep)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO
from svt.compare import format_sweep, pretrain_summary
from svt.config import load_config
from svt.sweep import SweepError, expand, variant_config


def test_grid_and_named_variants():
    v = expand({"variants": {"warm2": {"optim.warmup_epochs": 2}},
                "grid": {"optim.lr": [2.5e-4, 5e-4], "views.global_size": [160, 224]}})
    assert list(v) == ["warm2", "lr-0.00025_global_size-160", "lr-0.00025_global_size-224",
                       "lr-0.0005_global_size-160", "lr-0.0005_global_size-224"]
    assert v["lr-0.0005_global_size-160"] == {"optim.lr": 5e-4, "views.global_size": 160}
    assert expand({}) == {} and expand(None) == {} and expand({"variants": {}, "grid": {}}) == {}


def test_variant_configs_override_only_their_keys():
    base = load_config()
    lr = variant_config(base, {"optim.lr": 1e-3, "views.local_frames": [2, 4]})
    assert lr["optim"]["lr"] == 1e-3 and lr["views"]["local_frames"] == [2, 4]
    assert lr["optim"]["epochs"] == base["optim"]["epochs"] and base["optim"]["lr"] == 5e-4
    with pytest.raises(SweepError, match="no key 'lrr'"):
        variant_config(base, {"optim.lrr": 1e-3})


@pytest.mark.parametrize("sweep, match", [
    ({"grid": {"decode.crf": [20, 23]}}, "'decode.crf' cannot vary"),
    ({"variants": {"a": {"pretrain.num_workers": 2}}}, "'pretrain.num_workers' cannot vary"),
    ({"grid": {"optim.lr": []}}, "non-empty list"),
    ({"variants": {"bad name": {"optim.lr": 1.0}}}, "names are letters"),
    ({"variants": {"lr-0.001": {}}, "grid": {"optim.lr": [0.001]}}, "defined twice"),
])
def test_malformed_sweeps_are_refused_naming_the_key(sweep, match):
    with pytest.raises(SweepError, match=match):
        expand(sweep)


def test_comparison_table_and_pretraining_summary(tmp_path):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    with open(pre / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "step_time"])
        w.writeheader()
        w.writerows([{"step": 10, "loss": 4.0, "step_time": 0.36},
                     {"step": 30, "loss": 3.25, "step_time": 0.18}])
    s = pretrain_summary(pre, devices=8)
    assert s["loss"] == 3.25 and s["device_hours"] == pytest.approx((10 * 0.36 + 20 * 0.18) * 8 / 3600)
    m = {"slow": {"linear": {"top1": 0.5}, "knn": {"top1": 0.25}},
         "slow_fast": {"linear": {"top1": 0.625}, "knn": {"top1": 0.375}}}
    text = format_sweep({"lr-a": {"metrics": {"ucf": m}, **s},
                         "lr-b": {"metrics": {"ucf": m}, "loss": None, "device_hours": None}})
    rows = [line for line in text.splitlines() if line.startswith("| lr-")]
    assert rows[0].split(" | ")[1:] == ["50.0", "25.0", "62.5", "37.5", "3.250", "0.016 |"]
    assert rows[1].endswith("| - | - |") and "final loss" in text and "device-h" in text


def test_compare_command_writes_the_table(tmp_path):
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"fast": {"linear": {"top1": 0.1}, "knn": {"top1": 0.2}}}))
    spec = {"overrides": {"optim.lr": 1e-3}, "metrics": {"demo": str(metrics)}, "pretrain": None}
    res = subprocess.run([sys.executable, "-m", "svt.compare", f"--variant=v={json.dumps(spec)}",
                          "--out", str(tmp_path / "sweep.md")], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "| v | 10.0 | 20.0 | - | - |" in (tmp_path / "sweep.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "svt.compare", "--variant=v={\"metrics\": {\"d\": \"missing.json\"}}"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "missing.json" in bad.stderr


def test_records_of_variants_taken_out_of_the_sweep_are_removed(tmp_path):
    from svt.compare import prune_records

    for name in ("a", "b", "gone"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "latest.json").write_text("{}")
    (tmp_path / "not-a-record").mkdir()  # anything else is left alone
    prune_records(tmp_path, {"a", "b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "not-a-record"]
