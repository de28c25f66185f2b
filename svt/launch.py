"""Start the training processes: plain python, torchrun on one node, or torchrun on every node
of a SLURM allocation.

    python -m svt.launch --nodes N --nproc-per-node K -- -m svt.pretrain ...

- N = 1, K = 1: ``python -m svt.pretrain ...`` in this process (exec).
- N = 1, K > 1: ``torchrun --standalone --nproc-per-node K -m svt.pretrain ...``.
- N > 1 (inside a SLURM job): one task per node through ``srun``; each task starts
  ``torchrun --nnodes N --node-rank $SLURM_NODEID`` with the first node of the allocation as the
  rendezvous host and a port derived from the job id, so ranks are fixed (rank 0 on the first
  node) and two jobs sharing a node never share a port.

Everything is passed as argument lists (no shell), and the same rule command serves local runs,
single-node SLURM jobs and multi-node SLURM jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

IN_STEP = "SVT_LAUNCH_IN_STEP"  # set for the srun tasks: "you are the per-node launcher"
PORT_BASE, PORT_SPAN = 20000, 20000


def rendezvous_port(job_id: str) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ('gpu[03-05,07]' -> 'gpu03'), via scontrol when
    available (it knows every syntax), else a small parser for the common forms."""
    if shutil.which("scontrol"):  # fails without a slurm.conf: then the parser below
        res = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=False)
        if res.returncode == 0 and res.stdout.split():
            return res.stdout.split()[0]
    head = nodelist.split(",")[0]
    if "[" not in head:
        return head
    prefix, rest = nodelist.split("[", 1)
    return prefix + rest.split(",")[0].split("-")[0].rstrip("]")


def torchrun_args(nodes: int, nproc: int, env: Mapping[str, str]) -> list[str]:
    """torchrun's arguments for this srun task's node: a static rendezvous from SLURM's env."""
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_NNODES") if k not in env]
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if missing or not nodelist:
        raise SystemExit(f"svt.launch: multi-node launch outside an srun task (missing "
                         f"{', '.join(missing) or 'SLURM_JOB_NODELIST'})")
    if int(env["SLURM_NNODES"]) != nodes:
        raise SystemExit(f"svt.launch: the job step has {env['SLURM_NNODES']} nodes but "
                         f"pretrain.nodes is {nodes}; ask SLURM for --nodes={nodes}")
    return ["--nnodes", str(nodes), "--nproc-per-node", str(nproc),
            "--node-rank", env["SLURM_NODEID"],
            "--master-addr", first_host(nodelist),
            "--master-port", str(rendezvous_port(env["SLURM_JOB_ID"]))]


def command(nodes: int, nproc: int, srun: bool, args: Sequence[str],
            env: Mapping[str, str]) -> list[str]:
    """The command line this launcher execs."""
    python = sys.executable
    torchrun = [python, "-m", "torch.distributed.run"]  # torchrun, with this interpreter
    if env.get(IN_STEP) == "1":  # a per-node task started by the srun below
        return [*torchrun, *torchrun_args(nodes, nproc, env), *args]
    if nodes > 1 or srun:
        if "SLURM_JOB_ID" not in env or not shutil.which("srun"):
            raise SystemExit(f"svt.launch: pretrain.nodes={nodes} needs a SLURM job: run the "
                             "workflow with --profile slurm (or set pretrain.nodes: 1)")
        # One task per node; each runs this module again, as that node's launcher.
        return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
                "--kill-on-bad-exit=1", f"--export=ALL,{IN_STEP}=1",
                python, "-m", "svt.launch", "--nodes", str(nodes),
                "--nproc-per-node", str(nproc), "--", *args]
    if nproc > 1:
        return [*torchrun, "--standalone", "--nproc-per-node", str(nproc), *args]
    return [python, *args]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m svt.launch --nodes N --nproc-per-node K -- <python args>")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m svt.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1, help="nodes of the SLURM job (pretrain.nodes)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per node (devices)")
    p.add_argument("--srun", action="store_true",
                   help="go through srun even on one node (what multi-node jobs do)")
    opts = p.parse_args(argv[:split])
    args = argv[split + 1:]
    if opts.nodes < 1 or opts.nproc_per_node < 1 or not args:
        p.error("--nodes and --nproc-per-node must be >= 1, and a command must follow --")
    cmd = command(opts.nodes, opts.nproc_per_node, opts.srun, args, os.environ)
    print("svt.launch:", " ".join(cmd), file=sys.stderr, flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
