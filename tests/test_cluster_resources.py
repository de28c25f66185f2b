"""What SLURM is asked for: `snakemake --profile slurm --dry-run` on a machine without SLURM.

The resources each job gets are read from Snakemake's own plan (the `resources:` and `threads:`
lines the dry run prints for every job: the job's evaluated resources, before any executor sees
them), then turned into the sbatch options by the SLURM executor plugin's own submit-string
functions (snakemake_executor_plugin_slurm.submit_string.get_submit_command and
utils.set_gres_string, which build the real `sbatch` call). Every expected value is derived
from the config by hand, from workflow/rules/common.smk (cluster_resources, pretrain_resources)
and the rules' `resources:`.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO, snakemake
from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # requirements/base.txt
from snakemake_executor_plugin_slurm.utils import set_gres_string
from svt.demo_data import generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The smallest demo dataset (UCF101 layout): planning reads its split files."""
    root = tmp_path_factory.mktemp("demo")
    generate(root / "ucf", seed=1, classes=2, groups=2, clips=1, frames=8, size=(64, 48), jobs=1,
             progress=False)
    return root / "ucf"


def dry_run(workdir: Path, demo: Path, **sections) -> str:
    """`snakemake --profile <repo>/slurm -n` from a folder holding config.yaml (a link to ours,
    as conftest.snakemake lays it out) and test.yaml. A real cluster run has no --cores, so
    no cap on a job's threads; a dry run without --cores caps them at 1 (snakemake.cli), hence
    a large --cores here, so the plan shows the threads that would be submitted."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = {"experiment": "t",
           "data": {"pretrain": "demo", "evaluate": ["demo"], "extra": [],
                    "datasets": {"demo": {"format": "ucf101", "root": str(demo / "videos"),
                                          "annotations": str(demo / "splits")}}},
           **sections}
    (workdir / "test.yaml").write_text(yaml.safe_dump(cfg))
    # the later --cores wins over conftest.snakemake's --cores 2
    res = snakemake(workdir, "--profile", str(REPO / "slurm"), "--dry-run", "--cores", "1024",
                    "--configfile", "test.yaml", timeout=300)
    out = res.stdout + res.stderr
    assert "This was a dry-run" in out, out[-2000:]
    return res.stdout


def _value(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def planned_jobs(stdout: str, rule: str) -> list[dict]:
    """Every job of ``rule`` in the dry-run plan: its threads, resources and shell command."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]\n]+\]\n(?:local)?rule )", stdout):
        m = re.search(rf"^(?:local)?rule {re.escape(rule)}:\n", block, re.M)
        if not m:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append({"threads": int(threads.group(1)) if threads else 1,
                     "resources": {k: _value(v) for k, v in resources.items()},
                     "shell": shell.group(1) if shell else ""})
    assert jobs, f"no job of rule {rule} in the plan:\n{stdout[-3000:]}"
    return jobs


