"""The workflow as users run it: partial reruns after a change, and a real SLURM on localhost
(scripts/slurm-local.sh) driven through `snakemake --profile slurm --profile profiles/local-slurm`.

The SLURM tests need root and the SLURM packages (`scripts/slurm-local.sh install`; `make test`
installs them when run as root). Under CI they must run: a missing SLURM is then a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (INSTALL_SLURM, REPO, TinyRun, job_stats, missing, snakemake, stop_group,
                      tiny_pipeline_config)

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILES = ["--profile", str(REPO / "slurm"), "--profile", str(REPO / "profiles" / "local-slurm")]
LOCAL_RULES = {"all", "data", "index", "decode_report", "manifest", "eval_table", "experiment",
               "sweep_table"}
DATA_RULES = {"index", "decode_shard", "decode_report", "manifest"}


def write(workdir: Path, cfg: dict, name: str = "tiny.yaml") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry(wd: Path, cfg: dict, *args: str, snakefile: Path | None = None) -> dict[str, int]:
    path = write(wd, cfg, "changed.yaml")
    extra = ["-s", str(snakefile)] if snakefile else []
    res = snakemake(wd, *extra, "-n", *args, "--configfile", str(path))
    return job_stats(res)


# ---- partial reruns (local executor) ------------------------------------------------------


def test_whole_pipeline_outputs(tiny_run):
    wd, stats, printed = tiny_run.wd, tiny_run.stats, tiny_run.printed
    out = wd / "results"
    (table,) = out.glob("evaluate/*/probe-*/table.md")
    text = table.read_text()
    assert "| pretrained-demo |" in text and "| random-demo |" in text
    assert "| pretrained-demo |" in printed  # the table is printed at the end of the run
    # ... at the end (onsuccess), with where everything is; `make results` prints it again
    assert "Evaluation table (" in printed and "per-rule logs:" in printed
    # the experiment's folder: what it is (config), what it used (outputs), what it gave (table)
    exp = out / "experiments" / "t"
    latest = json.loads((exp / "latest.json").read_text())
    assert latest["outputs"]["table"] == [str(table.relative_to(wd))]
    assert (exp / "table.md").read_text() == text
    assert yaml.safe_load((exp / "config.yaml").read_text())["experiment"] == "t"
    for paths in latest["outputs"].values():
        assert all((wd / p).exists() for p in paths), paths
    assert {"data", "curate", "pretrain", "evaluate", "logs"} <= {k for k, v in latest["outputs"].items() if v}
    res = subprocess.run([sys.executable, "-m", "svt.results", "--results-dir", "results", "--experiment", "t"],
                         cwd=wd, capture_output=True, text=True)
    assert res.returncode == 0 and text.strip() in res.stdout and "MLflow tracking store" in res.stdout
    none = subprocess.run([sys.executable, "-m", "svt.results", "--results-dir", "results", "--experiment", "x"],
                          cwd=wd, capture_output=True, text=True)
    assert none.returncode == 1 and "no finished run of experiment 'x'" in none.stderr
    (summary,) = out.glob("curate/*/summary.json")
    assert json.loads(summary.read_text())
    assert len(list(out.glob("evaluate/*/demo-*/*.pt"))) == 8  # 2 backbones x 2 splits x 2 views
    assert stats["pretrain"] == 1 and stats["probe"] == 2


def test_pretraining_change_reruns_pretraining_and_evaluation_not_decoding(tiny_run):
    wd, cfg = tiny_run.wd, tiny_run.cfg
    changed = copy.deepcopy(cfg)
    changed["optim"]["lr"] = 1e-3
    plan = dry(wd, changed)
    assert {"pretrain", "adapt", "features", "probe", "eval_table"} <= set(plan), plan
    assert not (set(plan) & (DATA_RULES | {"curate"})), plan
    # only the pretrained backbone is adapted, extracted and probed again: the random
    # baseline depends on the architecture, the seed and the views, not on the pretraining
    assert plan["adapt"] == 1 and plan["features"] == 4 and plan["probe"] == 1, plan
    # switching back finds everything it made before
    assert dry(wd, cfg) == {}


def test_runtime_keys_do_not_rerun_pretraining(tiny_run):
    """Workers, logging and checkpoint interval change how a run goes, not what it makes."""
    wd, cfg = tiny_run.wd, tiny_run.cfg
    changed = copy.deepcopy(cfg)
    changed["pretrain"].update(num_workers=1, log_every=3, checkpoint_every=5, knn_every=2)
    changed["cluster"].update(pretrain_runtime=30, partition="other")
    assert dry(wd, changed) == {}


def test_probe_change_reruns_only_the_probe(tiny_run):
    wd, cfg = tiny_run.wd, tiny_run.cfg
    changed = copy.deepcopy(cfg)
    changed["evaluate"]["probe_lr"] = 0.01
    assert dry(wd, changed) == {"probe": 2, "eval_table": 1, "experiment": 1, "all": 1}


def test_until_and_forcerun(tiny_run):
    wd, cfg = tiny_run.wd, tiny_run.cfg
    changed = copy.deepcopy(cfg)
    changed["optim"]["lr"] = 1e-3
    assert dry(wd, changed, "--until", "pretrain") == {"pretrain": 1}
    forced = dry(wd, cfg, "--forcerun", "curate")
    assert forced["curate"] == 1 and forced["pretrain"] == 1 and forced["probe"] == 1, forced
    assert not set(forced) & DATA_RULES, forced


def test_code_edits_are_detected_and_listed(tiny_run, tmp_path):
    """Editing svt/probe.py reruns the probes (and what follows), not feature extraction: the
    module's source hash is a param. Editing a rule's command is what --list-changes code lists."""
    wd, cfg = tiny_run.wd, tiny_run.cfg
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("workflow", "svt"):
        shutil.copytree(REPO / part, checkout / part, ignore=ignore)
    shutil.copy(REPO / "Snakefile", checkout / "Snakefile")
    snakefile = checkout / "Snakefile"
    with open(checkout / "svt" / "probe.py", "a") as f:
        f.write("\n# an edit\n")
    assert dry(wd, cfg, snakefile=snakefile) == {"probe": 2, "eval_table": 1, "experiment": 1, "all": 1}
    res = snakemake(wd, "-s", str(snakefile), "-n", "--configfile", str(wd / "tiny.yaml"))
    assert re.search(r"params have changed since last execution:\s+probe", res.stdout + res.stderr)

    rules = checkout / "workflow" / "rules" / "evaluate.smk"
    text = rules.read_text()
    assert "--note {params.note} --out {output:q}" in text  # the eval_table command
    rules.write_text(text.replace("--note {params.note} --out {output:q}", "--note {params.note}  --out {output:q}"))
    res = snakemake(wd, "-s", str(snakefile), "--list-changes", "code", "--configfile", str(wd / "tiny.yaml"))
    listed = [line for line in res.stdout.splitlines() if line.startswith("results/")]
    assert len(listed) == 1 and listed[0].endswith("/table.md"), res.stdout


def test_two_experiments_share_the_stage_outputs(tiny_run, tmp_path):
    """A new experiment name with the same data and recipe runs nothing: every stage output
    is keyed by what it depends on, not by the experiment; it still gets its own folder."""
    wd, cfg = tiny_run.copy(tmp_path / "wd").wd, tiny_run.cfg
    other = copy.deepcopy(cfg)
    other["experiment"] = "u"
    path = write(wd, other, "u.yaml")
    assert dry(wd, other) == {"experiment": 1, "all": 1}  # only its own folder is written
    res = snakemake(wd, "--cores", "1", "--configfile", str(path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert job_stats(res) == {"experiment": 1, "all": 1}
    assert "Evaluation table (" in res.stdout + res.stderr  # printed at the end, as for any run
    t, u = wd / "results" / "experiments" / "t", wd / "results" / "experiments" / "u"
    assert (u / "table.md").read_text() == (t / "table.md").read_text()
    assert json.loads((u / "latest.json").read_text())["outputs"] == json.loads(
        (t / "latest.json").read_text())["outputs"]
    assert yaml.safe_load((u / "config.yaml").read_text())["experiment"] == "u"
    assert dry(wd, other) == {}
    # every stage folder on disk is one an experiment uses: `make gc` finds nothing to list
    gc = subprocess.run([sys.executable, "-m", "svt.gc"], cwd=wd, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert gc.returncode == 0 and "every stage folder" in gc.stdout, gc.stdout + gc.stderr
    # another learning rate: pretraining and evaluation again, no data or curation job
    lr = copy.deepcopy(other)
    lr["optim"]["lr"] = 2 * cfg["optim"].get("lr", 5e-4)
    plan = dry(wd, lr)
    assert plan.get("pretrain") == 1 and plan.get("probe") == 1, plan  # the random baseline stays
    assert not {"index", "decode_shard", "decode_report", "manifest", "curate"} & set(plan), plan


def test_supervised_bound_is_trained_evaluated_and_judged_beside_the_others(tiny_run, tmp_path):
    """evaluate.supervised_bound adds one backbone, trained with the evaluation dataset's
    labels, beside the pretrained and random ones: only its own jobs run, its row and the
    verdict line are in the table, and it reruns with its recipe, not with a probe setting."""
    wd, cfg = tiny_run.copy(tmp_path / "wd").wd, tiny_run.cfg  # the reference run stays as it is
    bound = copy.deepcopy(cfg)
    bound["evaluate"].update(supervised_bound=True, table_note="see the README for the GPU figures")
    path = write(wd, bound, "bound.yaml")
    res = snakemake(wd, "--configfile", str(path))
    assert job_stats(res) == {"supervised": 1, "adapt": 1, "features": 4, "probe": 1, "eval_table": 1,
                              "experiment": 1, "all": 1}
    out = wd / "results"
    (folder,) = out.glob("evaluate/supervised-*")
    assert (folder / "backbone.pth").is_file() and (folder / "curves.png").is_file()
    assert len(list(folder.glob("demo-*/*.pt"))) == 4
    table = (out / "experiments" / "t" / "table.md").read_text()
    assert "| supervised-demo |" in table and "| pretrained-demo |" in table and "| random-demo |" in table
    (verdict,) = [line for line in table.splitlines() if line.startswith("pretrained vs random init on demo")]
    assert "; trained with labels (the bound): slow " in verdict
    assert table.rstrip().endswith("see the README for the GPU figures")
    printed = res.stdout + res.stderr
    assert verdict in printed and "| supervised-demo |" in printed
    assert re.search(r"supervised bound: backbone, curves, probes: +results/evaluate/supervised-", printed)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], "tags.`svt.stage` = 'supervised'")
    assert len(runs) == 1 and "train/loss" in runs[0].data.metrics
    # its recipe reruns it (and what follows); a probe setting only probes it again
    lr = copy.deepcopy(bound)
    lr["optim"]["lr"] = 2 * cfg["optim"].get("lr", 5e-4)
    assert dry(wd, lr)["supervised"] == 1
    probe = copy.deepcopy(bound)
    probe["evaluate"]["probe_lr"] = 0.01
    assert dry(wd, probe) == {"probe": 3, "eval_table": 1, "experiment": 1, "all": 1}


# ---- sweeps ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(tiny_data, tmp_path_factory):
    """A 2-variant learning-rate sweep of the tiny pipeline, in a fresh working directory."""
    wd = tmp_path_factory.mktemp("sweep")
    cfg = tiny_pipeline_config(tiny_data, experiment="lrs")
    cfg["sweep"] = {"grid": {"optim.lr": [2.5e-4, 1e-3]}}
    res = snakemake(wd, "--configfile", str(write(wd, cfg)))
    return TinyRun(wd, cfg, job_stats(res), res.stdout + res.stderr)


def test_sweep_decodes_once_pretrains_each_variant_and_compares(sweep_run):
    wd, stats, printed = sweep_run.wd, sweep_run.stats, sweep_run.printed
    assert stats["decode_shard"] == 1 and stats["curate"] == 1, stats
    assert stats["pretrain"] == 2 and stats["eval_table"] == 2 and stats["sweep_table"] == 1, stats
    assert stats["probe"] == 3, stats  # two pretrained backbones, one shared random baseline
    exp = wd / "results" / "experiments" / "lrs"
    table = (exp / "sweep.md").read_text()
    rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines() if line.startswith("| lr-")]
    assert rows == ["lr-0.00025", "lr-0.001"], table
    assert "final loss" in table and "device-h" in table
    assert f"Sweep lrs ({exp / 'sweep.md'}" in printed or "Sweep lrs (" in printed
    for name, lr in (("lr-0.00025", 2.5e-4), ("lr-0.001", 1e-3)):
        record = exp / "variants" / name
        assert yaml.safe_load((record / "config.yaml").read_text())["optim"]["lr"] == lr
        latest = json.loads((record / "latest.json").read_text())
        (pre,) = latest["outputs"]["pretrain"]
        assert (wd / pre / "teacher_backbone.pth").is_file()
        assert "| pretrained-demo |" in (record / "table.md").read_text()
    pres = {json.loads((exp / "variants" / n / "latest.json").read_text())["outputs"]["pretrain"][0]
            for n in rows}
    assert len(pres) == 2  # each variant its own pretraining folder
    # MLflow: a child run per variant under the invocation's parent, tagged with its overrides
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{wd / 'results' / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("lrs").experiment_id
    variants = {r.data.tags.get("svt.variant"): r for r in client.search_runs([exp_id])
                if r.data.tags.get("svt.variant")}
    assert set(variants) == {"lr-0.00025", "lr-0.001"}
    assert json.loads(variants["lr-0.001"].data.tags["svt.overrides"]) == {"optim.lr": 1e-3}
    parents = {r.data.tags["mlflow.parentRunId"] for r in variants.values()}
    assert len(parents) == 1
    assert "pretrain/final_loss" in variants["lr-0.001"].data.metrics
    assert any(a.path == "sweep/sweep.md" for a in client.list_artifacts(parents.pop(), "sweep"))


def test_editing_one_variant_plans_only_its_jobs(sweep_run, tmp_path):
    wd, cfg = sweep_run.copy(tmp_path / "wd").wd, sweep_run.cfg  # the SLURM tests compare with the original
    assert dry(wd, cfg) == {}
    edited = copy.deepcopy(cfg)
    edited["sweep"]["grid"]["optim.lr"] = [2.5e-4, 2e-3]  # the second variant changes
    plan = dry(wd, edited)
    assert plan == {"pretrain": 1, "adapt": 1, "features": 4, "probe": 1, "eval_table": 1,
                    "experiment": 1, "sweep_table": 1, "all": 1}, plan
    # run the edit: the replaced variant's outputs are now used by no experiment, and
    # `make gc` lists them, with sizes, removing nothing without confirmation
    res = snakemake(wd, "--configfile", str(write(wd, edited, "edited.yaml")))
    assert job_stats(res)["pretrain"] == 1
    records = wd / "results" / "experiments" / "lrs" / "variants"
    assert sorted(p.name for p in records.iterdir()) == ["lr-0.00025", "lr-0.002"]  # as the sweep is now
    gc = subprocess.run([sys.executable, "-m", "svt.gc"], cwd=wd, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert gc.returncode == 0 and "Nothing removed" in gc.stdout, gc.stdout + gc.stderr
    listed = re.findall(r"^\s+[\d.]+ [KMGT]?B\s+(results/\S+)", gc.stdout, re.M)
    kinds = sorted(p.split("/")[1] + "/" + p.split("/")[2].split("-")[0] for p in listed)
    assert kinds == ["evaluate/pretrained", "evaluate/table", "pretrain/demo"], gc.stdout
    assert all((wd / p).is_dir() for p in listed)
    # the sweep's table is in the Snakemake report
    report = wd / "report.html"
    snakemake(wd, "--report", str(report), "--configfile", str(wd / "edited.yaml"))
    assert "sweep.md" in report.read_text(errors="replace")
    # a variant that may not vary within an experiment is refused before any job
    bad = copy.deepcopy(cfg)
    bad["sweep"] = {"grid": {"decode.crf": [20, 23]}}
    res = snakemake(wd, "-n", "--configfile", str(write(wd, bad, "bad.yaml")), check=False)
    assert res.returncode != 0 and "decode.crf" in res.stdout + res.stderr


# ---- a real SLURM on localhost --------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        why = missing("the SLURM packages", INSTALL_SLURM)
        pytest.skip(f"needs root (to start the SLURM daemons) and {why}")  # CI: a failure
    was_running = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    if not was_running:
        subprocess.run([SCRIPT, "start"], check=True)
    yield
    if not was_running:
        subprocess.run([SCRIPT, "stop"], check=True)


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """SLURM's own record of the jobs run from ``workdir`` (kept for MinJobAge = 1 h)."""
    out = subprocess.run(["scontrol", "show", "jobs", "-o"], capture_output=True, text=True,
                         check=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if fields.get("WorkDir") == str(workdir):
            m = re.match(r"rule_(.+?)(?:_wildcards_(.*))?$", fields.get("Comment", ""))
            fields["rule"], fields["wildcards"] = (m.group(1), m.group(2) or "") if m else ("", "")
            jobs.append(fields)
    return sorted(jobs, key=lambda j: int(j["JobId"]))


def cancel_all(workdir: Path) -> None:
    for job in slurm_jobs(workdir):
        if job["JobState"] in ("PENDING", "RUNNING", "COMPLETING"):
            subprocess.run(["scancel", job["JobId"]], check=False)


def start_snakemake(wd: Path, *args: str) -> subprocess.Popen:
    (wd / "config.yaml").unlink(missing_ok=True)
    (wd / "config.yaml").symlink_to(REPO / "config.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU jobs, also on a GPU host
    log = open(wd / "snakemake.out", "w")
    return subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             *PROFILES, *args], cwd=wd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def slurm_run(slurm, sweep_run, tmp_path_factory):
    """The 2-variant sweep of ``sweep_run`` through the real local SLURM, once: the pipeline and
    sweep tests below both read it."""
    wd = tmp_path_factory.mktemp("slurm")
    res = snakemake(wd, *PROFILES, "--configfile", str(write(wd, sweep_run.cfg)), check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return TinyRun(wd, sweep_run.cfg, job_stats(res), res.stdout + res.stderr)


def test_config_error_is_caught_before_any_submission(slurm, tiny_cfg, tmp_path):
    bad = copy.deepcopy(tiny_cfg)
    bad["optim"]["lrr"] = 0.1
    res = snakemake(tmp_path, *PROFILES, "--configfile", str(write(tmp_path, bad)), check=False)
    assert res.returncode != 0 and "lrr" in res.stdout + res.stderr
    assert slurm_jobs(tmp_path) == []
    assert not (tmp_path / "results").exists()


def test_pipeline_under_slurm_runs_every_job_through_sbatch_and_matches_local(sweep_run, slurm_run):
    wd = slurm_run.wd
    jobs = slurm_jobs(wd)
    assert jobs and all(j["JobState"] == "COMPLETED" for j in jobs), [(j["rule"], j["JobState"]) for j in jobs]
    expected = {rule: n for rule, n in sweep_run.stats.items() if rule not in LOCAL_RULES}
    assert Counter(j["rule"] for j in jobs) == expected
    # the production GPU requests were submitted (the local node declares dummy GPUs)
    pretrain = [j for j in jobs if j["rule"] == "pretrain"]
    assert len(pretrain) == 2 and all(
        "gres:gpu:1" in j.get("TresPerJob", "") + j.get("TresPerNode", "") for j in pretrain)
    assert all("gres:gpu:1" in j.get("TresPerJob", "") for j in jobs if j["rule"] == "features")

    # same outputs as the local run: manifests, the trained weights, the final tables
    local_out, slurm_out = sweep_run.wd / "results", wd / "results"
    for rel in ("data/*/manifest/train.csv", "data/*/manifest/test.csv", "curate/*/pretrain_manifest.csv",
                "evaluate/*/probe-*/table.md", "pretrain/*/teacher_backbone.pth"):
        local, cluster = sorted(local_out.glob(rel)), sorted(slurm_out.glob(rel))
        assert local and [p.relative_to(local_out) for p in local] == [
            p.relative_to(slurm_out) for p in cluster], rel  # same config hashes
        for a, b in zip(local, cluster):
            if a.suffix != ".pth":
                assert a.read_text() == b.read_text(), a.relative_to(local_out)
                continue
            sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
            assert sa["step"] == sb["step"] and sa["model"] == sb["model"]
            sa, sb = sa["state_dict"], sb["state_dict"]
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), a.relative_to(local_out)


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_time_limit_kill_resumes_from_the_checkpoint(slurm_run, tiny_cfg, tmp_path):
    """A 1-minute time limit: SLURM sends SIGTERM (then SIGKILL after KillWait), pretraining
    saves at its next step and exits; Snakemake's retry resubmits it and it resumes from that
    very step. In a copy of the SLURM run's folder: its data and curation are done, and its
    own record of jobs stays the sweep's."""
    wd = slurm_run.copy(tmp_path / "wd").wd
    long = copy.deepcopy(tiny_cfg)
    long["optim"]["epochs"] = 5000  # far longer than the limit: the kill always lands
    long["pretrain"]["checkpoint_every"] = 1000
    long["cluster"]["pretrain_runtime"] = 1
    path = write(wd, long, "long.yaml")
    proc = start_snakemake(wd, "--until", "pretrain", "--configfile", str(path))
    try:
        def resumed():
            jobs = [j for j in slurm_jobs(wd) if j["rule"] == "pretrain"]
            # every attempt's lines (the rule's log holds only the latest attempt)
            logs = list((wd / "results" / "pretrain").glob("*/checkpoints/train.log"))
            text = "\n".join(p.read_text() for p in logs)
            timeouts = [j for j in jobs if j["JobState"] == "TIMEOUT"]
            return (timeouts, jobs, text) if timeouts and "resumed from" in text else None

        timeouts, jobs, text = _wait(resumed, 300, "a timed-out pretraining job and its resumed retry", proc)
    finally:
        stop_group(proc, signal.SIGINT, timeout=60)  # snakemake cancels its jobs on interrupt
        cancel_all(wd)
    assert len(jobs) >= 2 and jobs.index(timeouts[0]) < len(jobs) - 1  # a later job is the retry
    saved = [int(s) for s in re.findall(r"stop requested; saved step (\d+)", text)]
    resumed_at = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]
    assert saved and resumed_at and resumed_at[0] == saved[0] > 0, text[-3000:]


