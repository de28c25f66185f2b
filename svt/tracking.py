"""MLflow helpers that never take training down.

Every call goes through :class:`Tracker`, which retries with backoff when the tracking store is
unreachable and, after that, warns and carries on without tracking: losing a dashboard entry
is acceptable, losing a training run is not. The MLflow client is used directly (no global
"active run"), so a resumed job reattaches to its run by id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger("svt.tracking")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline clusters: no phoning home
# MLflow's own HTTP retries back off for minutes; ours (below) are short and then give up.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# What the workflow's `onstart` hands to every job (local jobs inherit the environment, SLURM
# jobs get it through `sbatch --export=ALL`). Parameters would be the wrong channel: a new
# parent run id in a rule's params would make Snakemake rerun every job.
PARENT_ENV = "SVT_MLFLOW_PARENT_RUN_ID"
COMMIT_ENV = "SVT_GIT_COMMIT"
CONFIG_HASH_ENV = "SVT_CONFIG_HASH"
REPO = Path(__file__).resolve().parent.parent


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 5e-4}} -> {"optim.lr": "0.0005"}; lists become their repr."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def default_uri(results_dir: str | os.PathLike) -> str:
    """The embedded store: one sqlite file under the results folder."""
    return f"sqlite:///{Path(results_dir).absolute() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded sqlite store live beside it (MLflow's default would be
    ./mlruns in whatever folder the job happens to run in)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").absolute().as_uri()
    return None


def git_commit(repo: str | os.PathLike = REPO) -> str:
    """HEAD of the repository the code runs from, "+dirty" when it has local changes; "" when
    it is not a git checkout (an installed copy)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Short hash of a resolved config: runs with the same hash ran the same settings."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def context_tags() -> dict[str, str]:
    """Tags of a new stage run: its workflow parent, git commit, config hash and SLURM job id,
    each when known. Without a workflow (``python -m svt.pretrain`` by hand) the run simply
    has no parent."""
    tags = {}
    if parent := os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = parent
    if commit := os.environ.get(COMMIT_ENV) or git_commit():
        tags["svt.git_commit"] = commit
    if h := os.environ.get(CONFIG_HASH_ENV):
        tags["svt.config_hash"] = h
    if job := os.environ.get("SLURM_JOB_ID"):
        tags["svt.slurm_job_id"] = job
    return tags


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """["svt.rule=probe", "svt.wildcards={...}"] -> dict (the value may contain '=')."""
    from svt.config import parse_named

    return parse_named(items, "--tag", unique=False)


def add_arguments(ap: argparse.ArgumentParser, experiment: str = "svt",
                  run_name: str | None = None) -> None:
    """The MLflow options every ``python -m svt.<step>`` that logs shares; ``stage_run``
    turns them into the step's run."""
    g = ap.add_argument_group("MLflow")
    g.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (none: no tracking)")
    g.add_argument("--experiment", default=experiment, help="MLflow experiment name")
    g.add_argument("--run-name", default=run_name, help="name of the run this step creates")
    g.add_argument("--run-id", default=None, help="log into this existing run instead of a new "
                   "one (its status is put back afterwards)")
    g.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="tag of the run this step creates (the workflow adds svt.rule and "
                        "svt.wildcards); repeat")


def stage_run(args: argparse.Namespace, stage: str, tags: Mapping[str, str] | None = None,
              run_id: str | None = None, run_name: str | None = None,
              enabled: bool = True, restore_status: bool | None = None) -> "Tracker":
    """The one way a step opens its MLflow run, from ``add_arguments``' options: ``run_id``
    (else ``--run-id``) is attached to, and by default ``finish()`` puts its status back (a
    workflow's parent stays RUNNING); otherwise a new run named ``run_name`` (else
    ``--run-name``), a child of the workflow's run when there is one, tagged ``svt.stage``,
    ``tags`` and ``--tag``. Without ``--tracking-uri`` (or with ``enabled=False``) every call
    is a no-op; tracking trouble never raises."""
    run_id = run_id or args.run_id
    return Tracker(args.tracking_uri, args.experiment, run_id=run_id,
                   run_name=run_name or args.run_name,
                   tags={"svt.stage": stage, **(tags or {}), **parse_tags(args.tag)},
                   enabled=enabled,
                   restore_status=run_id is not None if restore_status is None else restore_status)


MAX_NAME = 250  # MLflow's limit on metric, param and tag names
MAX_TAG_VALUE = 8000
_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-.:/]+")


