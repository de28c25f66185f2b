"""`evaluate.backbone`: a checkpoint in the official SVT release's layout, evaluated by the real
workflow (snakemake) with no pretraining: adapt -> features -> probe -> table.

The checkpoint is the official teacher state dict (`backbone.` tensors and the DINO head, 12
blocks, a 197-position spatial table and 8 temporal rows, tests/official_svt.py) at small
widths: the importer checks names and shapes against the architecture the config's `model`
section describes, so the tiny release goes through exactly the code a ViT-B one does.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import job_stats, snakemake, tiny_pipeline_config
from official_svt import BACKBONE, TINY_OFFICIAL, TINY_WIDTHS, official_backbone, official_release
from svt.adapt import load_adapted
from svt.demo_data import generate
from svt.features import load_features
from svt.model import file_sha256
from svt.table import format_table

pytestmark = pytest.mark.slow

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """The workflow on the demo data with evaluate.backbone set (no random baseline: its path
    is the pretrained one's, tests/test_runs.py)."""
    root = tmp_path_factory.mktemp("imported")
    demo = generate(root / "demo", seed=1, classes=3, groups=3, clips=1, frames=24, size=(80, 60),
                    jobs=1, progress=False)
    release = official_release(TINY_WIDTHS, seed=7)
    ckpt = root / "kinetics400_vitb_ssl.pth"
    torch.save(release, ckpt)

    cfg = tiny_pipeline_config(demo, experiment="imported")
    cfg["curate"] = {"enabled": False}  # curation only feeds pretraining, which does not run
    cfg["model"] = {k: v for k, v in TINY_OFFICIAL.items()}  # the architecture of the file
    cfg["evaluate"] = {**cfg["evaluate"], "backbone": str(ckpt), "random_baseline": False}
    wd = root / "wd"
    wd.mkdir()
    (wd / "test.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(wd, "--configfile", "test.yaml")
    return {"wd": wd, "ckpt": ckpt, "release": release, "out": res.stdout + res.stderr,
            "jobs": job_stats(res)}


def test_no_pretraining_and_the_imported_backbone_is_evaluated(imported_run):
    jobs = imported_run["jobs"]
    assert "pretrain" not in jobs and "curate" not in jobs, jobs
    assert jobs["adapt"] == 1 and jobs["features"] == 4 and jobs["probe"] == 1, jobs
    assert jobs["eval_table"] == 1, jobs
    results = imported_run["wd"] / "results"
    assert not (results / "pretrain").exists()
    assert len(list(results.glob("evaluate/imported-*/adapted.pth"))) == 1


def test_adapted_weights_are_the_official_tensors(imported_run):
    """adapt read the file through the importer: every backbone tensor is the release's
    namesake (same grid and frame count, so nothing is resampled), nothing was left over
    but the DINO head, and the input normalisation is the config's (the file has none)."""
    (path,) = (imported_run["wd"] / "results").glob("evaluate/imported-*/adapted.pth")
    a = load_adapted(path)
    assert set(a["state_dict"]) == set(official_backbone())
    for k, v in a["state_dict"].items():
        assert torch.equal(v, imported_run["release"][BACKBONE + k]), k
    assert a["source"]["path"] == str(imported_run["ckpt"]) and not a["source"]["random_init"]
    assert a["source"]["sha256"] == file_sha256(imported_run["ckpt"])
    assert a["source"]["unexpected_keys"] == []  # the head was dropped by name, nothing else
    assert {k: a["pretrained_cfg"][k] for k in IMAGENET} == IMAGENET
    assert a["model"]["embed_dim"] == 32 and a["model"]["depth"] == 12
    assert {n: (g["frames"], g["size"]) for n, g in a["geometries"].items()} == \
        {"slow": (4, 32), "fast": (8, 16)}


def test_features_come_from_the_imported_backbone(imported_run):
    (adapted,) = (imported_run["wd"] / "results").glob("evaluate/imported-*/adapted.pth")
    files = sorted(adapted.parent.glob("demo-*/*.pt"))
    assert [f.name for f in files] == ["test_fast.pt", "test_slow.pt", "train_fast.pt", "train_slow.pt"]
    for f in files:
        feats = load_features(f)
        assert feats["backbone"]["sha256"] == file_sha256(adapted)
        assert feats["features"].shape[1] == 32 and torch.isfinite(feats["features"]).all()
        assert feats["features"].std(0).max() > 0  # not a constant: real weights, real videos


def test_table_shows_the_imported_backbone(imported_run):
    results = imported_run["wd"] / "results"
    (table,) = results.glob("evaluate/table-*/probe-*/table.md")
    text = table.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| backbone")}
    assert set(rows) == {"imported-demo"}, text
    # the imported row is that backbone's probe metrics, as svt.table formats them
    (metrics,) = results.glob("evaluate/imported-*/demo-*/probe-*/metrics.json")
    m = json.loads(metrics.read_text())
    assert {"slow", "fast", "slow_fast"} <= set(m)
    (want,) = [line for line in format_table({"imported-demo": m}).splitlines()
               if line.startswith("| imported-demo |")]
    assert rows["imported-demo"] == want
    assert "| imported-demo |" in imported_run["out"]  # printed at the end of the run
    # and the experiment's own record points at the imported weights
    record = results / "experiments" / "imported"
    assert (record / "table.md").read_text() == text
    used = yaml.safe_load((record / "config.yaml").read_text())["evaluate"]["backbone"]
    assert used == str(imported_run["ckpt"])
