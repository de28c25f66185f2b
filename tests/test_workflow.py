"""End-to-end: the real `snakemake` runs the data stage on generated videos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_video, snakemake
from svt.manifest import ManifestRow, RejectRow, read_rows

pytestmark = pytest.mark.slow


def write_config(workdir: Path, datasets: dict, **decode) -> Path:
    names = list(datasets)
    cfg = {"experiment": "t", "data": {"pretrain": names[0], "evaluate": names[:1], "extra": names[1:],
                                       "datasets": datasets},
           "decode": {"short_side": 48, "shards": 2, "threads": 2, **decode}}
    path = workdir / "test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_data_stage_end_to_end(tiny_data, tmp_path):
    hostile = tmp_path / "hostile"
    names = ["a b/spaced name.mp4", "q'uo\"te/$HOME `id`.mp4", "ünï/视频 clip.mp4"]
    for n in names:
        make_video(hostile / n, size=(64, 48), seconds=1)
    (hostile / "a b" / "broken.mp4").write_bytes(b"not a video at all" * 100)
    cfg = write_config(tmp_path, {
        "demo": {"format": "ucf101", "root": str(tiny_data / "videos"),
                 "annotations": str(tiny_data / "splits")},
        "odd": {"format": "folder", "root": str(hostile)},
    }, max_reject_fraction=0.3)
    snakemake(tmp_path, "data", "--configfile", str(cfg))
    out = tmp_path / "results" / "data"
    (demo_dir,) = out.glob("demo-*")
    train = read_rows(demo_dir / "manifest" / "train.csv", ManifestRow)
    test = read_rows(demo_dir / "manifest" / "test.csv", ManifestRow)
    assert len(train) == 8 and len(test) == 4  # 4 classes x 3 groups, group 1 held out in fold 1
    assert {r.label for r in train} == {0, 1, 2, 3}
    for r in train + test:
        assert (r.width, r.height, r.fps, r.frames) == (64, 48, 30.0, 29)
        assert (demo_dir / "videos" / r.path).exists()
    # hostile names pass through argument lists untouched; the broken file is a reject
    (odd_dir,) = out.glob("odd-*")
    odd = read_rows(odd_dir / "manifest" / "train.csv", ManifestRow)
    assert sorted(r.source for r in odd) == sorted(names)
    rejects = read_rows(odd_dir / "rejects.csv", RejectRow)
    assert [r.source for r in rejects] == ["a b/broken.mp4"] and rejects[0].reason.startswith("unreadable")
    assert json.loads((odd_dir / "summary.json").read_text())["rejected"] == 1
    # one log per job under logs/
    logs = sorted(p.name for p in (tmp_path / "logs" / "data" / demo_dir.name).iterdir())
    assert logs == ["decode-0.log", "decode-1.log", "index.log", "manifest-test.log",
                    "manifest-train.log", "report.log"]
    # a second run has nothing to do; a changed decode setting gets a new folder
    again = snakemake(tmp_path, "data", "--configfile", str(cfg))
    assert "Nothing to be done" in again.stdout + again.stderr
    # nor after switching the tracking URI (it reaches the jobs through the environment;
    # decode_report is a tracked step): Snakemake's params and code triggers do not fire
    moved = {**yaml.safe_load(cfg.read_text()), "tracking": {"uri": "http://127.0.0.1:9/elsewhere"}}
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    again = snakemake(tmp_path, "data", "-n", "--configfile", str(tmp_path / "moved.yaml"))
    assert "Nothing to be done" in again.stdout + again.stderr
    cfg2 = write_config(tmp_path, yaml.safe_load(cfg.read_text())["data"]["datasets"],
                        short_side=32, max_reject_fraction=0.3)
    snakemake(tmp_path, "data", "--configfile", str(cfg2))
    assert len(list(out.glob("demo-*"))) == 2


def test_too_many_rejects_fail_the_stage_but_keep_the_report(tmp_path):
    root = tmp_path / "raw"
    make_video(root / "ok" / "good.mp4", size=(64, 48), seconds=1)
    (root / "ok" / "bad.mp4").write_bytes(b"")
    cfg = write_config(tmp_path, {"d": {"format": "folder", "root": str(root)}}, max_reject_fraction=0.1)
    res = snakemake(tmp_path, "data", "--configfile", str(cfg), check=False)
    assert res.returncode != 0
    (ddir,) = (tmp_path / "results" / "data").glob("d-*")
    log = (tmp_path / "logs" / "data" / ddir.name / "manifest-train.log").read_text()
    assert "1 of 2 videos were rejected" in log and "max_reject_fraction=0.1" in log
    assert [r.source for r in read_rows(ddir / "rejects.csv", RejectRow)] == ["ok/bad.mp4"]
    assert (ddir / "videos" / "ok" / "good.mp4").exists()  # finished work is kept


@pytest.mark.parametrize("case", ["missing_root", "malformed_line", "unknown_key", "undefined_dataset"])
def test_bad_config_stops_before_any_job(tiny_data, tmp_path, case):
    splits = tmp_path / "splits"
    splits.mkdir()
    for f in (tiny_data / "splits").iterdir():
        (splits / f.name).write_text(f.read_text())
    ds = {"format": "ucf101", "root": str(tiny_data / "videos"), "annotations": str(splits)}
    cfg = write_config(tmp_path, {"demo": ds})
    data = yaml.safe_load(cfg.read_text())
    if case == "missing_root":
        data["data"]["datasets"]["demo"]["root"] = str(tmp_path / "nowhere")
        expect = [f"dataset root '{tmp_path / 'nowhere'}' does not exist"]
    elif case == "malformed_line":
        lines = (splits / "trainlist01.txt").read_text().splitlines()
        lines[2] = "NotAClass/v_x.avi 99"
        (splits / "trainlist01.txt").write_text("\n".join(lines) + "\n")
        expect = [f"{splits / 'trainlist01.txt'}:3:"]
    elif case == "unknown_key":
        data["decode"]["short_sid"] = 64
        expect = ["short_sid"]
    else:
        data["data"]["extra"] = ["nope"]
        expect = ["nope", "not defined under data.datasets"]
    cfg.write_text(yaml.safe_dump(data))
    res = snakemake(tmp_path, "--configfile", str(cfg), check=False)
    assert res.returncode != 0
    for text in expect:
        assert text in res.stderr + res.stdout
    assert not (tmp_path / "results").exists()  # nothing ran


def test_lint_is_clean(tmp_path):
    """Snakemake's linter finds nothing, except one deliberate choice: pretrain and the
    supervised bound read their runtime keys (workers, logging, nodes) from config in the shell
    command, not from params, because a params change would restart a finished training
    (tests/test_runs.py::test_runtime_keys_do_not_rerun_pretraining)."""
    res = snakemake(tmp_path, "--lint", check=False)
    out = res.stdout + res.stderr
    if "Congratulations, your workflow is in a good condition!" in out:
        return
    # a group's body: its indented lines and blank lines, up to the next "Lints for"
    groups = re.findall(r"^Lints for (.+?):\n((?:(?:[ \t]+.*)?\n)*)", out, re.M)
    assert groups and len(groups) == out.count("Lints for "), out
    for where, body in groups:
        titles = set(re.findall(r"^\s+\* (.+?):?$", body, re.M))
        assert where.split(" (")[0] in ("rule pretrain", "rule supervised") and titles == {
            "Shell command directly uses variable config from outside of the rule"}, (where, titles)
    assert {w.split(" (")[0] for w, _ in groups} == {"rule pretrain", "rule supervised"}, groups


def test_slurm_profile_dry_run_without_slurm(tiny_data, tmp_path):
    """`snakemake --profile slurm -n` plans through the SLURM executor on a machine without
    SLURM (the profile is found as ./slurm/, as from the repository root)."""
    (tmp_path / "slurm").symlink_to(REPO / "slurm")
    cfg = write_config(tmp_path, {"demo": {"format": "ucf101", "root": str(tiny_data / "videos"),
                                           "annotations": str(tiny_data / "splits")}})
    res = snakemake(tmp_path, "--profile", "slurm", "-n", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert "This was a dry-run" in out and "decode_shard" in out and "pretrain" in out


@pytest.mark.cpu_only
def test_local_cpu_only_run_claims_no_gpus(tiny_data, tmp_path):
    """A local run on a machine without GPUs plans pretraining and feature extraction without
    gpu resources (the SLURM tests check that cluster jobs still ask for them)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU: local jobs claim it")
    cfg = write_config(tmp_path, {"demo": {"format": "ucf101", "root": str(tiny_data / "videos"),
                                           "annotations": str(tiny_data / "splits")}})
    res = snakemake(tmp_path, "-n", "--configfile", str(cfg))
    lines = [l for l in res.stdout.splitlines() if l.strip().startswith("resources:")]
    assert lines and "rule pretrain:" in res.stdout and "rule features:" in res.stdout
    assert not any("gpu" in l for l in lines), lines