class _Resources(dict):
    """job.resources as the executor sees it: dict access and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def sbatch_options(job: dict) -> str:
    """The sbatch call the SLURM executor plugin would build for this planned job (its own
    functions; partition/account/log file left out: they come from the environment here)."""
    fake = SimpleNamespace(resources=_Resources(job["resources"]), threads=job["threads"])
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": "rule", "account": "",
              "partition": "", "workdir": ""}
    return get_submit_command(fake, params) + set_gres_string(fake)


def options_of(call: str) -> list[str]:
    """The sbatch options that say what is requested, in order, values attached."""
    return re.findall(r"(?:--(?:nodes|ntasks|ntasks-per-gpu|ntasks-per-node|gres|gpus|cpus-per-gpu|"
                      r"cpus-per-task|mem|mem-per-cpu|mpi)[= ]\S+|-t \S+)", call)


# ------------------------------------------------------------------------ multi-node pretraining

MULTI_NODE = dict(
    pretrain={"nodes": 2, "devices_per_node": 4, "num_workers": 6},
    cluster={"gpu_model": "a100", "pretrain_mem_mb_per_device": 24000, "pretrain_runtime": 1440,
             "evaluate_runtime": 90, "partition": "gpu", "account": "proj"},
)


@pytest.fixture(scope="module")
def multi_node_plan(demo, tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("multi"), demo, **MULTI_NODE)


def test_multi_node_pretrain_resources(multi_node_plan):
    """2 nodes x 4 GPUs (a100), 6 loader workers: one srun task per node launched by the rule
    itself (mpi=srun), the GPUs per node as gres (a --gpus count would be the job's total),
    tasks_per_gpu=0 so the plugin does not turn `tasks` into --ntasks-per-gpu, num_workers + 1
    CPUs per GPU, memory per device x devices (SLURM's --mem is per node), the runtime."""
    (job,) = planned_jobs(multi_node_plan, "pretrain")
    res = job["resources"]
    want = {"nodes": 2, "tasks": 2, "mpi": "srun", "gres": "gpu:a100:4", "tasks_per_gpu": 0,
            "cpus_per_gpu": 7, "mem_mb": 4 * 24000, "runtime": 1440,
            "slurm_partition": "gpu", "slurm_account": "proj"}
    assert {k: res.get(k) for k in want} == want, res
    # the single-node keys must be absent: the plugin would add --gpus=a100:N, a job total
    assert "gpu" not in res and "gpu_model" not in res and "cpus_per_task" not in res, res
    assert "slurm_extra" not in res, res
    assert job["threads"] == 4 * (6 + 1)
    assert job["shell"].startswith("python -m svt.launch --nodes 2 --nproc-per-node 4 -- -m svt.pretrain")
    assert "--num-workers 6" in job["shell"]

    call = sbatch_options(job)
    assert options_of(call) == ["-t 1440", "--mem 96000", "--nodes=2", "--ntasks=2",
                                "--cpus-per-gpu=7", "--gres=gpu:a100:4"], call
    assert "--ntasks-per-gpu" not in call and "--gpus" not in call, call


def test_multi_node_plan_features_job_single_gpu(multi_node_plan):
    """Feature extraction stays a one-GPU job of the configured model: --gpus=a100:1, its
    threads as CPUs per task, the evaluation runtime."""
    jobs = planned_jobs(multi_node_plan, "features")
    assert len(jobs) == 8  # train/test x slow/fast x (pretrained, random)
    for job in jobs:
        res = job["resources"]
        want = {"gpu": 1, "gpu_model": "a100", "mem_mb": 8192, "runtime": 90,
                "slurm_partition": "gpu", "slurm_account": "proj"}
        assert {k: res.get(k) for k in want} == want, res
        assert not {"nodes", "tasks", "mpi", "gres", "tasks_per_gpu", "cpus_per_gpu"} & set(res), res
        assert job["threads"] == 2
        call = sbatch_options(job)
        assert options_of(call) == ["-t 90", "--mem 8192", "--cpus-per-task=2", "--gpus=a100:1"], call


def test_multi_node_plan_cpu_jobs_ask_for_no_gpu(multi_node_plan):
    for rule in ("adapt", "probe", "decode_shard"):
        for job in planned_jobs(multi_node_plan, rule):
            res = job["resources"]
            assert not {"gpu", "gpu_model", "gres", "nodes", "mpi", "cpus_per_gpu"} & set(res), (rule, res)
            assert res["slurm_partition"] == "gpu" and res["slurm_account"] == "proj"
            assert "--gpus" not in sbatch_options(job) and "--gres" not in sbatch_options(job)


# ------------------------------------------------------------------------ other cluster shapes

@pytest.mark.parametrize("case", ["multi_node_any_gpu", "single_node", "cpu_only_multi_node"])
def test_pretrain_resources_other_shapes(demo, tmp_path, case):
    """Any GPU type (gres without a model), one node (--gpus=<model>:N, no task geometry),
    and a CPU-only cluster (cluster.gpus: false: tasks and nodes, no GPU request at all;
    partition and account left to the environment)."""
    pretrain = {"nodes": 3, "devices_per_node": 2, "num_workers": 3}
    cluster = {"pretrain_mem_mb_per_device": 5000, "pretrain_runtime": 600}
    if case == "single_node":
        pretrain["nodes"] = 1
        cluster["gpu_model"] = "h100"
    if case == "cpu_only_multi_node":
        cluster["gpus"] = False
    (job,) = planned_jobs(dry_run(tmp_path, demo, pretrain=pretrain, cluster=cluster), "pretrain")
    res = {k: v for k, v in job["resources"].items()
           if k not in ("tmpdir", "disk_mb", "disk", "disk_mib", "mem", "mem_mib")}
    assert job["threads"] == 2 * 4
    base = {"mem_mb": 10000, "runtime": 600}
    call = sbatch_options(job)
    if case == "multi_node_any_gpu":
        assert res == {**base, "nodes": 3, "tasks": 3, "mpi": "srun", "gres": "gpu:2",
                       "tasks_per_gpu": 0, "cpus_per_gpu": 4}
        assert options_of(call) == ["-t 600", "--mem 10000", "--nodes=3", "--ntasks=3",
                                    "--cpus-per-gpu=4", "--gres=gpu:2"], call
    elif case == "single_node":
        assert res == {**base, "gpu": 2, "gpu_model": "h100", "cpus_per_gpu": 4}
        assert options_of(call) == ["-t 600", "--mem 10000", "--cpus-per-gpu=4",
                                    "--gpus=h100:2"], call
    else:
        assert res == {**base, "nodes": 3, "tasks": 3, "mpi": "srun"}
        assert options_of(call) == ["-t 600", "--mem 10000", "--nodes=3", "--ntasks=3",
                                    "--cpus-per-task=8"], call
    assert "slurm_partition" not in res and "slurm_account" not in res