def test_cancelled_decode_shard_is_retried_alone(slurm, tiny_cfg, tmp_path):
    two = copy.deepcopy(tiny_cfg)
    two["decode"]["shards"] = 2
    proc = start_snakemake(tmp_path, "data", "--configfile", str(write(tmp_path, two)))
    try:
        first = _wait(lambda: [j for j in slurm_jobs(tmp_path) if j["rule"] == "decode_shard"],
                      120, "a decode shard job", proc)[0]
        subprocess.run(["scancel", first["JobId"]], check=True)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cancel_all(tmp_path)
    out = (tmp_path / "snakemake.out").read_text()
    assert rc == 0, out[-4000:]
    shards = [j for j in slurm_jobs(tmp_path) if j["rule"] == "decode_shard"]
    by_shard = {}
    for j in shards:
        by_shard.setdefault(j["wildcards"], []).append(j["JobState"])
    assert by_shard[first["wildcards"]] == ["CANCELLED", "COMPLETED"], by_shard
    assert sorted(map(tuple, by_shard.values())) == [("CANCELLED", "COMPLETED"), ("COMPLETED",)]


def test_srun_and_torchrun_rendezvous_inside_a_job(slurm, tmp_path):
    """The multi-node launch path (srun: one task per node, static torchrun rendezvous from
    the SLURM environment) on the one local node, with two gloo ranks that all-reduce."""
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import torch, torch.distributed as d\n"
        "d.init_process_group('gloo')\n"
        "t = torch.tensor([d.get_rank() + 1.0])\n"
        "d.all_reduce(t)\n"
        "print(f'rank {d.get_rank()} of {d.get_world_size()} sum {t.item():.0f}', flush=True)\n"
        "d.destroy_process_group()\n")
    cmd = [sys.executable, "-m", "svt.launch", "--nodes", "1", "--srun", "--nproc-per-node", "2",
           "--", str(script)]
    out = tmp_path / "job.out"
    subprocess.run(["sbatch", "--wait", "--cpus-per-task=2", "--mem=2000", f"--output={out}",
                    f"--chdir={REPO}", "--wrap", shlex.join(cmd)], check=True, capture_output=True,
                   timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})  # gloo
    text = out.read_text()
    assert "svt.launch: srun --nodes=1" in text and "torch.distributed.run --nnodes 1" in text, text
    assert sorted(re.findall(r"rank (\d) of 2 sum 3", text)) == ["0", "1"], text


def test_sweep_under_slurm_pretrains_each_variant_as_its_own_job(slurm_run):
    """The sweep through the real local SLURM: one job per variant's pretraining, both
    submitted before either finished (so a cluster runs them side by side)."""
    jobs = slurm_jobs(slurm_run.wd)
    pre = [j for j in jobs if j["rule"] == "pretrain"]
    assert len(pre) == 2 and len({j["JobId"] for j in pre}) == 2
    assert len({j["wildcards"] for j in pre}) == 2  # two recipes: two pretraining folders
    assert max(j["SubmitTime"] for j in pre) < min(j["EndTime"] for j in pre), pre
    rows = [line for line in (slurm_run.wd / "results" / "experiments" / "lrs" / "sweep.md").read_text()
            .splitlines() if line.startswith("| lr-")]
    assert len(rows) == 2