def test_switching_the_tracking_uri_changes_no_job(tiny_data, tmp_path):
    """The tracking URI reaches the jobs through the environment (SVT_TRACKING_URI, set by
    workflow/rules/common.smk), never through a rule's params or shell command: the whole
    pipeline's planned jobs and commands are the same for any URI, so Snakemake's params and
    code rerun triggers cannot fire when it changes (test_data_stage_end_to_end checks this
    on completed jobs)."""
    cfg = write_config(tmp_path, {"demo": {"format": "ucf101", "root": str(tiny_data / "videos"),
                                           "annotations": str(tiny_data / "splits")}})
    uris = ["http://127.0.0.1:9/svt-test-server", f"sqlite:///{tmp_path / 'elsewhere' / 'svt-other.db'}"]
    plans = []
    for i, uri in enumerate(uris):
        data = yaml.safe_load(cfg.read_text())
        data["tracking"] = {"uri": uri}
        path = tmp_path / f"tracking-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        out = snakemake(tmp_path, "-n", "-p", "--configfile", str(path)).stdout
        assert "svt-other.db" not in out and "svt-test-server" not in out
        # the jobs (rule, files, wildcards, resources, shell command), without the header
        # (date, config file and its MD5), the timestamps and the reasons (sets of missing
        # files, in no fixed order)
        jobs = re.sub(r"^(\[.*\]|\s+reason: .*)\n", "", out[out.index("Building DAG of jobs"):],
                      flags=re.M)
        plans.append(sorted(block.strip() for block in jobs.split("\n\n")))
    assert plans[0] == plans[1]
    # every tracked step is planned and reads the URI from the environment
    for rule in ("decode_report", "curate", "pretrain", "probe", "eval_table", "experiment"):
        assert any(block.startswith(f"rule {rule}:") for block in plans[0]), rule
    commands = [b for b in plans[0] if "Shell command:" in b]
    assert sum('--tracking-uri "$SVT_TRACKING_URI"' in b for b in commands) >= 6