def safe_name(name: str) -> str:
    """A metric, param or tag name MLflow accepts, the same for the same input: accents
    dropped (NFKD), every other character outside ``[A-Za-z0-9_-.:/]`` (spaces included)
    replaced by ``_``, runs of ``_`` collapsed and trimmed, no empty or ``.``/``..`` path
    parts, at most 250 characters (a long name keeps its start and ends in a hash of the
    whole). ``rejected/empty file (0 bytes)`` -> ``rejected/empty_file_0_bytes``."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    text = _NAME_BAD.sub("_", text)
    text = re.sub(r"_+", "_", text)
    parts = [p.strip("_") for p in text.split("/")]
    text = "/".join(p for p in parts if p not in ("", ".", "..")) or "_"
    return text if len(text) <= MAX_NAME else _with_digest(text, name)


def _with_digest(text: str, name) -> str:
    """``text`` cut to leave room for ``_`` and a 10-hex hash of the original ``name``."""
    return f"{text[:MAX_NAME - 11]}_{hashlib.sha256(str(name).encode()).hexdigest()[:10]}"


def safe_names(names) -> dict[str, str]:
    """{original: safe} for a batch; two originals that map to one name are told apart by a
    hash of the original, so no entry overwrites another."""
    out, used = {}, set()
    for name in names:
        safe = safe_name(name)
        if safe in used:
            safe = _with_digest(safe, name)
        used.add(safe)
        out[name] = safe
    return out


def _rejected(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                    "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST")


class Tracker:
    """One MLflow run. ``enabled=False`` (e.g. ranks other than 0) makes every call a no-op."""

    def __init__(self, uri: str | None, experiment: str, run_id: str | None = None,
                 run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 enabled: bool = True, retries: int = 3, backoff_s: float = 1.0,
                 restore_status: bool = False):
        """``run_id``: attach to that run (marked RUNNING); with ``restore_status``, ``finish()``
        without a status puts back the one it had (a workflow's parent stays RUNNING)."""
        self.enabled = bool(enabled and uri)
        self.retries, self.backoff_s = retries, backoff_s
        self.run_id: str | None = run_id
        self.client = None
        self._monitor = None
        self._prior_status: str | None = None
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp_id = self._call(self._experiment_id, experiment)
            run = self._call(self.client.create_run, exp_id, run_name=run_name,
                             tags={**context_tags(), **(tags or {})}) if exp_id else None
            self.run_id = run.info.run_id if run else None
        else:
            if restore_status:
                prior = self._call(self.client.get_run, run_id)
                self._prior_status = prior.info.status if prior else "RUNNING"
            self._call(self.client.update_run, run_id, status="RUNNING")
        if self.run_id is None:
            self.enabled = False

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            # "model training", not the GenAI views, is what the dashboard opens on
            return self.client.create_experiment(
                name, artifact_location=artifact_location(self.uri),
                tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def _call(self, fn: Callable, *args, on_refuse: list | None = None, **kwargs):
        """Run one client call with retries; on final failure warn, disable tracking, go on.
        A refusal (the store answered "no") is not retried; its message is appended to
        ``on_refuse`` when given (the caller reports it), else warned."""
        if not self.enabled:
            return None
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # network, locked sqlite, server restart ...
                if _rejected(err):  # the store answered "no": retrying will not help
                    if on_refuse is not None:
                        on_refuse.append(str(err).splitlines()[0][:300] if str(err) else type(err).__name__)
                    else:
                        log.warning("MLflow refused %s: %s", getattr(fn, "__name__", fn), err)
                    return None
                if attempt == self.retries:
                    log.warning("MLflow unavailable (%s: %s); continuing without tracking",
                                type(err).__name__, err)
                    self.enabled = False
                    return None
                time.sleep(self.backoff_s * 2**attempt)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        names = safe_names(params)
        items = [Param(names[k], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-request limit
            self._log_batch("params", items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        names = safe_names(metrics)
        items = [Metric(names[k], float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's per-request limit
            self._log_batch("metrics", items[i:i + 1000])

    def _log_batch(self, kind: str, items: list) -> None:
        """One log_batch; if the store refuses it, each entry on its own, so one bad entry
        costs only itself, and the refused ones are named in the log."""
        refused: list[str] = []
        self._call(self.client.log_batch, self.run_id, **{kind: items}, on_refuse=refused)
        if not refused or len(items) == 1:
            return
        bad = []
        for item in items:
            one: list[str] = []
            self._call(self.client.log_batch, self.run_id, **{kind: [item]}, on_refuse=one)
            if one:
                bad.append(f"{item.key!r} ({one[0]})")
        if bad:
            log.warning("MLflow refused %d of %d %s: %s", len(bad), len(items), kind, "; ".join(bad))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        names = safe_names(tags)
        for k, v in tags.items():
            self._call(self.client.set_tag, self.run_id, names[k], str(v)[:MAX_TAG_VALUE])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def start_system_metrics(self, interval_s: float) -> None:
        """CPU, memory, disk, network (and GPU, with pynvml) as ``system/*`` metrics every
        ``interval_s`` seconds, from a background thread, until :meth:`finish`."""
        if not self.enabled or interval_s <= 0:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s,
                                                 resume_logging=True, tracking_uri=self.uri)
            self._monitor.start()
        except Exception as err:  # e.g. psutil missing: training goes on without them
            log.warning("MLflow system metrics unavailable: %s", err)
            self._monitor = None

    def finish(self, status: str | None = None) -> None:
        """End the run: ``status`` (default FINISHED), or for an attached run with
        ``restore_status`` the status it had before (a RUNNING one is left running)."""
        if status is None:
            status = self._prior_status or "FINISHED"
        if self._monitor is not None:
            mon = self._monitor
            try:
                # MLflow's monitor publishes only after a full sampling interval and drops the
                # samples of a partial one: stop it, then publish what it collected, so a run
                # shorter than the interval still has its system metrics.
                mon._shutdown_event.set()
                if mon._process is not None:
                    mon._process.join()
                metrics = mon.aggregate_metrics()
                if metrics:
                    mon.publish_metrics(metrics)
                mon.finish()  # flushes the batched metrics
                mon.mlflow_logger.flush()
            except Exception as err:
                log.warning("MLflow system metrics: %s", err)
            self._monitor = None
        if not self.enabled or status == "RUNNING":
            return
        self._call(self.client.set_terminated, self.run_id, status)


# ---- the workflow's parent run (Snakefile onstart / onsuccess / onerror) ------------------


def start_workflow_run(uri: str, experiment: str, config: Mapping[str, Any],
                       config_files: list[str] = (), run_name: str | None = None) -> str | None:
    """Create the store if needed (once, before any job: several jobs migrating a fresh sqlite
    file at once crash), the experiment, and the parent run of this workflow invocation with
    the resolved config as flattened params and as YAML. Exports the parent id, git commit and
    config hash for the jobs. Returns the run id, or None when tracking is unreachable."""
    import tempfile

    import yaml

    commit, chash = git_commit(), config_hash(config)
    os.environ[COMMIT_ENV] = commit
    os.environ[CONFIG_HASH_ENV] = chash
    os.environ.pop(PARENT_ENV, None)  # a parent of an outer workflow is not ours
    name = run_name or f"workflow {time.strftime('%Y-%m-%d %H:%M:%S')}"
    tags = {"svt.stage": "workflow", "mlflow.source.name": "snakemake",
            "mlflow.source.type": "PROJECT", "svt.config_files": " ".join(map(str, config_files))}
    if commit:
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
    tracker = Tracker(uri, experiment, run_name=name, tags=tags)
    if not tracker.enabled:
        return None
    tracker.log_params(flatten(config))
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "config.yaml"
        resolved.write_text(f"# resolved config of this run (config hash {chash})\n"
                            + yaml.safe_dump(dict(config), sort_keys=False))
        tracker.log_artifact(resolved, "config")
    for f in config_files:
        if Path(f).is_file():
            tracker.log_artifact(f, "config/files")
    os.environ[PARENT_ENV] = tracker.run_id
    log.info("MLflow parent run %s in experiment %s (%s)", tracker.run_id, experiment, uri)
    return tracker.run_id


def end_workflow_run(uri: str, status: str) -> None:
    """Close the parent run. When the workflow failed, stage runs it left RUNNING (a killed or
    failed job) are marked FAILED too, so the dashboard shows no run running forever."""
    run_id = os.environ.get(PARENT_ENV)
    if not run_id:
        return
    tracker = Tracker(uri, "", run_id=run_id, retries=2)
    if not tracker.enabled:
        return
    if status != "FINISHED":
        parent = tracker._call(tracker.client.get_run, run_id)
        exp = [parent.info.experiment_id] if parent else []
        for key in ("mlflow.parentRunId", "svt.resumed_by_parent"):
            runs = tracker._call(tracker.client.search_runs, exp, filter_string=(
                f"tags.`{key}` = '{run_id}' and attributes.status = 'RUNNING'")) if exp else None
            for run in runs or []:
                tracker._call(tracker.client.set_terminated, run.info.run_id, "FAILED")
    tracker.finish(status)
