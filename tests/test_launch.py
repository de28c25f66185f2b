"""svt.launch: which command starts the training processes on a laptop, one node or many."""

from __future__ import annotations

import shutil
import sys

import pytest

from conftest import INSTALL_SLURM, needs
from svt import launch

ARGS = ["-m", "svt.pretrain", "--out-dir", "a b/c"]


def test_one_process_is_plain_python():
    assert launch.command(1, 1, False, ARGS, {}) == [sys.executable, *ARGS]


def test_several_devices_use_standalone_torchrun():
    cmd = launch.command(1, 4, False, ARGS, {})
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:6] == ["--standalone", "--nproc-per-node", "4"]
    assert cmd[6:] == ARGS  # arguments pass through untouched, spaces and all


def test_several_nodes_outside_slurm_is_a_clear_error():
    with pytest.raises(SystemExit, match="pretrain.nodes=2 needs a SLURM job"):
        launch.command(2, 8, False, ARGS, {})


@needs(shutil.which("srun"), "srun (SLURM)", INSTALL_SLURM)
def test_several_nodes_in_a_job_start_one_task_per_node():
    cmd = launch.command(2, 8, False, ARGS, {"SLURM_JOB_ID": "4711"})
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert f"--export=ALL,{launch.IN_STEP}=1" in cmd
    # each task runs the launcher again with the same arguments
    i = cmd.index("svt.launch")
    assert cmd[i + 1:] == ["--nodes", "2", "--nproc-per-node", "8", "--", *ARGS]


def test_per_node_task_gets_static_rendezvous_on_the_first_node():
    env = {launch.IN_STEP: "1", "SLURM_JOB_ID": "123456", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
           "SLURM_STEP_NODELIST": "gpu[07-08]"}
    cmd = launch.command(2, 4, False, ARGS, env)
    args = dict(zip(cmd[3:13:2], cmd[4:14:2]))
    assert args == {"--nnodes": "2", "--nproc-per-node": "4", "--node-rank": "1",
                    "--master-addr": "gpu07", "--master-port": str(20000 + 123456 % 20000)}
    assert cmd[13:] == ARGS


def test_node_count_mismatch_is_reported():
    env = {launch.IN_STEP: "1", "SLURM_JOB_ID": "1", "SLURM_NODEID": "0", "SLURM_NNODES": "3",
           "SLURM_JOB_NODELIST": "n[1-3]"}
    with pytest.raises(SystemExit, match="3 nodes but pretrain.nodes is 2"):
        launch.command(2, 1, False, ARGS, env)


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[03-05,07]", "gpu03"), ("node1,node2", "node1"), ("a-b[9]", "a-b9"), ("solo", "solo")])
def test_first_host(nodelist, first, monkeypatch):
    assert launch.first_host(nodelist) == first
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)  # the parser without scontrol
    assert launch.first_host(nodelist) == first


def test_ports_differ_between_jobs_and_stay_in_range():
    ports = {launch.rendezvous_port(str(j)) for j in range(1000, 1100)}
    assert len(ports) == 100
    assert all(launch.PORT_BASE <= p < launch.PORT_BASE + launch.PORT_SPAN for p in ports)


def test_usage_errors():
    with pytest.raises(SystemExit):
        launch.main(["--nodes", "1"])  # no "--"
    with pytest.raises(SystemExit):
        launch.main(["--nodes", "0", "--", "-c", "pass"])
